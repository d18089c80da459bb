"""Timing of CovidCTNet's per-scan work on the issue's reference series.

The series: 300 slices of 512 x 512, 0.625 mm pixels, 2.5 mm slices (a SYNTHETIC phantom
made in memory). Measured: the method's pre-processing route vs the fast path, BCDU-Net on
the capped and on all 1-mm slices, the 3D CNN, and a whole ``predict`` with the cache off,
with the process's peak memory. Networks have random weights: timing does not depend on them.

    python -m benchmarks.volumes [--slices 300] [--size 512] [--threads 2] [--full]
    python -m benchmarks.volumes --predict-only     # peak memory of one prediction
    python -m benchmarks.volumes --int8             # BCDU-Net int8 vs float32 ONNX Runtime
    python -m benchmarks.volumes --predict-only --default-runtime   # what `--runtime auto`
        # runs for a model file whose int8 check was run, reading the series included
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import time
from typing import Any, Callable

import numpy as np

from .common import covidct_cache


def _best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def current_rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


class RssSampler:
    """Peak resident memory while a block runs (sampled every 20 ms)."""

    def __enter__(self) -> "RssSampler":
        import threading

        self.peak = current_rss_gb()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, current_rss_gb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_gb())


#: The SYNTHETIC calibration cohort of :func:`checked_model`: phantoms per class (in the
#: method's Control/CAP/Covid folders, split as train-covidctnet splits them: 3 training
#: scans per class, 5 to calibrate and 4 to check) and their geometry (48 1-mm slices each
#: after pre-processing, every one through BCDU-Net; a matrix of at most twice the model's
#: slice size, 160 at the method's 128). At the method's size, 6 per class and 64 slices took
#: 440 CPU s on the loaded 2-core machine, too long beside the row it decides; 4 per class
#: and 48 slices 84 s wall (quiet, niced), but checked only 3 scans.
CHECK_PHANTOMS_PER_CLASS = 5
CHECK_PHANTOM_GEOMETRY = dict(n_slices=12, spacing=(4.0, 2.5, 2.5))
CHECK_PHANTOM_MAX_SIZE = 160


def checked_model(folder, settings=None, threads: int = 2) -> dict[str, Any]:
    """A CovidCTNet model file (random weights, seed 0, as the other rows use) on which the
    int8 check that train-covidctnet ends with was actually run: its BCDU-Net quantized on
    a small SYNTHETIC phantom cohort's training scans and checked against float32 on
    held-out ones (calls and infection maps, covidct.quantize.denoiser_parity), graphs
    cached under ``folder/onnx``. Whether ``--runtime auto`` then runs int8 is the check's
    verdict, not this benchmark's: an untrained network may fail it, and then the default
    runtime row times float32, as a user's would. Returns the model path, the cache folder
    (``COVIDCT_CACHE`` for the prediction), the check and its time."""
    from pathlib import Path

    import torch

    from covidct.constants import VOLUME_CLASSES
    from covidct.models import load_model
    from covidct.quantize import check_after_training
    from covidct.scanio import save_scan
    from covidct.synth.phantom import chest_phantom
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    folder = Path(folder)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    settings = settings or VolumeSettings()
    path = CovidCTNet.build(settings, denoiser=BCDUNet(settings.denoiser_width)).save(
        folder / "covidctnet.pt")
    cohort = folder / "cohort"
    for label, name in zip(VOLUME_CLASSES, ("Control", "CAP", "Covid")):
        for k in range(CHECK_PHANTOMS_PER_CLASS):
            scan, _ = chest_phantom(label, seed=100 * VOLUME_CLASSES.index(label) + k,
                                    size=min(CHECK_PHANTOM_MAX_SIZE, 2 * settings.slice_size),
                                    **CHECK_PHANTOM_GEOMETRY)
            save_scan(scan, cohort / name / f"{name}{k:02d}.nii.gz")
    cache = folder / "cache"
    with covidct_cache(cache):
        start = time.perf_counter()
        check = check_after_training(load_model(path), cohort, threads=threads)
        seconds = time.perf_counter() - start
    return {"model": str(path), "cache": str(cache), "int8_check": check, "int8_check_s": seconds}


def predict_only(n_slices: int = 300, size: int = 512, pixel_mm: float = 0.625,
                 slice_mm: float = 2.5, threads: int = 2, settings=None, runtime: str = "torch",
                 path: str | None = None, model_path: str | None = None) -> dict[str, Any]:
    """One whole prediction (cache off) and the process's peak memory, nothing else; on
    ``runtime`` (see covidct.export), and with ``path`` reading that series included. With
    ``model_path`` (a file from :func:`checked_model`, its graphs in ``$COVIDCT_CACHE``)
    that model file, whose stored int8 check decides what "auto" runs; else a model with
    random weights built here, never checked (so "auto" runs float32 ONNX)."""
    import torch

    from covidct.export import to_runtime
    from covidct.models import load_model
    from covidct.scanio import load_scan
    from covidct.synth.phantom import benchmark_series
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.cache import ArrayCache
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    torch.set_num_threads(threads)
    settings = settings or VolumeSettings()
    if model_path:
        model = load_model(model_path)
        model.use_cache(None)
    else:
        model = CovidCTNet.build(settings, denoiser=BCDUNet(settings.denoiser_width),
                                 cache=ArrayCache(None))
    model = to_runtime(model, runtime, threads=threads)
    scan = None if path else benchmark_series(n_slices, size, pixel_mm, slice_mm)
    before = current_rss_gb()
    with RssSampler() as memory:
        start = time.perf_counter()
        scan = scan if scan is not None else load_scan(path)
        read_s = time.perf_counter() - start if path else 0.0
        prediction = model.predict(scan)
        seconds = time.perf_counter() - start
    return {"series": scan.summary(), "threads": threads, "predict_total_s": seconds,
            "runtime": getattr(model, "runtime", "torch"), "read_s": read_s,
            "predict_timings_s": prediction.timings,
            "rss_before_predict_gb": before, "peak_rss_during_predict_gb": memory.peak,
            "scan_voxels_gb": scan.voxels.nbytes / 1024 ** 3}


def default_runtime(n_slices: int = 300, size: int = 512, threads: int = 2,
                    settings=None) -> dict[str, Any]:
    """:func:`checked_model`, then one prediction of the series written as DICOM and read
    back, on what ``--runtime auto`` picks for that model file (all in this process)."""
    import tempfile
    from pathlib import Path

    from covidct.scanio import save_scan
    from covidct.synth.phantom import benchmark_series

    folder = Path(tempfile.mkdtemp(prefix="covidct-bench-default-"))
    checked = checked_model(folder, settings, threads)
    series = folder / "series"
    save_scan(benchmark_series(n_slices, size), series)
    with covidct_cache(checked["cache"]):
        result = predict_only(n_slices, size, threads=threads, settings=settings, runtime="auto",
                              path=str(series), model_path=checked["model"])
    return {**result, **{k: checked[k] for k in ("int8_check", "int8_check_s")}}


def run(n_slices: int = 300, size: int = 512, pixel_mm: float = 0.625, slice_mm: float = 2.5,
        threads: int = 2, full: bool = False, repeats: int = 2, settings=None) -> dict[str, Any]:
    """Every timing above; ``settings`` (default: the method's) lets benchmarks.run --tiny
    use small networks."""
    import torch

    from covidct.synth.phantom import benchmark_series
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.cache import ArrayCache
    from covidct.covidctnet.infection_maps import denoise, denoise_indices
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.preprocess import preprocess_reference, preprocess_volume
    from covidct.covidctnet.settings import VolumeSettings

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    scan = benchmark_series(n_slices, size, pixel_mm, slice_mm)
    settings = settings or VolumeSettings()
    out: dict[str, Any] = {"series": scan.summary(), "threads": threads,
                           "settings": settings.to_dict()}

    out["preprocess_fast_s"], volume = _best_of(lambda: preprocess_volume(scan, settings), repeats)
    out["preprocess_reference_s"], reference = _best_of(
        lambda: preprocess_reference(scan.voxels, scan.spacing, settings), 1)
    difference = np.abs(volume - reference)
    out["fast_vs_reference"] = {"mean_abs": float(difference.mean()),
                                "p99_abs": float(np.percentile(difference, 99)),
                                "max_abs": float(difference.max())}
    out["preprocessed_shape"] = list(volume.shape)

    denoiser = BCDUNet(settings.denoiser_width).eval()
    chosen = volume[denoise_indices(len(volume), settings.max_denoised_slices)]
    out["bcdunet_capped_slices"] = len(chosen)
    out["bcdunet_capped_s"], _ = _best_of(lambda: denoise(chosen, denoiser), 1)
    out["bcdunet_s_per_slice"] = out["bcdunet_capped_s"] / len(chosen)
    if full:
        out["bcdunet_all_slices"] = len(volume)
        out["bcdunet_all_s"], _ = _best_of(lambda: denoise(volume, denoiser), 1)

    model = CovidCTNet.build(settings, denoiser=denoiser, cache=ArrayCache(None))
    inputs = np.zeros((1, *settings.volume_shape), np.float32)
    out["cnn3d_s"], _ = _best_of(lambda: model.classify(inputs), repeats)
    out["predict_total_s"], prediction = _best_of(lambda: model.predict(scan), 1)
    out["predict_timings_s"] = prediction.timings
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def int8_denoiser(n_slices: int = 300, size: int = 512, threads: int = 2, settings=None,
                  rounds: int = 3) -> dict[str, Any]:
    """BCDU-Net on ONNX Runtime, float32 vs int8 (``covidct export --int8``'s quantization,
    calibrated on the series' own denoised slices: weights are random, this measures time;
    tests/test_covidctnet_pipeline.py checks a trained model's answers), on the capped slices
    of the series, the two alternating ``rounds`` times (best of each); then a whole
    prediction with either denoiser, alternating, in this process (cache off)."""
    import tempfile
    from pathlib import Path

    import torch

    from covidct.export import OnnxNetwork, to_runtime
    from covidct.quantize import DENOISER_OPS, int8_path, quantize_graph
    from covidct.synth.phantom import benchmark_series
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.cache import ArrayCache
    from covidct.covidctnet.infection_maps import denoise, denoise_indices
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.preprocess import preprocess_volume
    from covidct.covidctnet.settings import VolumeSettings

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    settings = settings or VolumeSettings()
    scan = benchmark_series(n_slices, size)
    model = CovidCTNet.build(settings, denoiser=BCDUNet(settings.denoiser_width),
                             cache=ArrayCache(None))
    folder = Path(tempfile.mkdtemp(prefix="covidct-bench-int8-"))
    model = to_runtime(model, "onnx", threads=threads, onnx_path=None)
    float_net = model.denoiser
    volume = preprocess_volume(scan, settings)
    chosen = volume[denoise_indices(len(volume), settings.max_denoised_slices)]
    picks = np.linspace(0, len(chosen) - 1, min(64, len(chosen))).astype(int)
    start = time.perf_counter()
    int8 = quantize_graph(float_net.path, int8_path(folder / "bcdunet.onnx"), chosen[picks][:, None],
                          DENOISER_OPS)
    quantize_s = time.perf_counter() - start
    int8_net = OnnxNetwork(int8, threads)
    nets = {"float32": float_net, "int8": int8_net}
    if importlib.util.find_spec("openvino") is not None:  # the same int8 graph on OpenVINO
        nets["openvino-int8"] = OnnxNetwork(int8, threads, engine="openvino")
    for net in nets.values():
        denoise(chosen[:2], net)
    # CPU seconds too: on a shared machine they move far less with the load than wall time.
    best = {k: float("inf") for k in nets}
    cpu = {k: float("inf") for k in nets}
    for _ in range(rounds):
        for name, net in nets.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            denoise(chosen, net)
            best[name] = min(best[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    predict = {k: float("inf") for k in nets}
    for _ in range(2):
        for name, net in nets.items():
            model.denoiser = net
            start = time.perf_counter()
            model.predict(scan)
            predict[name] = min(predict[name], time.perf_counter() - start)
    return {"series": scan.summary(), "threads": threads, "slices": len(chosen),
            "quantize_s": quantize_s, "denoise_s": best, "denoise_cpu_s": cpu,
            "int8_vs_float32": best["float32"] / best["int8"],
            "int8_vs_float32_cpu": cpu["float32"] / cpu["int8"], "predict_s": predict,
            "predict_int8_vs_float32": predict["float32"] / predict["int8"],
            **({"openvino_int8_vs_float32": best["float32"] / best["openvino-int8"],
                "openvino_int8_vs_float32_cpu": cpu["float32"] / cpu["openvino-int8"],
                "predict_openvino_int8_vs_float32": predict["float32"] / predict["openvino-int8"]}
               if "openvino-int8" in nets else {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full", action="store_true",
                        help="also time BCDU-Net on every 1-mm slice (minutes on a CPU)")
    parser.add_argument("--predict-only", action="store_true",
                        help="only one whole prediction, for its peak memory")
    parser.add_argument("--int8", action="store_true",
                        help="only BCDU-Net int8 vs float32 on ONNX Runtime (and a prediction each)")
    parser.add_argument("--default-runtime", action="store_true",
                        help="with --predict-only: the default runtime (--runtime auto) of a model "
                             "file whose int8 check was run (checked_model), reading the series "
                             "from disk included; the check in this process too (benchmarks.run "
                             "predicts in a fresh one)")
    args = parser.parse_args(argv)
    if args.int8:
        result = int8_denoiser(args.slices, args.size, threads=args.threads)
    elif args.predict_only and args.default_runtime:
        result = default_runtime(args.slices, args.size, threads=args.threads)
    elif args.predict_only:
        result = predict_only(args.slices, args.size, threads=args.threads)
    else:
        result = run(args.slices, args.size, threads=args.threads, full=args.full)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
