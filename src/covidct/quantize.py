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

Only the slice classifier is quantized: CovidCTNet's BCDU-Net outputs an image (an
infection map) whose small differences a call cannot summarise, so it stays float32.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, write_json
from .errors import ModelError
from .int8_files import int8_path, parity_path, read_parity  # noqa: F401 (read_parity: public here too)

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
PARITY_KEY = "covidct_int8_parity"


def training_inputs(model, split_file: str | os.PathLike, image_dir: str | os.PathLike,
                    n: int = CALIBRATION_SLICES) -> np.ndarray:
    """Up to ``n`` slices of a COVIDx-format split, evenly spread over it, as the network's
    input (box crop, resize to the model's crop, x/127.5-1, 3 channels): (n, 3, crop, crop)."""
    import torch

    # lazy: imports torch, PIL, which this module does not need on import
    from .bit.slice_data import COVIDxDataset, EvalTransform, normalize

    dataset = COVIDxDataset(split_file, image_dir, EvalTransform(model.crop))
    picks = np.unique(np.round(np.linspace(0, len(dataset) - 1, min(n, len(dataset)))).astype(int))
    pixels = torch.stack([dataset[int(i)][0] for i in picks])
    return np.ascontiguousarray(normalize(pixels).numpy(), dtype=np.float32)


def quantize_graph(float_path: str | os.PathLike, out: str | os.PathLike,
                   calibration: np.ndarray) -> Path:
    """Static int8 quantization of a float classifier graph, calibrated on ``calibration``."""
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
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                            nodes_to_exclude=_first_and_last_products(prepared), activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": False,
                                           "WeightSymmetric": True})
        finally:
            prepared.unlink(missing_ok=True)
    return Path(out)


def _first_and_last_products(graph_path: Path) -> list[str]:
    """The stem convolution (it reads the image, whose 8-bit range a uint8 copy would
    coarsen again) and the classification head (its outputs are the logits): kept float32,
    as is usual for quantized CNNs; together a few percent of the FLOPs."""
    import onnx

    nodes = [n.name for n in onnx.load(str(graph_path)).graph.node if n.op_type in QUANTIZED_OPS]
    return sorted({nodes[0], nodes[-1]}) if nodes else []


def parity(float_path: str | os.PathLike, int8: str | os.PathLike, inputs: np.ndarray,
           threads: int | None = None) -> dict[str, Any]:
    """int8 vs float32 on ``inputs``: share of the same call, median and max probability gap."""
    import torch

    # lazy: imports torch, which this module does not need on import
    from .export import OnnxNetwork

    x = torch.from_numpy(inputs)
    reference = torch.softmax(OnnxNetwork(float_path, threads)(x), 1).numpy()
    quantized = torch.softmax(OnnxNetwork(int8, threads)(x), 1).numpy()
    gap = np.abs(reference - quantized).max(1)
    agreement = float(np.mean(reference.argmax(1) == quantized.argmax(1)))
    median = float(np.median(gap))
    return {"slices": int(len(inputs)), "same_call": agreement, "median_prob_diff": median,
            "max_prob_diff": float(gap.max()),
            "passed": agreement >= MIN_AGREEMENT and median <= MAX_MEDIAN_DIFF,
            "rule": f"same call on >= {MIN_AGREEMENT:.0%} of held-out training slices and "
                    f"median probability difference <= {MAX_MEDIAN_DIFF}"}


def export_int8(model, float_path: str | os.PathLike, inputs: np.ndarray,
                threads: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Quantize ``float_path`` (the model's exported classifier) on every other training slice
    of ``inputs``, check it on the others, and record the check in the graph's metadata."""
    import onnx

    if not model.quantizable:
        raise ModelError("--int8 applies to the slice classifier (bit) only; CovidCTNet's "
                         "infection maps stay float32")
    if len(inputs) < 2:
        raise ModelError("int8 calibration needs at least 2 training slices")
    calibrate, held_out = inputs[0::2], inputs[1::2]
    out = int8_path(float_path)
    quantize_graph(float_path, out, calibrate)
    check = {**parity(float_path, out, held_out, threads), "calibration_slices": len(calibrate)}
    graph = onnx.load(str(out))
    entry = graph.metadata_props.add()
    entry.key, entry.value = PARITY_KEY, json.dumps(check)
    write_json(parity_path(out), check)
    with atomic_path(out) as tmp:
        onnx.save(graph, str(tmp))
    return out, check

