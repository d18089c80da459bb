"""What a user waits for before any network runs: command start-up (row 8), model loading
(row 9) and a cold `covidct predict` of a DICOM series with both methods (row 9), each in a
fresh process, as a user starts them. Model files have random weights (full-size networks
in the full run): time does not depend on the weights. Every scan is a SYNTHETIC phantom.

    python -m benchmarks.startup load SPEC_JSON    # child: imports + load_model, as JSON
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import Sizes, covidct_cache

REPO = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1", **extra)


def timed_process(args: list[str], env: dict[str, str] | None = None,
                  timeout: float = 1800) -> dict[str, Any]:
    """Wall time and peak resident memory (process tree, sampled every 20 ms) of one command."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env or child_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        try:
            proc.wait(0.02)
        except subprocess.TimeoutExpired:
            if time.perf_counter() - start > timeout:
                proc.kill()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed ({proc.returncode}): "
                           f"{stderr.strip().splitlines()[-1:] or ''}")
    return {"seconds": seconds, "peak_rss_gb": peak / 1024 ** 3, "stdout": stdout,
            "stderr": stderr}


def clear_array_cache(cache: Path) -> None:
    """Forget CovidCTNet's cached infection maps (kept under the same $COVIDCT_CACHE as the ONNX
    exports): a cold predict of a new scan has none, so a timed run must not find one."""
    import shutil

    for entry in cache.glob("*"):
        if entry.name != "onnx" and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def best_process(args: list[str], reps: int) -> float:
    """Fastest wall time of ``reps`` runs of a short command (after one warm-up: file cache)."""
    timed_process(args)
    return min(timed_process(args)["seconds"] for _ in range(max(1, reps)))


# Row 8: start-up ---------------------------------------------------------------------------

def cli_startup(sizes: Sizes) -> dict[str, Any]:
    """`covidct --help`, `import covidct` and a bare interpreter (the floor), best of a few."""
    py = sys.executable
    return {"python_s": best_process([py, "-c", "pass"], sizes.reps + 2),
            "import_covidct_s": best_process([py, "-c", "import covidct"], sizes.reps + 2),
            "help_s": best_process([py, "-m", "covidct", "--help"], sizes.reps + 2)}


# Row 9: model loading and a cold predict ------------------------------------------------------

def model_files(sizes: Sizes, work: Path) -> dict[str, Path]:
    """bit.pt (the benchmark's architecture and crop) and covidctnet.pt, random weights."""
    import torch

    from covidct.bit.model import SliceClassifier, build_network
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    from .slices import _resize_for

    folder = work / "models"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"bit": folder / "bit.pt", "covidctnet": folder / "covidctnet.pt"}
    if not paths["bit"].is_file():
        torch.manual_seed(0)
        SliceClassifier(net=build_network(sizes.arch).eval(), arch=sizes.arch,
                        resize=_resize_for(sizes.crop), crop=sizes.crop,
                        trained_on={"synthetic": True, "data": "untrained benchmark model"}
                        ).save(paths["bit"])
    if not paths["covidctnet"].is_file():
        settings = VolumeSettings(**sizes.volume_settings)
        CovidCTNet.build(settings, denoiser=BCDUNet(settings.denoiser_width),
                         training={"synthetic": True}).save(paths["covidctnet"])
    return paths


def checked_model_files(sizes: Sizes, threads: int, work: Path) -> dict[str, Any]:
    """The row-9 networks (random weights) with the int8 check that train-bit and
    train-covidctnet end with actually run, on a small SYNTHETIC cohort's training data, graphs
    and checks in their own $COVIDCT_CACHE: what the default runtime finds for a trained model.
    The check's verdict, not this benchmark, decides whether ``auto`` runs int8 (on random
    weights the verdict says nothing about accuracy: tests/test_int8.py holds that). Returns
    the model folder (bit.pt, covidctnet.pt), the cache and both checks; made once per workdir."""
    import shutil

    from covidct.covidctnet.settings import VolumeSettings
    from covidct.covidx import IMAGES_DIR, split_path
    from covidct.models import load_model
    from covidct.quantize import check_after_training
    from covidct.synth.cohort import CohortSettings, generate_cohort

    from .volumes import checked_model

    folder = work / "int8-models"
    record = folder / "checks.json"
    if record.is_file():
        return json.loads(record.read_text())
    covidctnet = checked_model(folder, VolumeSettings(**sizes.volume_settings), threads)
    shutil.copyfile(model_files(sizes, work)["bit"], folder / "bit.pt")
    slices = folder / "slices"
    generate_cohort(slices, CohortSettings(patients=6, seed=11, matrix=sizes.cohort_matrix,
                                           slice_mm=(2.5, 2.5), max_slices=sizes.cohort_slices,
                                           split=(0.5, 0.0, 0.5), formats=("covidx",)),
                    progress=False)
    with covidct_cache(covidctnet["cache"]):
        bit = check_after_training(load_model(folder / "bit.pt"),
                                   split=split_path(slices / "covidx", "train"),
                                   images=slices / "covidx" / IMAGES_DIR, threads=threads)
    out = {"models": str(folder), "cache": covidctnet["cache"],
           "checks": {"bit": bit, "covidctnet": covidctnet["int8_check"]}}
    record.write_text(json.dumps(out, default=str))
    return out


