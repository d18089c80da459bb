"""One file per trained model, loaded by one function for both methods.

A model file is a ``torch.save``d dict that carries everything prediction needs:
architecture, weights, class names, the intensity window, input resolution, crop rule,
a summary of the training data (synthetic or not) and the covidct version. Prediction can
therefore never apply a different pre-processing than training did.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol

from . import __version__
from .atomic import atomic_path, remove_stale_parts
from .constants import METHODS
from .digest import sha256_file
from .errors import ModelError

MODEL_FORMAT = "covidct-model"
MODEL_FORMAT_VERSION = 1

#: method -> "module:callable" building a model object from the loaded payload.
_LOADERS = {
    "bit": "covidct.slices.model:SliceClassifier.from_payload",
    "covidctnet": "covidct.volumes.pipeline:CovidCTNet.from_payload",
}


class Model(Protocol):
    method: str
    class_names: tuple[str, ...]

    def predict(self, scan: Any) -> Any: ...


def save_model_file(path: str | os.PathLike, method: str, payload: dict[str, Any]) -> Path:
    import torch

    if method not in METHODS:
        raise ModelError(f"unknown method {method!r}; known: {', '.join(METHODS)}", path)
    record = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
              "method": method, "covidct_version": __version__, **payload}
    remove_stale_parts(path)
    with atomic_path(path, durable=True) as tmp:
        torch.save(record, tmp)
    return Path(path)


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError("model file not found", path)
    try:
        # weights_only: a model file from elsewhere must not be able to run code on load.
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"not a readable covidct model file ({type(exc).__name__})", path) from None
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise ModelError("not a covidct model file (no covidct-model header)", path)
    if record.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise ModelError("model file was written by a newer covidct; upgrade covidct", path)
    if record.get("method") not in _LOADERS:
        raise ModelError(f"unknown method {record.get('method')!r} in model file", path)
    record["file"] = {"name": path.name, "sha256": sha256_file(path)[:16]}
    return record


def load_model(path: str | os.PathLike, runtime: str = "torch") -> Model:
    """Load a trained covidct model (either method) from its single file.

    ``runtime="onnx"`` runs its networks on ONNX Runtime (see :mod:`covidct.export`).
    """
    record = read_model_file(path)
    module_name, attr = _LOADERS[record["method"]].split(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    model = target(record)
    if runtime != "torch":
        from .export import to_runtime

        model = to_runtime(model, runtime)
    return model
