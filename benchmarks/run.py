"""covidct benchmarks: each project path against its baseline, measured in the same run.

    python -m benchmarks.run            # full sizes (minutes on 2 cores)
    python -m benchmarks.run --tiny     # tiny sizes, seconds (make bench; the test suite)
    python -m benchmarks.run --device cuda   # adds GPU training throughput (row 6)
    python -m benchmarks.run --md BENCHMARKS.md --json results.json

Rows: 0 float32 matmul peak; 1 slice classifier inference paths; 2 a patient end to end and
the capped-vs-every-slice accuracy; 3 CovidCTNet pre-processing (covidct.volumes.bench);
4 CovidCTNet end to end, latency and peak memory; 5 training data pipeline vs training
throughput; 6 training throughput and model FLOP utilisation (CUDA: bf16 + channels-last);
7 the lung mask (benchmarks.lungs).
Every scan is a SYNTHETIC phantom; timings are the best of a few calls.
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

from . import lungs, slices
from .common import FULL, TINY, Sizes, best_time, forward_flops, machine, matmul_peak_gflops

SYNTHETIC_NOTE = ("SYNTHETIC DATA: computer-generated phantoms, not patients; accuracy figures "
                  "say nothing about clinical performance.")


# Rows 3 and 4: CovidCTNet ------------------------------------------------------------------------

def covidctnet(sizes: Sizes, threads: int, peak: float) -> dict[str, Any]:
    """Pre-processing and end-to-end timings from covidct.volumes.bench, the peak memory of one
    prediction in a fresh process, the networks' FLOP utilisation, and the ONNX Runtime path."""
    import numpy as np
    import torch

    from covidct.export import to_runtime
    from covidct.volumes import bench
    from covidct.volumes.bcdunet import BCDUNet
    from covidct.volumes.cache import ArrayCache
    from covidct.volumes.cnn3d import CNN3D
    from covidct.volumes.phantom import benchmark_series
    from covidct.volumes.pipeline import CovidCTNet
    from covidct.volumes.settings import VolumeSettings

    settings = VolumeSettings(**sizes.volume_settings)
    n_slices, matrix = sizes.volume
    out = bench.run(n_slices, matrix, threads=threads, settings=settings)
    out["memory"] = _predict_memory_subprocess(n_slices, matrix, threads, sizes.volume_settings)
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
    return out


