"""Slice-classifier benchmarks: inference paths (row 1), a patient end to end (row 2), the
training data pipeline (row 5) and training throughput (row 6).

Networks have random weights where only time is measured (time does not depend on them).
Every scan here is a SYNTHETIC phantom.
"""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidct.covidx import IMAGES_DIR, covidx_paths, split_path
from covidct.labels import LABELS_CSV, read_labels

from .common import Sizes, best_time, forward_flops, sync


def _resize_for(crop: int) -> int:
    """The BiT-HyperRule resize of a crop size (the paper's pairs; else x1.125 rounded to 8)."""
    from covidct.bit.schedule import RESOLUTIONS

    pair = RESOLUTIONS.get(str(crop))
    return pair[0] if pair else int(math.ceil(crop * 1.125 / 8) * 8)


# Row 1: inference paths --------------------------------------------------------------------

def inference(sizes: Sizes, threads: int, peak: float, workdir: Path) -> dict[str, Any]:
    """Slices/s of the slice classifier on each CPU path, with FLOP utilisation."""
    from covidct.export import OnnxNetwork, export_network, fold_weight_standardization
    from covidct.bit.model import build_network

    torch.manual_seed(0)
    net = build_network(sizes.arch).eval()
    crop, batch = sizes.crop, sizes.batch
    flops = forward_flops(net, torch.zeros(1, 3, crop, crop))
    folded = fold_weight_standardization(net)
    start = time.perf_counter()
    onnx_path = export_network(folded, (1, 3, crop, crop), {0: "batch"}, workdir / "bit.onnx")
    export_s = time.perf_counter() - start
    # max_batch=0: each call runs the batch it is given (prediction caps it, see MAX_BATCH).
    session = OnnxNetwork(onnx_path, threads, max_batch=0)
    int8_graph = _int8_graph(onnx_path, sizes)
    int8_session = OnnxNetwork(int8_graph, threads, max_batch=0)
    # Slices side by side, one thread each: no layer waits for a peer thread, and int8's
    # float32 islands (group norms, (de)quantization), which ONNX Runtime runs on one
    # thread, no longer leave the other core idle.
    side_by_side = {name: _SideBySide(path, threads) for name, path in
                    (("float32", onnx_path), ("int8", int8_graph))}
    # The same two graphs on OpenVINO (covidct.export.OpenVinoSession), where installed.
    openvino = importlib.util.find_spec("openvino") is not None
    if openvino:
        on_ov = {name: OnnxNetwork(path, threads, max_batch=0, engine="openvino")
                 for name, path in (("float32", onnx_path), ("int8", int8_graph))}
        ov_side = {name: _SideBySide(path, threads, engine="openvino") for name, path in
                   (("float32", onnx_path), ("int8", int8_graph))}
    inputs = {n: torch.randn(n, 3, crop, crop) for n in (1, batch)}
    channels_last = {n: x.contiguous(memory_format=torch.channels_last) for n, x in inputs.items()}

    def eager(module, x):
        def call():
            with torch.inference_mode():
                module(x)
        return call

    cl_net = build_network(sizes.arch).eval().to(memory_format=torch.channels_last)
    cl_net.load_state_dict(net.state_dict())
    cl_folded = fold_weight_standardization(cl_net).to(memory_format=torch.channels_last)
    variants = [
        ("timm eager float32, batch 1 (baseline)", 1, eager(net, inputs[1])),
        (f"timm eager float32, batch {batch}", batch, eager(net, inputs[batch])),
        (f"eager, channels-last, batch {batch}", batch, eager(cl_net, channels_last[batch])),
        (f"eager, folded weight standardisation, channels-last, batch {batch}", batch,
         eager(cl_folded, channels_last[batch])),
        ("ONNX Runtime, batch 1", 1, lambda: session(inputs[1])),
        (f"ONNX Runtime, batch {batch}", batch, lambda: session(inputs[batch])),
        (f"ONNX Runtime, {threads} slices at once, 1 thread each, batch {batch}", batch,
         lambda: side_by_side["float32"](inputs[batch])),
        (INT8_VARIANT + ", batch 1", 1, lambda: int8_session(inputs[1])),
        (f"{INT8_VARIANT}, batch {batch}", batch, lambda: int8_session(inputs[batch])),
        (f"{INT8_VARIANT}, {threads} slices at once, 1 thread each, batch {batch}", batch,
         lambda: side_by_side["int8"](inputs[batch])),
    ]
    if openvino:
        variants += [
            (OV_FLOAT_VARIANT + ", batch 1", 1, lambda: on_ov["float32"](inputs[1])),
            (f"{OV_FLOAT_VARIANT}, {threads} slices at once, 1 thread each, batch {batch}",
             batch, lambda: ov_side["float32"](inputs[batch])),
            (OV_INT8_VARIANT + ", batch 1", 1, lambda: on_ov["int8"](inputs[1])),
            (f"{OV_INT8_VARIANT}, {threads} slices at once, 1 thread each, batch {batch}",
             batch, lambda: ov_side["int8"](inputs[batch])),
        ]
    from .common import matmul_peak_gflops

    rows = []
    for name, n, call in variants:
        # The matmul peak again right before each variant: on a shared machine the load
        # changes over minutes, and the fraction should compare like with like.
        local_peak = matmul_peak_gflops(sizes.matmul_n, reps=3)
        seconds = best_time(call, sizes.reps)
        # CPU seconds (every thread of the process) of one more call: the work, which other
        # jobs on a shared machine move far less than the wall time.
        cpu = time.process_time()
        call()
        cpu = time.process_time() - cpu
        rate = n / seconds
        rows.append({"variant": name, "batch": n, "seconds_per_call": seconds,
                     "cpu_s_per_slice": cpu / n,
                     "slices_per_s": rate, "gflops_per_s": rate * flops / 1e9,
                     "local_peak_gflops": local_peak,
                     "peak_fraction": rate * flops / 1e9 / local_peak,
                     "run_peak_fraction": rate * flops / 1e9 / peak})
    baseline = rows[0]["slices_per_s"]
    for row in rows:
        row["speedup"] = row["slices_per_s"] / baseline
    best = max(rows, key=lambda r: r["slices_per_s"])
    floats = [r for r in rows if r["variant"].startswith(("ONNX Runtime,", OV_FLOAT_VARIANT))]
    int8s = [r for r in rows if r["variant"].startswith((INT8_VARIANT, OV_INT8_VARIANT))]
    float_best = max(r["slices_per_s"] for r in floats)
    int8_best = max(r["slices_per_s"] for r in int8s)
    return {"arch": sizes.arch, "crop": crop, "gflops_per_slice": flops / 1e9,
            "onnx_export_s": export_s, "variants": rows, "fastest": best["variant"],
            "onnx_path": str(onnx_path), "onnx_batch_1_rate": rows[4]["slices_per_s"],
            "int8_vs_float32_onnx": int8_best / float_best,
            "int8_best": max(int8s, key=lambda r: r["slices_per_s"])["variant"],
            "float32_best": max(floats, key=lambda r: r["slices_per_s"])["variant"],
            "int8_vs_float32_onnx_cpu": (min(r["cpu_s_per_slice"] for r in floats)
                                         / min(r["cpu_s_per_slice"] for r in int8s))}