def int8_verdicts(checked: dict[str, Any]) -> str:
    """'bit passed (on OpenVINO failed), covidctnet passed (...)' (or skipped): what auto
    will run, by engine."""
    def verdict(check: dict[str, Any]) -> str:
        return "skipped" if "skipped" in check else ("passed" if check.get("passed") else "failed")

    def verdicts(check: dict[str, Any]) -> str:
        on_openvino = check.get("openvino")
        return verdict(check) + (f" (on OpenVINO {verdict(on_openvino)})" if on_openvino else "")
    return ", ".join(f"{m} {verdicts(c)}" for m, c in checked["checks"].items())


def dicom_series(sizes: Sizes, work: Path) -> Path:
    """The cold-predict series: ``sizes.cold_series`` slices written as a DICOM folder."""
    from covidct.scanio import save_scan
    from covidct.synth.phantom import benchmark_series

    folder = work / "cold-series"
    if not folder.is_dir():
        save_scan(benchmark_series(*sizes.cold_series), folder)
    return folder


def model_loading(sizes: Sizes, threads: int, work: Path) -> dict[str, Any]:
    """Imports and load_model of each method, torch and the default runtime, fresh processes."""
    import shutil

    paths = model_files(sizes, work)
    shutil.rmtree(work / "cache", ignore_errors=True)  # the first load pays the export
    env = child_env(COVIDCT_CACHE=str(work / "cache"), OMP_NUM_THREADS=str(threads))
    out: dict[str, Any] = {}
    for runtime in ("torch", "auto"):
        spec = json.dumps({"paths": {k: str(v) for k, v in paths.items()}, "runtime": runtime,
                           "threads": threads})
        args = [sys.executable, "-m", "benchmarks.startup", "load", spec]
        if runtime == "auto":  # the first one exports each model to ONNX (once per file)
            out["first_auto_load"] = json.loads(timed_process(args, env)["stdout"])
        runs = [json.loads(timed_process(args, env)["stdout"]) for _ in range(max(1, sizes.reps))]
        out[runtime] = min(runs, key=lambda r: r["total_s"])
    return out


def _load_child(spec: str) -> int:
    args = json.loads(spec)
    start = time.perf_counter()
    import torch  # noqa: F401  (what loading a model file needs first)

    from covidct.models import load_model

    imported = time.perf_counter()
    out: dict[str, Any] = {"import_s": imported - start}
    for method, path in args["paths"].items():
        mark = time.perf_counter()
        model = load_model(path, args["runtime"], args["threads"])
        if args["runtime"] == "torch":  # a BiT file builds its network on first use: now
            getattr(model, "torch_net", None)
        out[f"{method}_s"] = time.perf_counter() - mark
        out[f"{method}_runtime"] = getattr(model, "runtime", "torch")
    out["total_s"] = time.perf_counter() - start
    print(json.dumps(out))
    return 0


def cold_predict(sizes: Sizes, threads: int, work: Path) -> dict[str, Any]:
    """`covidct predict SERIES --model bit.pt --model covidctnet.pt`, a fresh process each,
    default runtime against --runtime torch (ONNX exports already cached by model loading; no cached
    infection maps); and the default runtime once more on model files whose int8 check ran
    (:func:`checked_model_files`), as those of train-bit, train-covidctnet and the demo."""
    paths = model_files(sizes, work)
    series = dicom_series(sizes, work)
    out: dict[str, Any] = {"slices": sizes.cold_series[0], "matrix": sizes.cold_series[1]}
    checked = checked_model_files(sizes, threads, work)
    int8_models = Path(checked["models"])
    variants = {"torch": (paths, "torch", work / "cache"), "auto": (paths, "auto", work / "cache"),
                "auto_int8_checked": ({m: int8_models / f"{m}.pt" for m in paths}, "auto",
                                      Path(checked["cache"]))}
    for name, (models, runtime, cache) in variants.items():
        args = [sys.executable, "-m", "covidct", "predict", str(series), "--model",
                str(models["bit"]), "--model", str(models["covidctnet"]), "--runtime", runtime]
        runs = []
        for _ in range(max(1, sizes.reps - 1)):
            clear_array_cache(cache)
            runs.append(timed_process(args, child_env(COVIDCT_CACHE=str(cache))))
        best = min(runs, key=lambda r: r["seconds"])
        out[name] = {"seconds": best["seconds"], "peak_rss_gb": best["peak_rss_gb"],
                     "runtimes": [ln.split(": runtime ")[1] for ln in best["stderr"].splitlines()
                                  if ": runtime " in ln]}
    out["int8_checks"] = int8_verdicts(checked)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "load":
        return _load_child(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
