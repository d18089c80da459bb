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

from .common import Sizes

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
    infection maps)."""
    paths = model_files(sizes, work)
    series = dicom_series(sizes, work)
    env = child_env(COVIDCT_CACHE=str(work / "cache"))
    out: dict[str, Any] = {"slices": sizes.cold_series[0], "matrix": sizes.cold_series[1]}
    for runtime in ("torch", "auto"):
        args = [sys.executable, "-m", "covidct", "predict", str(series), "--model",
                str(paths["bit"]), "--model", str(paths["covidctnet"]), "--runtime", runtime]
        runs = []
        for _ in range(max(1, sizes.reps - 1)):
            clear_array_cache(work / "cache")
            runs.append(timed_process(args, env))
        best = min(runs, key=lambda r: r["seconds"])
        out[runtime] = {"seconds": best["seconds"], "peak_rss_gb": best["peak_rss_gb"],
                        "runtimes": [ln.split(": runtime ")[1] for ln in best["stderr"].splitlines()
                                     if ": runtime " in ln]}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "load":
        return _load_child(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