class _SideBySide:
    """A batch as single slices run side by side on ``threads`` one-thread calls of one
    session (ONNX Runtime's run() may be called from several threads at once; OpenVINO's
    session keeps an infer request per thread)."""

    def __init__(self, path: Path, threads: int, engine: str = "onnxruntime"):
        from concurrent.futures import ThreadPoolExecutor

        from covidct.export import OnnxNetwork

        self.network = OnnxNetwork(path, 1, engine=engine)
        self.pool = ThreadPoolExecutor(max(1, threads))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(self.pool.map(lambda i: self.network(x[i:i + 1]), range(len(x)))))


INT8_VARIANT = "ONNX Runtime int8 (static, calibrated)"
OV_FLOAT_VARIANT = "OpenVINO float32 (the same graph)"
OV_INT8_VARIANT = "OpenVINO int8 (the same int8 graph)"


def _int8_graph(onnx_path: Path, sizes: Sizes) -> Path:
    """The row's graph quantized as `covidct export --int8` does, calibrated on slices of the
    SYNTHETIC benchmark series prepared as prediction prepares them (weights are random:
    this measures speed; tests/test_int8.py checks the answers of a trained model)."""
    from covidct.quantize import int8_path, quantize_graph
    from covidct.bit.slice_data import EvalTransform, crop_box, normalize
    from covidct.bit.model import scan_body_box, slice_pixels
    from covidct.synth.phantom import benchmark_series

    scan = benchmark_series(*sizes.series)
    picks = np.linspace(scan.n_slices // 4, 3 * scan.n_slices // 4, 2 * sizes.batch).astype(int)
    transform = EvalTransform(sizes.crop)
    tensors = []
    for k in picks:
        pixels = slice_pixels(scan.voxels[int(k)], scan.is_hu)
        tensors.append(transform(crop_box(pixels, scan_body_box(pixels))))
    calibration = np.ascontiguousarray(normalize(torch.stack(tensors)).numpy(), np.float32)
    return quantize_graph(onnx_path, int8_path(onnx_path), calibration)


# Row 2: a patient end to end --------------------------------------------------------------------

def patient_level(sizes: Sizes, threads: int, row1: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Read a DICOM series, choose slices, crop, batch, score on ONNX Runtime, aggregate."""
    from covidct.export import to_runtime
    from covidct.scanio import load_scan, save_scan
    from covidct.bit.model import (SliceClassifier, slice_pixels, build_network, lung_slices,
                                      scan_body_box)
    from covidct.synth.phantom import benchmark_series

    n_slices, matrix = sizes.series
    series = save_scan(benchmark_series(n_slices, matrix), workdir / "series")
    read_s = best_time(lambda: load_scan(series), 2, warmup=0)
    scan = load_scan(series)
    torch.manual_seed(0)
    model = SliceClassifier(net=build_network(sizes.arch).eval(), arch=sizes.arch,
                            resize=_resize_for(sizes.crop), crop=sizes.crop,
                            max_slices=sizes.max_slices, batch_size=sizes.batch)
    model = to_runtime(model, "onnx", threads=threads, onnx_path=row1["onnx_path"])
    start = time.perf_counter()
    prediction = model.predict(load_scan(series))
    total_s = time.perf_counter() - start
    lung, _ = lung_slices(scan, max_slices=10 ** 9)
    # The baseline, run: every slice of the same series, read, cropped and scored one at a
    # time by the eager PyTorch network (the paper's way of scoring a scan).
    eager = SliceClassifier(net=build_network(sizes.arch).eval(), arch=sizes.arch,
                            resize=_resize_for(sizes.crop), crop=sizes.crop, batch_size=1)
    start = time.perf_counter()
    every = load_scan(series)
    pixels = [slice_pixels(every.voxels[k], every.is_hu) for k in range(every.n_slices)]
    with torch.inference_mode():
        eager.predict_pixels(pixels, [scan_body_box(p) for p in pixels])
    baseline_s = time.perf_counter() - start
    return {"series": scan.summary(), "lung_slices": int(len(lung)),
            "scored_slices": int(len(prediction.slice_indices)), "read_s": read_s,
            "total_s": total_s, "timings_s": prediction.timings,
            "baseline_every_slice_eager_s": baseline_s, "baseline_slices": int(every.n_slices)}


def capped_vs_every_slice(sizes: Sizes, threads: int, workdir: Path) -> dict[str, Any]:
    """Patient-level accuracy of the project's slice choice vs scoring every slice, with a
    tiny BiT trained here on a SYNTHETIC cohort (the rule is what is compared, not the net)."""
    from covidct.models import load_model
    from covidct.scanio import load_scan
    from covidct.bit.model import TINY_ARCH, slice_pixels, scan_body_box
    from covidct.bit.train import TrainConfig, train
    from covidct.synth.cohort import CohortSettings, generate_cohort

    root = workdir / "cohort"
    start = time.perf_counter()
    generate_cohort(root, CohortSettings(patients=sizes.cohort_patients, seed=7,
                                         matrix=sizes.cohort_matrix, slice_mm=(2.5, 2.5),
                                         max_slices=sizes.cohort_slices, split=(0.5, 0.0, 0.5),
                                         formats=("nifti", "covidx")), progress=False)
    steps = sizes.cohort_steps
    result = train(TrainConfig(
        train_split=str(split_path(root / "covidx", "train")),
        images=str(root / "covidx" / IMAGES_DIR), out=str(workdir / "run"), arch=TINY_ARCH,
        init="random", resize=_resize_for(sizes.cohort_crop), crop=sizes.cohort_crop,
        schedule=(max(1, steps // 20), steps // 2, 3 * steps // 4, 9 * steps // 10, steps),
        batch_size=sizes.cohort_batch, lr=0.01, mixup_alpha=0.0, balanced=True, workers=0,
        val_every=steps, progress=False))
    prepared_s = time.perf_counter() - start
    model = load_model(result.model_path)
    model.max_slices = sizes.max_slices
    patients = read_labels(root / LABELS_CSV)
    rows = []
    for patient in patients:
        scan = load_scan(root / patient["nifti"])
        capped = model.predict(scan)
        pixels = [slice_pixels(scan.voxels[k], scan.is_hu) for k in range(scan.n_slices)]
        every = model.predict_pixels(pixels, [scan_body_box(p) for p in pixels]).mean(0)
        rows.append({"split": patient["split"], "truth": patient["label"], "capped": capped.label,
                     "every": model.class_names[int(np.argmax(every))],
                     "scored": len(capped.slice_indices), "slices": scan.n_slices,
                     "max_prob_difference": float(np.abs(capped.probabilities - every).max())})
    test = [r for r in rows if r["split"] == "test"]
    return {"patients": len(rows), "test_patients": len(test), "train_steps": steps,
            "cohort": {"matrix": sizes.cohort_matrix, "crop": sizes.cohort_crop,
                       "batch": sizes.cohort_batch, "balanced": True},
            "test_slice_accuracy": _slice_accuracy(model, root),
            "prepare_s": prepared_s, "max_slices": sizes.max_slices,
            "mean_scored_slices": float(np.mean([r["scored"] for r in rows])),
            "mean_slices": float(np.mean([r["slices"] for r in rows])),
            "test_accuracy_capped": float(np.mean([r["capped"] == r["truth"] for r in test])),
            "test_accuracy_every_slice": float(np.mean([r["every"] == r["truth"] for r in test])),
            "label_agreement_all_patients": float(np.mean([r["capped"] == r["every"] for r in rows])),
            "max_prob_difference": float(max(r["max_prob_difference"] for r in rows)),
            "synthetic": True}


def _slice_accuracy(model, root: Path) -> float:
    """Slice-level accuracy on the cohort's COVIDx test split (is the tiny model any good?)."""
    scores = model.score_dataset(*covidx_paths(root / "covidx", "test"))
    return float(np.mean(scores.y_prob.argmax(1) == scores.y_true))


# Row 5: the training data pipeline -----------------------------------------------------------------

def loader(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """COVIDx-format PNG slices decoded, box-cropped, resized and randomly cropped per second,
    in one process (= one DataLoader worker)."""
    from PIL import Image

    from covidct.bit.slice_data import COVIDxDataset, TrainTransform
    from covidct.bit.model import scan_body_box
    from covidct.synth.phantom import benchmark_series
    from covidct.windowing import COVIDX_LUNG

    images = workdir / "covidx" / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    scan = benchmark_series(sizes.loader_images, sizes.loader_matrix)
    lines = []
    for k in range(scan.n_slices):
        pixels = COVIDX_LUNG.to_uint8(scan.voxels[k])
        name = f"NCP_1_1_{k}.png"
        Image.fromarray(pixels).save(images / name)
        x0, y0, x1, y1 = scan_body_box(pixels)
        lines.append(f"{name} 2 {x0} {y0} {x1} {y1}")
    split = split_path(workdir / "covidx", "train")
    split.write_text("\n".join(lines) + "\n")
    dataset = COVIDxDataset(split, images, TrainTransform(_resize_for(sizes.crop), sizes.crop))
    n = len(dataset)

    def epoch():
        for i in range(n):
            dataset[(i, i)]

    seconds = best_time(epoch, sizes.reps, warmup=1)
    return {"images": n, "png_matrix": sizes.loader_matrix, "crop": sizes.crop,
            "images_per_s_per_worker": n / seconds}


# Row 6: training throughput ----------------------------------------------------------------------

def training(sizes: Sizes, device: str, peak: float, gflops_per_image: float) -> dict[str, Any]:
    """Training images/s of the slice classifier (SGD step, cross-entropy) and model FLOP
    utilisation (3 x forward FLOPs per image: forward, input and weight gradients).
    On CUDA: bf16 autocast + channels-last, as `covidct train-bit --amp --channels-last`."""
    from covidct.bit.model import build_network

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    batch = sizes.train_batch_cuda if cuda else sizes.train_batch_cpu
    torch.manual_seed(0)
    net = build_network(sizes.arch).to(dev).train()
    x = torch.randn(batch, 3, sizes.crop, sizes.crop, device=dev)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch,), device=dev)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(dev)

    seconds = best_time(step, sizes.train_steps if not cuda else 10 * sizes.train_steps,
                        warmup=1 if not cuda else 3)
    rate = batch / seconds
    return {"device": device, "precision": "bf16 autocast, channels-last" if cuda else "float32",
            "batch": batch, "images_per_s": rate,
            "mfu": rate * 3 * gflops_per_image / peak}
