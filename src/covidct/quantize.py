"""int8 slice classifier: ONNX Runtime static quantization calibrated on training slices.

``covidct export MODEL --int8 --calibration TRAIN_SPLIT --images DIR`` writes, next to the
float graph, ``<stem>.int8.onnx``: weights int8 per output channel, activations uint8 with
ranges taken from the training slices (the same crop, resize and scaling as prediction),
in the QDQ format that ONNX Runtime fuses into integer convolutions.

The int8 graph is checked before it is used. Half of the calibration slices are held out
of the calibration itself; on them the int8 and float32 graphs must give the same call
(argmax) on at least :data:`MIN_AGREEMENT` of the slices, with the median of the largest
per-slice probability difference at most :data:`MAX_MEDIAN_DIFF`. The result is stored in
the graph's metadata (``covidct_int8_parity``) and beside it (``.parity.json``), and
both are copied into the ONNX cache under the model file's digest; ``--runtime auto``
(the CLI default) runs the int8 graph only when that check passed, else float32 ONNX.

CovidCTNet: ``covidct export COVIDCTNET.pt --int8 --calibration DATA`` quantizes its BCDU-Net
denoiser the same way (convolutions and up-convolutions, the ConvLSTM gates' too; the gates'
sigmoid/tanh products and sums stay float32), calibrated on the denoised slices of half of
the training scans of DATA (the cohort it was trained on), and checked on the other half end
to end (:func:`denoiser_parity`): the same scan call from the 3D CNN with either denoiser
(the classifier's bars), AND on every checked scan the int8 infection map alike to the
float32 one inside the lungs, where predictions report it (correlation >=
:data:`MIN_MAP_CORRELATION`, 99th-percentile difference <= :data:`MAX_MAP_P99` of the map's
spread): a map is more than a call. ``--runtime auto`` runs the int8 BCDU-Net exactly when
that stored check passed (records of the earlier calls-only rule do not count).

Without a manual step: ``train-bit`` and ``train-covidctnet`` end with
:func:`check_after_training` on their own training data (``--no-int8`` skips it; without
ONNX Runtime, or when the check fails, float32 stays the default, said in one line), and
``covidct demo`` does it for its two models.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, write_json
from .devices import int8_engine_order
from .errors import ModelError
from .scan import evenly_spaced
from .int8_files import (DENOISER_RULE_VERSION, int8_path, parity_path,  # noqa: F401
                         read_parity)  # read_parity: public here too

log = logging.getLogger(__name__)

#: Same call on at least this share of held-out training slices...
MIN_AGREEMENT = 0.99
#: ... and at most this median (over slices) of the largest class-probability difference.
MAX_MEDIAN_DIFF = 0.02
#: Training slices read for calibration and the check (half each), evenly over the split.
CALIBRATION_SLICES = 256
#: Only the matrix products are quantized; BiT's group norms and the residual additions stay
#: float32 (quantizing them cost agreement and buys nothing: they are not where time goes).
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
#: BCDU-Net's products: its convolutions (ConvLSTM gates included) and up-convolutions.
DENOISER_OPS = ("Conv", "ConvTranspose")
#: Denoised slices fed to the calibration (evenly over the calibration scans): the calibrator
#: keeps every intermediate tensor of every slice in memory.
DENOISER_CALIBRATION_SLICES = 64
#: Training scans read for CovidCTNet's int8 export, half to calibrate, half to check.
DENOISER_SCANS = 16
#: CovidCTNet's int8 BCDU-Net also has to keep the infection MAP, inside the lungs, on every
#: held-out scan: correlation with the float32 map >= MIN_MAP_CORRELATION and 99th percentile
#: of |difference| <= MAX_MAP_P99 x the float map's standard deviation there. Measured on
#: SYNTHETIC phantoms (tests/test_covidctnet_pipeline.py's tiny trained models, 8 held-out
#: training scans): correlation >= 0.994 and 99th percentile <= 0.45 SD with the quantization
#: used here, 0.996 / 0.31-0.44 with parts of the network kept float32. The bars leave room
#: for that spread (the maps agree far better than the calls: it is the calls that failed
#: there) and still refuse a map whose shape moved: at r = 0.98 the int8 map explains 96% of
#: the float one's in-lung variance, and its largest differences stay under 3/4 of its spread.
MIN_MAP_CORRELATION = 0.98
MAX_MAP_P99 = 0.75
#: Fewer lung voxels than this on the map's grid (a lung mask that failed): the whole map is
#: judged instead.
MIN_LUNG_VOXELS = 100
PARITY_KEY = "covidct_int8_parity"
#: How the one-line check names each engine.
ENGINE_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def training_inputs(model, split_file: str | os.PathLike, image_dir: str | os.PathLike,
                    n: int = CALIBRATION_SLICES) -> np.ndarray:
    """Up to ``n`` slices of a COVIDx-format split, evenly spread over it, as the network's
    input (box crop, resize to the model's crop, x/127.5-1, 3 channels): (n, 3, crop, crop)."""
    import torch

    # lazy: imports torch, PIL, which this module does not need on import
    from .bit.slice_data import normalize

    dataset = model.dataset(split_file, image_dir)
    picks = evenly_spaced(len(dataset), n)
    pixels = torch.stack([dataset[int(i)][0] for i in picks])
    return np.ascontiguousarray(normalize(pixels).numpy(), dtype=np.float32)


def quantize_graph(float_path: str | os.PathLike, out: str | os.PathLike,
                   calibration: np.ndarray, ops: tuple[str, ...] = QUANTIZED_OPS) -> Path:
    """Static int8 quantization of the ``ops`` nodes of a float graph (a classifier, or with
    :data:`DENOISER_OPS` BCDU-Net), calibrated on ``calibration``; its first and last such
    nodes stay float32 (see :func:`_first_and_last_products`)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"input": item}

    with atomic_path(out) as tmp:
        prepared = Path(str(tmp) + ".pre.onnx")
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(ops), per_channel=True,
                            nodes_to_exclude=_first_and_last_products(prepared, ops),
                            activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": False,
                                           "WeightSymmetric": True})
        finally:
            prepared.unlink(missing_ok=True)
    return Path(out)


def _first_and_last_products(graph_path: Path, ops: tuple[str, ...] = QUANTIZED_OPS) -> list[str]:
    """The first product (it reads the image, whose 8-bit range a uint8 copy would coarsen
    again) and the last (the classifier's logits, BCDU-Net's output image): kept float32, as
    is usual for quantized CNNs; together a few percent of the FLOPs."""
    import onnx

    nodes = [n.name for n in onnx.load(str(graph_path)).graph.node if n.op_type in ops]
    return sorted({nodes[0], nodes[-1]}) if nodes else []


def check_engines() -> tuple[str, ...]:
    """The engines an int8 graph is checked on: ONNX Runtime, and OpenVINO where installed
    (the same graph gives slightly different numbers on each; auto trusts an engine only
    with its own check, covidct.export.passed_check)."""
    import importlib.util

    return ("onnxruntime",) + (("openvino",) if importlib.util.find_spec("openvino") else ())


def parity(float_path: str | os.PathLike, int8: str | os.PathLike, inputs: np.ndarray,
           threads: int | None = None) -> dict[str, Any]:
    """int8 vs float32 (ONNX Runtime) on ``inputs``: share of the same call, median and max
    probability gap, with the int8 graph on ONNX Runtime; the same under ``"openvino"`` with
    it on OpenVINO (:func:`check_engines`)."""
    import torch

    # lazy: imports torch, which this module does not need on import
    from .export import OnnxNetwork

    x = torch.from_numpy(inputs)
    reference = torch.softmax(OnnxNetwork(float_path, threads)(x), 1).numpy()
    checks = {}
    for engine in check_engines():
        quantized = torch.softmax(OnnxNetwork(int8, threads, engine=engine)(x), 1).numpy()
        checks[engine] = _call_agreement(reference, quantized)
    return {"slices": int(len(inputs)), **checks.pop("onnxruntime"), **checks,
            "rule": f"same call on >= {MIN_AGREEMENT:.0%} of held-out training slices and "
                    f"median probability difference <= {MAX_MEDIAN_DIFF}"}


def _call_agreement(reference: np.ndarray, quantized: np.ndarray) -> dict[str, Any]:
    gap = np.abs(reference - quantized).max(1)
    agreement = float(np.mean(reference.argmax(1) == quantized.argmax(1)))
    median = float(np.median(gap))
    return {"same_call": agreement, "median_prob_diff": median, "max_prob_diff": float(gap.max()),
            "passed": agreement >= MIN_AGREEMENT and median <= MAX_MEDIAN_DIFF}


def export_int8(model, float_path: str | os.PathLike, inputs: np.ndarray,
                threads: int | None = None,
                out: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
    """Quantize ``float_path`` (the model's exported classifier) on every other training slice
    of ``inputs``, check it on the others, and record the check in the graph's metadata."""
    if model.int8_role != "classifier":
        raise ModelError(f"the {model.method} model quantizes its {model.int8_role}, not a "
                         "slice classifier (see export_int8_denoiser)")
    if len(inputs) < 2:
        raise ModelError("int8 calibration needs at least 2 training slices")
    calibrate, held_out = inputs[0::2], inputs[1::2]
    out = Path(out) if out else int8_path(float_path)
    quantize_graph(float_path, out, calibrate)
    check = {**parity(float_path, out, held_out, threads), "calibration_slices": len(calibrate)}
    return _record_check(out, check), check


def _record_check(out: Path, check: dict[str, Any]) -> Path:
    """Store a parity check in the int8 graph's metadata and beside it."""
    import onnx

    graph = onnx.load(str(out))
    entry = graph.metadata_props.add()
    entry.key, entry.value = PARITY_KEY, json.dumps(check)
    write_json(parity_path(out), check)
    with atomic_path(out) as tmp:
        onnx.save(graph, str(tmp))
    return out


# After training ----------------------------------------------------------------------------

def check_after_training(model, data: str | os.PathLike | None = None,
                         split: str | os.PathLike | None = None,
                         images: str | os.PathLike | None = None,
                         threads: int | None = None) -> dict[str, Any]:
    """What ``train-covidctnet`` and ``train-bit`` (and the demo) do last: quantize the model
    file's int8 network on its own training data (CovidCTNet: the cohort ``data``; the slice
    classifier: the COVIDx ``split`` file and its ``images``), check it against float32 on
    held-out training data and cache graph and check under the model file's digest, where
    ``--runtime auto`` finds them (float32 stays the default unless the check passed).

    Returns the check, or ``{"skipped": why}`` (ONNX Runtime not installed, no network to
    quantize); never raises for a failed quantization, which only means float32 stays the
    default: training's own result is already written."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("onnxruntime") is None:
        return {"skipped": "onnxruntime is not installed"}
    if not model.int8_role or model.int8_role not in model.network_roles():
        return {"skipped": f"this {model.method} model has no network to quantize"}
    # lazy: imports torch, which this module does not need on import
    from .export import _cached_export, cache_int8

    try:
        graphs = _cached_export(model)
        with tempfile.TemporaryDirectory(prefix="covidct-int8-") as folder:
            out = Path(folder) / int8_path(graphs[model.int8_role]).name
            if model.int8_role == "denoiser":
                _, check = export_int8_denoiser(model, graphs["denoiser"], data,
                                                threads=threads, out=out)
            else:
                inputs = training_inputs(model, split, images)
                _, check = export_int8(model, graphs["classifier"], inputs, threads, out=out)
            cache_int8(model, out)
    except Exception as exc:  # noqa: BLE001 - an optional speed-up must not fail a finished run
        return {"skipped": f"int8 export failed: {type(exc).__name__}: {exc}"}
    return check


def check_model_file(path: str | os.PathLike, data: str | os.PathLike | None = None,
                     split: str | os.PathLike | None = None,
                     images: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None) -> str:
    """:func:`check_after_training` for a finished run's model file, as one line
    (:func:`check_line`). ``cache_dir``: the training's pre-processed volumes (CovidCTNet),
    so they are not read and resampled again."""
    from .models import load_model  # lazy: imports torch

    model = load_model(path)
    if cache_dir:
        model.use_cache(cache_dir)
    return check_line(check_after_training(model, data, split=split, images=images))


def check_line(check: dict[str, Any]) -> str:
    """One line saying what :func:`check_after_training` found and what auto will run."""
    if "skipped" in check:
        return f"int8: not made ({check['skipped']}); --runtime auto runs float32"
    held_out = (f"{check['scans']} held-out training scans" if "scans" in check
                else f"{check['slices']} held-out training slices")
    figures = _check_figures(check)
    openvino = check.get("openvino")
    if openvino:
        figures += (f"; on OpenVINO: {_check_figures(openvino)} "
                    f"({'passed' if openvino['passed'] else 'FAILED'})")
    # What auto will run here: the first engine in its order whose check passed.
    passed = {"onnxruntime": check["passed"], "openvino": bool((openvino or {}).get("passed"))}
    engine = next((e for e in int8_engine_order() if passed[e]), None)
    verdict = (f"passed: --runtime auto runs int8 on {ENGINE_NAMES[engine]}" if engine
               else "FAILED: --runtime auto runs float32")
    return f"int8 check on {held_out}: {figures} -> {verdict}"


def _check_figures(check: dict[str, Any]) -> str:
    figures = (f"same call {check['same_call']:.1%}, median probability difference "
               f"{check['median_prob_diff']:.4f}")
    if "map_lung_correlation_min" in check:
        figures += (f", map correlation in the lungs >= {check['map_lung_correlation_min']:.3f}, "
                    f"99th pct |difference| <= {check['map_lung_p99_rel_max']:.2f} SD")
    return figures


# CovidCTNet's BCDU-Net ---------------------------------------------------------------------

def training_scans(model, data: str | os.PathLike, n: int = DENOISER_SCANS) -> list[Path]:
    """Up to ``n`` scans of the training split of ``data`` (split as the model's training
    split it), evenly spread over it."""
    items = model.cohort(data).split("train")
    if len(items) < 2:
        raise ModelError("int8 calibration needs at least 2 training scans", data)
    picks = evenly_spaced(len(items), n)
    return [Path(items[int(i)].path) for i in picks]


def denoised_slices(model, scan_path: Path) -> np.ndarray:
    """The pre-processed slices of one scan file that its infection map sends through the
    denoiser, as the denoiser reads them: (k, 1, S, S) float32."""
    from .covidctnet.infection_maps import denoise_indices

    volume, _ = model.volume_for_file(scan_path)
    chosen = volume[denoise_indices(len(volume), model.settings.max_denoised_slices)]
    return np.ascontiguousarray(chosen[:, None], dtype=np.float32)


def export_int8_denoiser(model, float_path: str | os.PathLike, data: str | os.PathLike,
                         scans: int = DENOISER_SCANS, threads: int | None = None,
                         out: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
    """Quantize a CovidCTNet's exported BCDU-Net graph on the denoised slices of every other
    training scan of ``data`` and check it end to end on the others (:func:`denoiser_parity`)."""
    if model.int8_role != "denoiser":
        raise ModelError(f"the {model.method} model has no denoiser to quantize")
    paths = training_scans(model, data, scans)
    calibrate, held_out = paths[0::2], paths[1::2]
    slices = np.concatenate([denoised_slices(model, p) for p in calibrate])
    picks = evenly_spaced(len(slices), DENOISER_CALIBRATION_SLICES)
    out = Path(out) if out else int8_path(float_path)
    quantize_graph(float_path, out, slices[picks], DENOISER_OPS)
    check = {**denoiser_parity(model, float_path, out, held_out, threads),
             "calibration_scans": len(calibrate), "calibration_slices": int(len(picks))}
    return _record_check(out, check), check


def denoiser_parity(model, float_path: str | os.PathLike, int8: str | os.PathLike,
                    scans: list[Path], threads: int | None = None) -> dict[str, Any]:
    """A CovidCTNet's calls with its float32 vs int8 denoiser on ``scans`` (the same 3D CNN
    reads both infection maps), and how far the maps moved inside the lungs, where a
    prediction reports them (:meth:`covidct.covidctnet.pipeline.CovidCTNet.predict`).

    Passed when the calls agree (:data:`MIN_AGREEMENT`, :data:`MAX_MEDIAN_DIFF`) and, on
    every scan, the two maps inside its lungs correlate at least :data:`MIN_MAP_CORRELATION`
    with a 99th-percentile difference of at most :data:`MAX_MAP_P99` of the float map's
    standard deviation there (:func:`map_agreement`). The int8 denoiser runs on ONNX Runtime
    for the record itself and on OpenVINO for its ``"openvino"`` entry (:func:`check_engines`);
    the float32 reference on ONNX Runtime."""
    # lazy: imports torch, which this module does not need on import
    from .covidctnet.infection_maps import infection_map, with_volume
    from .export import OnnxNetwork

    networks = {"float32": OnnxNetwork(float_path, threads),
                **{engine: OnnxNetwork(int8, threads, engine=engine) for engine in check_engines()}}
    probabilities = {name: [] for name in networks}
    maps = {name: [] for name in networks}
    lung_masks = []
    for path in scans:
        volume, _ = model.volume_for_file(path)
        lungs = model._lungs_for_file(path, model._file_content(path))
        lung_masks.append(lungs)
        for name, net in networks.items():
            array = infection_map(volume, net, model.settings)
            maps[name].append(array)
            probabilities[name].append(model.classify(
                model.reads(with_volume(array, volume, model.settings), lungs)[None])[0])
    judged = {engine: _denoiser_agreement(probabilities["float32"], maps["float32"],
                                          probabilities[engine], maps[engine], lung_masks)
              for engine in networks if engine != "float32"}
    return {"scans": len(scans), **judged.pop("onnxruntime"), **judged,
            "rule_version": DENOISER_RULE_VERSION,
            "rule": f"same scan call on >= {MIN_AGREEMENT:.0%} of held-out training scans, "
                    f"median probability difference <= {MAX_MEDIAN_DIFF}, and on every scan "
                    f"the maps inside the lungs correlate >= {MIN_MAP_CORRELATION} with a 99th "
                    f"percentile |difference| <= {MAX_MAP_P99} of the float map's standard "
                    "deviation there"}


def _denoiser_agreement(reference_probs, reference_maps, probs, maps, lung_masks
                        ) -> dict[str, Any]:
    """The calls and maps of one int8 denoiser against the float32 ones, scan by scan."""
    per_scan = [map_agreement(a, b, lungs)
                for a, b, lungs in zip(reference_maps, maps, lung_masks)]
    calls = _call_agreement(np.stack(reference_probs), np.stack(probs))
    reference, quantized = np.concatenate(reference_maps), np.concatenate(maps)
    difference = np.abs(reference - quantized)
    correlation = min(s["correlation"] for s in per_scan)
    p99 = max(s["p99_rel"] for s in per_scan)
    map_passed = correlation >= MIN_MAP_CORRELATION and p99 <= MAX_MAP_P99
    return {"same_call": calls["same_call"], "median_prob_diff": calls["median_prob_diff"],
            "max_prob_diff": calls["max_prob_diff"],
            "map_max_abs_diff": float(difference.max()),
            "map_p99_abs_diff": float(np.quantile(difference, 0.99)),
            "map_mean_abs_diff": float(difference.mean()),
            "map_std": float(reference.std()) or 1.0,
            "map_lung_correlation_min": correlation, "map_lung_p99_rel_max": p99,
            "map_lung_scans": int(sum(s["in_lungs"] for s in per_scan)),
            "calls_passed": calls["passed"], "map_passed": map_passed,
            "passed": calls["passed"] and map_passed}


def map_agreement(reference: np.ndarray, quantized: np.ndarray,
                  lungs: np.ndarray) -> dict[str, Any]:
    """How alike two infection maps of one scan are inside its lungs (the whole map when fewer
    than :data:`MIN_LUNG_VOXELS` lung voxels were found): Pearson correlation, and the 99th
    percentile of the absolute difference over the reference map's standard deviation."""
    inside = np.asarray(lungs) > 0.5
    in_lungs = int(inside.sum()) >= MIN_LUNG_VOXELS
    a = (reference[inside] if in_lungs else reference.ravel()).astype(np.float64)
    b = (quantized[inside] if in_lungs else quantized.ravel()).astype(np.float64)
    spread = a.std()
    if spread == 0.0:  # a flat map: alike only if the other is the same
        same = bool(np.array_equal(a, b))
        return {"correlation": 1.0 if same else 0.0, "p99_rel": 0.0 if same else float("inf"),
                "in_lungs": in_lungs}
    correlation = float(np.corrcoef(a, b)[0, 1]) if b.std() > 0 else 0.0
    return {"correlation": correlation,
            "p99_rel": float(np.quantile(np.abs(a - b), 0.99) / spread), "in_lungs": in_lungs}
