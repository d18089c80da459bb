"""covidct benchmarks: each project path against its baseline, measured in the same run.

    make bench                          # the full run, writes BENCHMARKS.md (quiet machine)
    python -m benchmarks.run            # full sizes (minutes on 2 cores)
    python -m benchmarks.run --tiny --allow-loaded   # tiny sizes, seconds (the test suite)
    python -m benchmarks.run --device cuda   # adds GPU training throughput (row 6)
    python -m benchmarks.run --md BENCHMARKS.md --json results.json

Rows: 0 float32 matmul peak; 1 slice classifier inference paths (float32 and int8); 2 a
patient end to end against every slice eager, and the capped-vs-every-slice accuracy;
3 CovidCTNet pre-processing (benchmarks.volumes); 4 CovidCTNet end to end, latency and
peak memory; 5 training data pipeline vs training throughput; 6 training throughput and
model FLOP utilisation (CUDA: bf16 + channels-last); 7 the lung mask (benchmarks.lungs);
8 command start-up; 9 model loading and a cold `covidct predict` with both methods; 10 the
web server's upload-to-result time; then any row registered in EXTRA_ROWS (11: an archive on
a local Dask cluster).
Every scan is a SYNTHETIC phantom; timings are the best of a few calls.

Load: a run refuses to start (exit 3) when the 1-minute load average is above half the
cores (--max-load), unless --allow-loaded, which marks every row LOADED. Once running, the
load average measures the benchmark's own threads too, so each row is judged by the CPU time
other processes used while it ran (from /proc/stat, less this process's and its children's
own): a row during which they kept more than a quarter of the cores busy on average
(--max-other-cpu) is marked LOADED, and so is the run (exit 3 without --allow-loaded, after
writing its JSON). Every row records that figure and the load average at its start and end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from typing import Callable

from . import lungs, slices, startup, web
from .common import (EXTRA_ROWS, FULL, TINY, Sizes, best_time, cpu_snapshot, forward_flops,
                     load_average, load_limit, machine, matmul_peak_gflops, other_cpu,
                     other_cpu_limit, row_loaded, wait_for_quiet)

DEFAULT_ROWS = "1,2,3,4,5,6,7,8,9,10"


def _register_extra_rows() -> None:
    """Import the benchmarks/*.py modules that register rows in common.EXTRA_ROWS (the
    archive row, ...); default rows are DEFAULT_ROWS plus theirs."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in ("run", "common", "lungs", "slices", "startup", "web", "__main__"):
            importlib.import_module(f"{__package__}.{info.name}")

SYNTHETIC_NOTE = ("SYNTHETIC DATA: computer-generated phantoms, not patients; accuracy figures "
                  "say nothing about clinical performance.")


# Rows 3 and 4: CovidCTNet ------------------------------------------------------------------------

def covidctnet(sizes: Sizes, threads: int, peak: float) -> dict[str, Any]:
    """Pre-processing and end-to-end timings from benchmarks.volumes, the peak memory of one
    prediction in a fresh process, the networks' FLOP utilisation, and the ONNX Runtime path."""
    import numpy as np
    import torch

    from covidct.export import to_runtime
    from . import volumes as bench
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.cache import ArrayCache
    from covidct.covidctnet.cnn3d import CNN3D
    from covidct.synth.phantom import benchmark_series
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    settings = VolumeSettings(**sizes.volume_settings)
    n_slices, matrix = sizes.volume
    out = bench.run(n_slices, matrix, threads=threads, settings=settings)
    out["memory"] = _predict_memory_subprocess(n_slices, matrix, threads, sizes.volume_settings)
    # The default runtime (ONNX Runtime), reading the DICOM series included, fresh process.
    from covidct.devices import int8_is_fast
    from covidct.scanio import save_scan

    # Its model file is one whose int8 check (what train-covidctnet ends with) was run: auto
    # runs the int8 BCDU-Net if that check passed, float32 ONNX if not (the row says which).
    work = Path(tempfile.mkdtemp(prefix="covidct-bench-series-"))
    series = work / "series"
    save_scan(benchmark_series(n_slices, matrix), series)
    checked = bench.checked_model(work / "checked", settings, threads)
    out["default_runtime"] = {
        **_predict_memory_subprocess(n_slices, matrix, threads, sizes.volume_settings,
                                     runtime="auto", path=str(series),
                                     model_path=checked["model"], onnx_cache=checked["cache"]),
        "int8_check": checked["int8_check"], "int8_check_s": checked["int8_check_s"],
        # auto also asks for wide int8 instructions (covidct.devices.int8_is_fast)
        "int8_fast_cpu": int8_is_fast()}
    cnn_flops = forward_flops(CNN3D(3, settings.volume_shape).eval(),
                              torch.zeros(1, 1, *settings.volume_shape))
    denoiser_flops = forward_flops(BCDUNet(settings.denoiser_width).eval(),
                                   torch.zeros(1, 1, settings.slice_size, settings.slice_size))
    out["cnn3d_gflops"] = cnn_flops / 1e9
    out["cnn3d_peak_fraction"] = cnn_flops / 1e9 / out["cnn3d_s"] / peak
    out["bcdunet_gflops_per_slice"] = denoiser_flops / 1e9
    out["bcdunet_peak_fraction"] = denoiser_flops / 1e9 / out["bcdunet_s_per_slice"] / peak
    # The same prediction on ONNX Runtime (sessions warmed up on one small call first).
    torch.manual_seed(0)
    model = CovidCTNet.build(settings, denoiser=BCDUNet(settings.denoiser_width),
                             cache=ArrayCache(None))
    model = to_runtime(model, "onnx", threads=threads)
    model.classify(np.zeros((1, *settings.volume_shape), np.float32))
    model.denoiser(torch.zeros(4, 1, settings.slice_size, settings.slice_size))
    scan = benchmark_series(n_slices, matrix)
    start = time.perf_counter()
    prediction = model.predict(scan)
    out["predict_onnx_s"] = time.perf_counter() - start
    out["predict_onnx_timings_s"] = prediction.timings
    out["cnn3d_onnx_s"] = best_time(
        lambda: model.classify(np.zeros((1, *settings.volume_shape), np.float32)), 2)
    # The int8 BCDU-Net (`predict --runtime onnx-int8`) against float32, alternating.
    out["int8_denoiser"] = bench.int8_denoiser(n_slices, matrix, threads, settings, rounds=2)
    return out


def _int8_check_text(check: dict[str, Any] | None) -> str:
    """What the default-runtime row's model file's int8 check said (it decides the runtime)."""
    if not check:
        return "int8 check not run"
    if "skipped" in check:
        return f"no int8: {check['skipped']}"
    return (f"int8 check {'passed' if check['passed'] else 'FAILED'} on {check['scans']} held-out "
            f"SYNTHETIC scans, random weights: same call {check['same_call']:.0%}, median prob "
            f"diff {check['median_prob_diff']:.3f}, map r >= {check['map_lung_correlation_min']:.3f}, "
            f"p99 <= {check['map_lung_p99_rel_max']:.2f} SD")


def int8_denoiser_lines(q: dict[str, Any] | None) -> list[str]:
    """Row 4's int8 BCDU-Net lines (benchmarks.volumes.int8_denoiser)."""
    if not q:
        return []
    n = q["slices"]
    return [
        f"| 4 | BCDU-Net on ONNX Runtime, {n} slices, int8 (`--runtime onnx-int8`, auto where "
        f"checked; answers: "
        f"tests/test_covidctnet_pipeline.py) | {q['denoise_s']['float32']:.2f} s "
        f"(float32; CPU {q['denoise_cpu_s']['float32']:.2f} s) | {q['denoise_s']['int8']:.2f} s "
        f"(CPU {q['denoise_cpu_s']['int8']:.2f} s) | {q['int8_vs_float32']:.2f}x "
        f"(CPU {q['int8_vs_float32_cpu']:.2f}x) | | |",
        f"| 4 | CovidCTNet per scan in memory, ONNX Runtime, int8 BCDU-Net | "
        f"{q['predict_s']['float32']:.1f} s (float32 BCDU-Net) | {q['predict_s']['int8']:.1f} s | "
        f"{q['predict_int8_vs_float32']:.2f}x | | (the default where its check passed) |",
        *([f"| 4 | BCDU-Net on OpenVINO, {n} slices, the same int8 graph (`--runtime "
           f"openvino-int8`, auto on AMX/AVX-512 VNNI CPUs where checked) | "
           f"{q['denoise_s']['float32']:.2f} s (float32, ONNX Runtime) | "
           f"{q['denoise_s']['openvino-int8']:.2f} s (CPU {q['denoise_cpu_s']['openvino-int8']:.2f} s) | "
           f"{q['openvino_int8_vs_float32']:.2f}x (CPU {q['openvino_int8_vs_float32_cpu']:.2f}x) | | |",
           f"| 4 | CovidCTNet per scan in memory, OpenVINO int8 BCDU-Net | "
           f"{q['predict_s']['float32']:.1f} s (float32 BCDU-Net, ONNX Runtime) | "
           f"{q['predict_s']['openvino-int8']:.1f} s | {q['predict_openvino_int8_vs_float32']:.2f}x | | |"]
          if "openvino-int8" in q["denoise_s"] else [])]


def _predict_memory_subprocess(n_slices: int, matrix: int, threads: int,
                               overrides: dict[str, Any], runtime: str = "torch",
                               path: str | None = None, model_path: str | None = None,
                               onnx_cache: str | None = None) -> dict[str, Any]:
    """Peak memory of one prediction, measured in a fresh interpreter (nothing else loaded);
    with ``path``, reading that series is part of the prediction; with ``model_path`` that
    model file, its graphs in ``onnx_cache`` (arrays are never cached)."""
    spec = json.dumps({"slices": n_slices, "size": matrix, "threads": threads,
                       "settings": overrides, "runtime": runtime, "path": path,
                       "model_path": model_path})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--predict-only-json", spec],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env=dict(os.environ, COVIDCT_CACHE=onnx_cache or "off"), timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout)


def _predict_only(spec: str) -> int:
    from . import volumes as bench
    from covidct.covidctnet.settings import VolumeSettings

    args = json.loads(spec)
    result = bench.predict_only(args["slices"], args["size"], threads=args["threads"],
                                settings=VolumeSettings(**args["settings"]),
                                runtime=args.get("runtime", "torch"), path=args.get("path"),
                                model_path=args.get("model_path"))
    print(json.dumps(result))
    return 0


# The run -----------------------------------------------------------------------------------------

def run(sizes: Sizes, threads: int, device: str = "cpu", workdir: Path | None = None,
        rows: tuple[str, ...] = tuple(DEFAULT_ROWS.split(",")),
        max_load: float | None = None, max_other: float | None = None) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covidct-bench-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"sizes": sizes.to_dict(), "machine": machine(threads, device),
                                  "command": "python -m benchmarks.run " + " ".join(sys.argv[1:])}
        seconds = result["section_s"] = {}
        loads = result["section_load"] = {}
        others = result["section_other_cpu"] = {}
        result["max_load"] = load_limit() if max_load is None else max_load
        result["max_other_cpu"] = other_cpu_limit() if max_other is None else max_other

        def timed(name, fn, *args):
            start, before, cpu = time.perf_counter(), load_average()[0], cpu_snapshot()
            result[name] = fn(*args)
            others[name] = other_cpu(cpu, cpu_snapshot())
            seconds[name] = round(time.perf_counter() - start, 1)
            loads[name] = [before, load_average()[0]]
            print(f"benchmarks: {name} done in {seconds[name]} s (load {loads[name][0]} -> "
                  f"{loads[name][1]}; other processes {others[name]} cores)",
                  file=sys.stderr, flush=True)
            return result[name]

        peak = timed("peak_gflops", matmul_peak_gflops, sizes.matmul_n)
        row1 = None
        if {"1", "2", "2p", "5", "6"} & set(rows):
            row1 = timed("inference", slices.inference, sizes, threads, peak, work)
        if "2" in rows or "2p" in rows:
            timed("patient", slices.patient_level, sizes, threads, row1, work)
        if "2" in rows or "2a" in rows:
            timed("capped_vs_every_slice", slices.capped_vs_every_slice, sizes, threads, work)
        if "3" in rows or "4" in rows:
            timed("covidctnet", covidctnet, sizes, threads, peak)
        if "7" in rows:
            timed("lung_mask", lungs.lung_mask_row, sizes)
        if row1 and ("5" in rows or "6" in rows):
            gflops = row1["gflops_per_slice"]
            timed("loader", slices.loader, sizes, work)
            timed("training_cpu", slices.training, sizes, "cpu", peak, gflops)
            if device == "cuda":
                cuda_peak = timed("cuda_bf16_peak_gflops", matmul_peak_gflops, 8192, "cuda",
                                  "bfloat16")
                timed("training_cuda", slices.training, sizes, "cuda", cuda_peak, gflops)
        if "8" in rows:
            timed("startup", startup.cli_startup, sizes)
        if "9" in rows:
            timed("model_loading", startup.model_loading, sizes, threads, work)
            timed("cold_predict", startup.cold_predict, sizes, threads, work)
        if "10" in rows:
            timed("web", web.upload_to_result, sizes, threads, work)
        for row, (name, measure, _) in EXTRA_ROWS.items():
            if row in rows:
                timed(name, measure, sizes, threads, work)
    result["machine"]["load_average_end"] = load_average()
    # The start is judged by the load average (nothing of ours ran yet), the rows by the
    # other processes' CPU time (the end's load average is mostly our own last row).
    result["loaded_at_start"] = result["machine"]["load_average_start"][0] > result["max_load"]
    result["loaded"] = result["loaded_at_start"] or any(
        _row_loaded(result, name) for name in result["section_load"])
    result["wall_s"] = time.perf_counter() - started
    return result


# The table ----------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _peak_cell(v: dict[str, Any]) -> str:
    if "local_peak_gflops" not in v:
        return _pct(v["peak_fraction"]) + " of peak"
    return f"{_pct(v['peak_fraction'])} of {v['local_peak_gflops']:.0f} GFLOP/s measured just before"


def _row_loaded(result: dict[str, Any], section: str) -> bool:
    """Did other processes disturb this row? (see benchmarks.common.row_loaded)"""
    load = result.get("section_load", {}).get(section)
    others = result.get("section_other_cpu", {}).get(section)
    if others is None and "section_other_cpu" not in result and load is not None:
        # a result from before other-CPU was recorded: the old rule, start or end
        return max(load) > result.get("max_load", float("inf"))
    return row_loaded(others, result.get("max_other_cpu", float("inf")),
                      load[0] if load else None, result.get("max_load"))


def _started_loaded(result: dict[str, Any], section: str) -> bool:
    """Did the run that measured this row start on a loaded machine? A merged report holds
    rows of several runs, each judged by its own start."""
    own = result.get("section_started_loaded", {}).get(section)
    return bool(result.get("loaded_at_start", result.get("loaded")) if own is None else own)


def merge_results(earlier: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """``earlier`` updated with the rows run now (``--merge``): each row keeps the load figures
    and the start state of the run that measured it."""
    started = earlier.setdefault("section_started_loaded", {})
    for section in earlier.get("section_load", {}):
        started.setdefault(section, bool(earlier.get("loaded_at_start", earlier.get("loaded", True))))
    started.update({section: bool(result["loaded_at_start"]) for section in result["section_load"]})
    if "section_other_cpu" not in earlier:  # rows measured before other-CPU was recorded
        earlier["section_other_cpu"] = {section: None for section in earlier.get("section_load", {})}
    earlier.setdefault("section_load", {}).update(result["section_load"])
    earlier["section_other_cpu"].update(result["section_other_cpu"])
    earlier["loaded_at_start"] = any(started.values())
    earlier.setdefault("max_other_cpu", result["max_other_cpu"])
    merged = {k: v for k, v in result.items() if k not in (
        "machine", "command", "sizes", "section_s", "wall_s", "section_load", "loaded",
        "max_load", "section_other_cpu", "loaded_at_start", "max_other_cpu")}
    if "inference" not in merged:  # row 1's fractions were taken against the earlier peak
        merged.pop("peak_gflops", None)
    earlier.update(merged)
    earlier["loaded"] = any(_started_loaded(earlier, s) or _row_loaded(earlier, s)
                            for s in earlier["section_load"])
    earlier.setdefault("reruns", []).append({"command": result["command"],
                                             "machine": result["machine"],
                                             "rows": sorted(merged)})
    return earlier


def _load_cell(result: dict[str, Any], section: str) -> str:
    """The 1-minute load average at the row's start and end and the cores other processes
    kept busy during it; LOADED when those exceed the limit (or the whole run started loaded)."""
    load = result.get("section_load", {}).get(section)
    if load is None:
        return "LOADED (not recorded)" if result.get("loaded") else "not recorded"
    loaded = _started_loaded(result, section) or _row_loaded(result, section)
    others = result.get("section_other_cpu", {}).get(section)
    other_text = f"; others {others:.2f} cores" if others is not None else ""
    return f"{'LOADED ' if loaded else ''}{load[0]:.1f} -> {load[1]:.1f}{other_text}"


def _upload_cells(w: dict[str, Any]) -> str:
    """A web row's cells from its baseline on: first upload, best upload (server timings), goal."""
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in w.get("server_timings_s", {}).items())
    return (f"{w['first_upload_s']:.1f} s (first upload after start) | "
            f"{w['seconds']:.1f} s{' (' + timings + ')' if timings else ''} | | | "
            f"{_goal(w['seconds'] <= 8, '<= 8 s')} |")


def _goal(met: bool, text: str) -> str:
    return f"{text}: {'met' if met else 'NOT met'}"


def table(result: dict[str, Any]) -> str:
    """The results as a markdown table (one line per measured comparison)."""
    peak = result["peak_gflops"]
    lines = ["| # | benchmark | baseline (same run) | project path | ratio | % of matmul peak | goal | load (1-min) |",
             "|---|---|---|---|---|---|---|---|"]

    def add(section: str, line: str) -> None:
        lines.append(f"{line} {_load_cell(result, section)} |")

    add("peak_gflops", f"| 0 | float32 matmul {result['sizes']['matmul_n']}^2, {result['machine']['threads']} "
        f"threads | | {peak:.0f} GFLOP/s | | 100% | (reference) |")
    if "inference" in result:
        inf = result["inference"]
        base = inf["variants"][0]
        for v in inf["variants"][1:]:
            add("inference", f"| 1 | {inf['arch']} @ {inf['crop']} ({inf['gflops_per_slice']:.3g} GFLOP/slice): "
                f"{v['variant']} | {base['slices_per_s']:.2f} slices/s (eager, batch 1; "
                f"{_peak_cell(base)}) | {v['slices_per_s']:.2f} slices/s | "
                f"{v['speedup']:.2f}x | {_peak_cell(v)} | >= 85% of peak |")
        if "int8_vs_float32_onnx" in inf:
            ratio = inf["int8_vs_float32_onnx"]
            cpu = inf.get("int8_vs_float32_onnx_cpu")
            cpu_text = f" (CPU seconds per slice: {cpu:.2f}x)" if cpu else ""
            engines = "ONNX Runtime and OpenVINO" if "float32_best" in inf else "ONNX Runtime"
            add("inference", f"| 1 | int8 vs float32, {engines}, best variant of each | float32 "
                f"({inf.get('float32_best', 'ONNX Runtime')}) | int8 ({inf.get('int8_best', 'ONNX Runtime')}) | "
                f"{ratio:.2f}x{cpu_text} | | {_goal(ratio >= 2, '>= 2x')} (answers: tests/test_int8.py) |")
    if "patient" in result:
        p = result["patient"]
        base_s = p.get("baseline_every_slice_eager_s")
        base_cell = (f"{base_s:.1f} s (every one of {p['baseline_slices']} slices, eager, batch 1, run)"
                     if base_s else f"{p['baseline_every_slice_eager_s_estimated']:.1f} s (estimated)")
        base_s = base_s or p["baseline_every_slice_eager_s_estimated"]
        add("patient",
            f"| 2 | patient: read {p['series']} DICOM, choose {p['scored_slices']} of "
            f"{p['lung_slices']} lung slices, ONNX Runtime, aggregate | {base_cell} | "
            f"{p['total_s']:.1f} s (read {p['read_s']:.2f} s) | "
            f"{base_s / p['total_s']:.1f}x faster | | {_goal(p['total_s'] < 60, '< 60 s')} |")
    if "capped_vs_every_slice" in result:
        c = result["capped_vs_every_slice"]
        add("capped_vs_every_slice",
            f"| 2 | patient-level accuracy, SYNTHETIC cohort ({c['test_patients']} test patients, "
            f"tiny BiT trained {c['train_steps']} steps"
            f"{'; slice-level test accuracy %.2f' % c['test_slice_accuracy'] if 'test_slice_accuracy' in c else ''}), at most {c['max_slices']} slices "
            f"(mean {c['mean_scored_slices']:.0f} of {c['mean_slices']:.0f}) vs every slice | "
            f"{c['test_accuracy_every_slice']:.2f} (every slice) | {c['test_accuracy_capped']:.2f} | "
            f"labels agree on {_pct(c['label_agreement_all_patients'])} of {c['patients']} patients; "
            f"max prob. diff {c['max_prob_difference']:.3f} | | no loss |")
    if "covidctnet" in result:
        v = result["covidctnet"]
        series = v["series"]
        add("covidctnet", f"| 3 | CovidCTNet pre-processing of {series} | {v['preprocess_reference_s']:.2f} s "
            f"(reference route) | {v['preprocess_fast_s']:.2f} s (max abs diff "
            f"{v['fast_vs_reference']['max_abs']:.3f}, p99 {v['fast_vs_reference']['p99_abs']:.3f}) | "
            f"{v['preprocess_reference_s'] / v['preprocess_fast_s']:.1f}x | | faster, same result |")
        mem = v["memory"]
        peak_mem = mem.get("peak_rss_during_predict_gb", float("nan"))
        add("covidctnet", f"| 4 | CovidCTNet end to end per scan ({v['bcdunet_capped_slices']} slices through "
            f"BCDU-Net), PyTorch | | {v['predict_total_s']:.1f} s, peak RSS {peak_mem:.2f} GB "
            f"(fresh process) | | | < 20 s, < 3 GB |")
        add("covidctnet", f"| 4 | CovidCTNet end to end, ONNX Runtime | {v['predict_total_s']:.1f} s (PyTorch) | "
            f"{v['predict_onnx_s']:.1f} s | {v['predict_total_s'] / v['predict_onnx_s']:.2f}x | | < 20 s |")
        d = v.get("default_runtime", {})
        if "predict_total_s" in d:
            ok = d["predict_total_s"] <= 10 and d["peak_rss_during_predict_gb"] < 2
            cpu = {True: "; CPU with wide int8 instructions", False: "; CPU without wide int8 "
                   "instructions: auto keeps float32"}.get(d.get("int8_fast_cpu"), "")
            add("covidctnet", f"| 4 | CovidCTNet per scan, default runtime ({d.get('runtime')}; "
                f"{_int8_check_text(d.get('int8_check'))}{cpu}), reading the "
                f"DICOM series included (read {d['read_s']:.1f} s), fresh process | "
                f"{v['predict_total_s']:.1f} s (PyTorch, scan in memory) | {d['predict_total_s']:.1f} s, "
                f"peak RSS {d['peak_rss_during_predict_gb']:.2f} GB | "
                f"{v['predict_total_s'] / d['predict_total_s']:.2f}x | | "
                f"{_goal(ok, '<= 10 s, < 2 GB')} |")
        add("covidctnet", f"| 4 | 3D CNN ({v['cnn3d_gflops']:.1f} GFLOP/volume) | {v['cnn3d_s']:.3f} s (PyTorch) | "
            f"{v['cnn3d_onnx_s']:.3f} s (ONNX Runtime) | {v['cnn3d_s'] / v['cnn3d_onnx_s']:.2f}x | "
            f"{_pct(v['cnn3d_peak_fraction'])} (PyTorch) | |")
        add("covidctnet", f"| 4 | BCDU-Net ({v['bcdunet_gflops_per_slice']:.2f} GFLOP/slice), PyTorch | | "
            f"{v['bcdunet_s_per_slice']:.3f} s/slice | | {_pct(v['bcdunet_peak_fraction'])} | |")
        for line in int8_denoiser_lines(v.get("int8_denoiser")):
            add("covidctnet", line)
    if "lung_mask" in result:
        add("lung_mask", lungs.table_line(result["lung_mask"]))
    if "loader" in result:
        inf = result["inference"]
        ld, tr = result["loader"], result["training_cpu"]
        workers = tr["images_per_s"] / ld["images_per_s_per_worker"]
        add("loader", f"| 5 | data pipeline: {ld['png_matrix']}^2 PNG -> box crop -> resize -> random "
            f"{ld['crop']} crop + flip, one worker | {tr['images_per_s']:.2f} img/s "
            f"(training, CPU, float32) | {ld['images_per_s_per_worker']:.1f} img/s per worker | "
            f"{ld['images_per_s_per_worker'] / tr['images_per_s']:.0f}x the training rate; "
            f"{max(1, math.ceil(workers))} worker(s) keep up | | loader never the bottleneck |")
        add("training_cpu", f"| 6 | training {inf['arch']} @ {inf['crop']}, CPU float32, batch {tr['batch']} | | "
            f"{tr['images_per_s']:.2f} img/s | | MFU {_pct(tr['mfu'])} | |")
        if "training_cuda" in result:
            g = result["training_cuda"]
            need = g["images_per_s"] / ld["images_per_s_per_worker"]
            add("training_cuda", f"| 6 | training on CUDA ({result['machine'].get('gpu', 'GPU')}), {g['precision']}, "
                f"batch {g['batch']} | | {g['images_per_s']:.0f} img/s | | MFU {_pct(g['mfu'])} of "
                f"{result['cuda_bf16_peak_gflops'] / 1000:.0f} TFLOP/s bf16 matmul | "
                f"needs {math.ceil(need)} loader workers |")
        else:
            add("training_cpu", "| 6 | training on CUDA, bf16 autocast + channels-last | | not measured here "
                "(no GPU): `python -m benchmarks.run --device cuda` | | | |")
    if "startup" in result:
        st = result["startup"]
        add("startup", f"| 8 | `covidct --help`, fresh process | {st['python_s']:.2f} s (bare `python -c pass`) | "
            f"{st['help_s']:.2f} s | | | {_goal(st['help_s'] < 0.5, '< 0.5 s')} |")
        add("startup", f"| 8 | `import covidct`, fresh process | {st['python_s']:.2f} s (bare `python -c pass`) | "
            f"{st['import_covidct_s']:.2f} s | | | {_goal(st['import_covidct_s'] < 0.3, '< 0.3 s')} |")
    if "model_loading" in result:
        ml = result["model_loading"]
        t, a = ml["torch"], ml["auto"]
        for method in ("bit", "covidctnet"):
            add("model_loading", f"| 9 | load the {method} model file (fresh process; torch import "
                f"{t['import_s']:.1f} s before it) | {t[f'{method}_s']:.2f} s (PyTorch) | "
                f"{a[f'{method}_s']:.2f} s (default: {a[f'{method}_runtime']}, exported graph cached; "
                f"first time, exporting: {ml['first_auto_load'][f'{method}_s']:.1f} s) | | | |")
    if "cold_predict" in result:
        cp = result["cold_predict"]
        t, a = cp["torch"], cp["auto"]
        add("cold_predict", f"| 9 | cold `covidct predict` of a {cp['slices']}-slice {cp['matrix']}^2 DICOM "
            f"series [synthetic], both methods, fresh process | {t['seconds']:.1f} s "
            f"(--runtime torch, peak RSS {t['peak_rss_gb']:.2f} GB) | {a['seconds']:.1f} s (default: "
            f"{', '.join(a['runtimes'])}; peak RSS {a['peak_rss_gb']:.2f} GB) | "
            f"{t['seconds'] / a['seconds']:.2f}x | | {_goal(a['seconds'] <= 10, '<= 10 s')} |")
        if "auto_int8_checked" in cp:
            c = cp["auto_int8_checked"]
            add("cold_predict", f"| 9 | the same, model files whose int8 check ran (as train-bit's, "
                f"train-covidctnet's and the demo's; random weights, checks: {cp['int8_checks']}) | "
                f"{t['seconds']:.1f} s (--runtime torch) | {c['seconds']:.1f} s (default: "
                f"{', '.join(c['runtimes'])}; peak RSS {c['peak_rss_gb']:.2f} GB) | "
                f"{t['seconds'] / c['seconds']:.2f}x | | {_goal(c['seconds'] <= 10, '<= 10 s')} |")
    if "web" in result:
        w = result["web"]
        add("web", f"| 10 | web: upload a zip ({w['zip_mb']:.0f} MB) of a {w['slices']}-slice "
            f"{w['matrix']}^2 DICOM series [synthetic] to a finished result, `covidct serve` "
            f"(both methods) | {_upload_cells(w)}")
        if "int8_checked" in w:
            c = w["int8_checked"]
            add("web", f"| 10 | the same, model files whose int8 check ran (random weights, checks: "
                f"{c['int8_checks']}) | {_upload_cells(c)}")
    for row, (name, _, lines_of) in EXTRA_ROWS.items():
        if name in result:
            for line in lines_of(result[name], result):
                add(name, line)
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    return "\n".join([
        "# covidct benchmarks", "",
        f"Command: `{result['command'].strip()}` ({result['sizes']['name']} sizes), "
        f"{result['wall_s'] / 60:.1f} min.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['threads']} threads; "
        f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}. Load average "
        f"{m['load_average_start']} at the start and {m['load_average_end']} at the end; limit "
        f"{result.get('max_load', 'n/a')} (half the cores) at the start. "
        + ("**LOADED: other jobs shared the CPU, so these figures are not what a user of a "
           "quiet machine sees; only ratios measured in the same run compare.**"
           if result.get("loaded") else "Quiet at the start and during every row.")
        + " The last column is each row's 1-minute load average at its start and end (which "
        "counts the benchmark's own threads) and the cores other processes kept busy during "
        "it (CPU time from /proc/stat less the run's own); a row is LOADED when those exceed "
        f"{result.get('max_other_cpu', 'n/a')} (a quarter of the cores).", "",
        *[f"Rerun later and merged (`--merge`): `{r['command'].strip()}` ({', '.join(r['rows'])}); "
          f"load average {r['machine']['load_average_start']} -> {r['machine'].get('load_average_end')}.\n"
          for r in result.get("reruns", [])],
        SYNTHETIC_NOTE, "",
        table(result), "", NOTES])


NOTES = """Notes
- Timings are the best of a few calls after a warm-up; "% of matmul peak" is effective
  GFLOP/s (FLOPs counted by torch's FlopCounterMode, 2 per multiply-add) over row 0, measured
  in the same run. Networks have random weights where only time is measured.
- Row 1's baseline is plain timm eager float32 at batch 1. ONNX Runtime runs the graph that
  `covidct export` writes (weight standardisation folded, `Pad_Fusion` disabled, threads not
  spinning). "N slices at once, 1 thread each" runs a batch's slices side by side on N
  one-thread calls of one session: int8's float32 islands (group norms, (de)quantization)
  run on one thread in ONNX Runtime, so within one slice int8 keeps two cores busy less well
  than float32 does. The int8 ratio line gives the CPU seconds per slice beside it: the work,
  which a shared machine moves far less than wall time.
- Row 2: the project path reads the DICOM series with SimpleITK, picks at most 32 evenly spaced
  lung slices (>= 2 cm^2 of lung in the lung mask, see covidct.lungs), crops each to its
  body box, scores them in batches on ONNX Runtime and averages the probabilities. The
  every-slice baseline is run on the same series: every slice read, cropped and scored one
  at a time by the eager PyTorch network.
  The accuracy line trains a tiny BiT on the synthetic cohort in the same run: it compares the
  slice-choice rule with scoring every slice, not the paper's network.
- Rows 3-4 come from benchmarks.volumes (fast pre-processing vs the method's route; BCDU-Net
  on at most 100 evenly spaced 1-mm slices); peak memory is that of one prediction in a fresh
  interpreter. Row 4's int8 lines (benchmarks.volumes.int8_denoiser) alternate the float32 and
  int8 BCDU-Net graphs on the same slices and give CPU seconds beside wall time: a shared
  machine moves wall time (float32's most) far more than CPU time.
- A busy machine hurts PyTorch's eager float32 path far more than ONNX Runtime: its OpenMP
  threads wait at every layer's barrier for a peer that the scheduler has parked (here, at a
  load average of 8 on 2 cores, a tiny network trained at 0.4 img/s on 2 threads and 60 img/s
  on 1). Ratios against the eager baseline measured under load therefore overstate the gain
  on a quiet machine; the fractions of the peak measured just before each variant are the
  fairer figure.
- Row 5 is one process decoding, cropping and resizing PNGs, i.e. one DataLoader worker; row 6
  on CUDA (`--device cuda`) gives the GPU's images/s, so workers needed = row 6 / row 5.
- Row 7 (benchmarks.lungs): the lung mask of the row-3/4 series at its working resolution
  (about 2 mm pixels), against the former body-fraction slice rule (which chose slices only, no
  mask) and, for the cost of resolution, the same rule at every pixel with the Dice between the
  two. Row 7 was run alone (`--rows 7`) into benchmarks/results/lungs-cpu-2core.json; its load
  average is in that file.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda adds row 6 on the GPU (bf16 autocast + channels-last)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    _register_extra_rows()
    parser.add_argument("--rows", default=",".join([*DEFAULT_ROWS.split(","), *EXTRA_ROWS]),
                        help="rows to run (2, 5 and 6 need 1; 2p / 2a = only row 2's patient / "
                             "accuracy line; extra rows by their id)")
    parser.add_argument("--max-load", type=float, default=None,
                        help="highest 1-minute load average for a trustworthy run (default: "
                             "half the cores)")
    parser.add_argument("--max-other-cpu", type=float, default=None, metavar="CORES",
                        help="most cores other processes may keep busy, on average, during a "
                             "row before it is marked LOADED (default: a quarter of the cores)")
    parser.add_argument("--allow-loaded", action="store_true",
                        help="run even above --max-load, marking every row LOADED")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for the load to fall to --max-load")
    parser.add_argument("--merge", default=None, metavar="FILE",
                        help="update an earlier --json file with the rows run now (then --md "
                             "rewrites the whole report)")
    parser.add_argument("--json", default=None, help="write every measurement to this file")
    parser.add_argument("--md", default=None, help="write the markdown report to this file")
    parser.add_argument("--workdir", default=None, help="keep intermediate files here")
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="only rewrite the report from an earlier --json file")
    parser.add_argument("--predict-only-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.predict_only_json:
        return _predict_only(args.predict_only_json)
    if args.from_json:
        report = markdown(json.loads(Path(args.from_json).read_text()))
        print(report)
        if args.md:
            from covidct.atomic import write_text

            write_text(args.md, report)
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("benchmarks: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
    limit = load_limit() if args.max_load is None else args.max_load
    load = wait_for_quiet(limit, args.wait_quiet) if args.wait_quiet else load_average()
    if load[0] > limit and not args.allow_loaded:
        print(f"benchmarks: load average {load[0]} is above {limit} (half of "
              f"{os.cpu_count()} cores): other jobs would be measured too. Not running; wait "
              "for a quiet machine (--wait-quiet SECONDS) or pass --allow-loaded to mark every "
              "row LOADED.", file=sys.stderr)
        return 3
    result = run(TINY if args.tiny else FULL, args.threads, args.device,
                 Path(args.workdir) if args.workdir else None,
                 tuple(r.strip() for r in args.rows.split(",")), limit, args.max_other_cpu)
    if args.merge:
        result = merge_results(json.loads(Path(args.merge).read_text()), result)
    report = markdown(result)
    print(report)
    from covidct.atomic import write_json, write_text

    if args.json:
        write_json(args.json, result)
    if result["loaded"] and not args.allow_loaded:
        busy = {k: v for k, v in result.get("section_other_cpu", {}).items()
                if v is not None and v > result["max_other_cpu"]}
        print(f"benchmarks: other processes kept more than {result['max_other_cpu']} cores "
              f"busy during {', '.join(f'{k} ({v})' for k, v in busy.items()) or 'some rows'}: "
              f"those rows are marked LOADED; "
              f"{'measurements kept in ' + args.json if args.json else 'not'} written as a "
              "report. Rerun on a quiet machine.", file=sys.stderr)
        return 3
    if args.md:
        write_text(args.md, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