def _predict_memory_subprocess(n_slices: int, matrix: int, threads: int,
                               overrides: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one prediction, measured in a fresh interpreter (nothing else loaded)."""
    spec = json.dumps({"slices": n_slices, "size": matrix, "threads": threads,
                       "settings": overrides})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--predict-only-json", spec],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env=dict(os.environ, COVIDCT_CACHE="off"), timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout)


def _predict_only(spec: str) -> int:
    from covidct.volumes import bench
    from covidct.volumes.settings import VolumeSettings

    args = json.loads(spec)
    result = bench.predict_only(args["slices"], args["size"], threads=args["threads"],
                                settings=VolumeSettings(**args["settings"]))
    print(json.dumps(result))
    return 0


# The run -----------------------------------------------------------------------------------------

def run(sizes: Sizes, threads: int, device: str = "cpu", workdir: Path | None = None,
        rows: tuple[str, ...] = ("1", "2", "3", "4", "5", "6", "7")) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="covidct-bench-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"sizes": sizes.to_dict(), "machine": machine(threads, device),
                                  "command": "python -m benchmarks.run " + " ".join(sys.argv[1:])}
        seconds = result["section_s"] = {}

        def timed(name, fn, *args):
            start = time.perf_counter()
            result[name] = fn(*args)
            seconds[name] = round(time.perf_counter() - start, 1)
            print(f"benchmarks: {name} done in {seconds[name]} s", file=sys.stderr, flush=True)
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
    result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_s"] = time.perf_counter() - started
    return result


# The table ----------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _peak_cell(v: dict[str, Any]) -> str:
    if "local_peak_gflops" not in v:
        return _pct(v["peak_fraction"]) + " of peak"
    return f"{_pct(v['peak_fraction'])} of {v['local_peak_gflops']:.0f} GFLOP/s measured just before"


def table(result: dict[str, Any]) -> str:
    """The results as a markdown table (one line per measured comparison)."""
    peak = result["peak_gflops"]
    lines = ["| # | benchmark | baseline (same run) | project path | ratio | % of matmul peak | goal |",
             "|---|---|---|---|---|---|---|",
             f"| 0 | float32 matmul {result['sizes']['matmul_n']}^2, {result['machine']['threads']} "
             f"threads | | {peak:.0f} GFLOP/s | | 100% | (reference) |"]
    inf = result.get("inference")
    for v in (inf["variants"][1:] if inf else []):
        base = inf["variants"][0]
        lines.append(f"| 1 | {inf['arch']} @ {inf['crop']} ({inf['gflops_per_slice']:.3g} GFLOP/slice): "
                     f"{v['variant']} | {base['slices_per_s']:.2f} slices/s (eager, batch 1; "
                     f"{_peak_cell(base)}) | {v['slices_per_s']:.2f} slices/s | "
                     f"{v['speedup']:.2f}x | {_peak_cell(v)} | >= 85% of peak |")
    if "patient" in result:
        p, c = result["patient"], result["capped_vs_every_slice"]
        lines.append(
            f"| 2 | patient: read {p['series']} DICOM, choose {p['scored_slices']} of "
            f"{p['lung_slices']} lung slices, ONNX Runtime, aggregate | "
            f"{p['baseline_every_slice_eager_s_estimated']:.1f} s (every slice, eager, batch 1; "
            f"estimated: {p['baseline_formula']}) | {p['total_s']:.1f} s (read {p['read_s']:.2f} s) | "
            f"{p['baseline_every_slice_eager_s_estimated'] / p['total_s']:.1f}x faster | | < 60 s |")
        lines.append(
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
        lines.append(f"| 3 | CovidCTNet pre-processing of {series} | {v['preprocess_reference_s']:.2f} s "
                     f"(reference route) | {v['preprocess_fast_s']:.2f} s (max abs diff "
                     f"{v['fast_vs_reference']['max_abs']:.3f}, p99 {v['fast_vs_reference']['p99_abs']:.3f}) | "
                     f"{v['preprocess_reference_s'] / v['preprocess_fast_s']:.1f}x | | faster, same result |")
        mem = v["memory"]
        peak_mem = mem.get("peak_rss_during_predict_gb", float("nan"))
        lines.append(f"| 4 | CovidCTNet end to end per scan ({v['bcdunet_capped_slices']} slices through "
                     f"BCDU-Net), PyTorch | | {v['predict_total_s']:.1f} s, peak RSS {peak_mem:.2f} GB "
                     f"(fresh process) | | | < 20 s, < 3 GB |")
        lines.append(f"| 4 | CovidCTNet end to end, ONNX Runtime | {v['predict_total_s']:.1f} s (PyTorch) | "
                     f"{v['predict_onnx_s']:.1f} s | {v['predict_total_s'] / v['predict_onnx_s']:.2f}x | | < 20 s |")
        lines.append(f"| 4 | 3D CNN ({v['cnn3d_gflops']:.1f} GFLOP/volume) | {v['cnn3d_s']:.3f} s (PyTorch) | "
                     f"{v['cnn3d_onnx_s']:.3f} s (ONNX Runtime) | {v['cnn3d_s'] / v['cnn3d_onnx_s']:.2f}x | "
                     f"{_pct(v['cnn3d_peak_fraction'])} (PyTorch) | |")
        lines.append(f"| 4 | BCDU-Net ({v['bcdunet_gflops_per_slice']:.2f} GFLOP/slice), PyTorch | | "
                     f"{v['bcdunet_s_per_slice']:.3f} s/slice | | {_pct(v['bcdunet_peak_fraction'])} | |")
    if "lung_mask" in result:
        lines.append(lungs.table_line(result["lung_mask"]))
    if "loader" in result:
        ld, tr = result["loader"], result["training_cpu"]
        workers = tr["images_per_s"] / ld["images_per_s_per_worker"]
        lines.append(f"| 5 | data pipeline: {ld['png_matrix']}^2 PNG -> box crop -> resize -> random "
                     f"{ld['crop']} crop + flip, one worker | {tr['images_per_s']:.2f} img/s "
                     f"(training, CPU, float32) | {ld['images_per_s_per_worker']:.1f} img/s per worker | "
                     f"{ld['images_per_s_per_worker'] / tr['images_per_s']:.0f}x the training rate; "
                     f"{max(1, math.ceil(workers))} worker(s) keep up | | loader never the bottleneck |")
        lines.append(f"| 6 | training {inf['arch']} @ {inf['crop']}, CPU float32, batch {tr['batch']} | | "
                     f"{tr['images_per_s']:.2f} img/s | | MFU {_pct(tr['mfu'])} | |")
        if "training_cuda" in result:
            g = result["training_cuda"]
            need = g["images_per_s"] / ld["images_per_s_per_worker"]
            lines.append(f"| 6 | training on CUDA ({result['machine'].get('gpu', 'GPU')}), {g['precision']}, "
                         f"batch {g['batch']} | | {g['images_per_s']:.0f} img/s | | MFU {_pct(g['mfu'])} of "
                         f"{result['cuda_bf16_peak_gflops'] / 1000:.0f} TFLOP/s bf16 matmul | "
                         f"needs {math.ceil(need)} loader workers |")
        else:
            lines.append(f"| 6 | training on CUDA, bf16 autocast + channels-last | | not measured here "
                         f"(no GPU): `python -m benchmarks.run --device cuda` | | | |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    return "\n".join([
        "# covidct benchmarks", "",
        f"Command: `{result['command'].strip()}` ({result['sizes']['name']} sizes), "
        f"{result['wall_s'] / 60:.1f} min.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), {m['threads']} threads; "
        f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}. Load average "
        f"{m['load_average_start']} at the start and {m['load_average_end']} at the end "
        "(other jobs shared the CPU: compare ratios, which are measured in the same run).", "",
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
  spinning).
- Row 2: the project path reads the DICOM series with SimpleITK, picks at most 32 evenly spaced
  lung slices (>= 2 cm^2 of lung in the lung mask, see covidct.lungs), crops each to its
  body box, scores them in batches on ONNX Runtime and averages the probabilities. The
  every-slice baseline is estimated from row 1's eager rate (formula in the row), not run.
  The accuracy line trains a tiny BiT on the synthetic cohort in the same run: it compares the
  slice-choice rule with scoring every slice, not the paper's network.
- Rows 3-4 come from covidct.volumes.bench (fast pre-processing vs the method's route; BCDU-Net
  on at most 100 evenly spaced 1-mm slices); peak memory is that of one prediction in a fresh
  interpreter.
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
    parser.add_argument("--rows", default="1,2,3,4,5,6,7",
                        help="rows to run (2, 5 and 6 need 1; 2p / 2a = only row 2's patient / "
                             "accuracy line)")
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
    result = run(TINY if args.tiny else FULL, args.threads, args.device,
                 Path(args.workdir) if args.workdir else None,
                 tuple(r.strip() for r in args.rows.split(",")))
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        merged = {k: v for k, v in result.items() if k not in ("machine", "command", "sizes",
                                                                 "section_s", "wall_s")}
        if "inference" not in merged:  # row 1's fractions were taken against the earlier peak
            merged.pop("peak_gflops", None)
        earlier.update(merged)
        earlier.setdefault("reruns", []).append({"command": result["command"],
                                                 "machine": result["machine"],
                                                 "rows": sorted(merged)})
        result = earlier
    report = markdown(result)
    print(report)
    from covidct.atomic import write_json, write_text

    if args.json:
        write_json(args.json, result)
    if args.md:
        write_text(args.md, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
