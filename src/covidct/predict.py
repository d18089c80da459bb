"""One predict() for both methods, used by the CLI, the web app, the demo and experiments."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

from .atomic import write_json
from .constants import DISCLAIMER, METHODS
from .errors import ModelError
from .lungs import lung_report
from .models import Model, load_model
from .prediction import Prediction
from .scan import Scan

log = logging.getLogger(__name__)

#: Where trained models are looked up when none is named: $COVIDCT_MODELS, else the
#: models the demo trains.
DEFAULT_MODEL_DIRS = ("demo-output/models",)


def model_dirs() -> list[Path]:
    env = os.environ.get("COVIDCT_MODELS")
    return [Path(env)] if env else [Path(d) for d in DEFAULT_MODEL_DIRS]


def find_model(method: str, search: Sequence[str | os.PathLike] | None = None) -> Path:
    """The model file for ``method`` (``<dir>/<method>.pt``) in the first folder that has one."""
    dirs = [Path(d) for d in search] if search else model_dirs()
    for folder in dirs:
        candidate = folder / f"{method}.pt"
        if candidate.is_file():
            return candidate
    where = ", ".join(str(d) for d in dirs)
    raise ModelError(f"no trained {method} model found in {where}; pass --model FILE "
                     "(train one with covidct train2d/train3d, or run make demo)")


def predict(scan: Scan | str | os.PathLike, models: Sequence[Model]) -> list[Prediction]:
    """Run every model on one scan (a Scan or a path load_scan understands)."""
    if not isinstance(scan, Scan):
        from .scanio import load_scan

        scan = load_scan(scan)
    results = []
    for model in models:
        start = time.perf_counter()
        prediction = model.predict(scan)
        prediction.timings.setdefault("total", time.perf_counter() - start)
        results.append(prediction)
    return results


def predict_to_folder(scan_path: Scan | str | os.PathLike, models: Sequence[Model],
                      out_dir: str | os.PathLike, pictures: bool = True) -> list[Prediction]:
    """Predict and write ``<method>.json``/CSV (+ pictures) per model, then ``summary.json``."""
    from .scanio import load_scan

    scan = scan_path if isinstance(scan_path, Scan) else load_scan(scan_path)
    out_dir = Path(out_dir)
    predictions = predict(scan, models)
    outputs = {}
    for model, prediction in zip(models, predictions):
        files = prediction.save(out_dir, stem=prediction.method)
        if pictures and hasattr(model, "save_pictures"):
            files["pictures"] = model.save_pictures(prediction, scan, out_dir)
        outputs[prediction.method] = files
    lungs = lung_report(scan) if scan.orientation in ("axial", "unknown") else None
    if pictures and lungs is not None:
        outputs["lungs_picture"] = write_lung_picture(scan, out_dir)
    # Written last, so its presence means the folder is complete.
    write_json(out_dir / "summary.json", {
        "disclaimer": DISCLAIMER,
        "scan": scan.summary(),
        "lungs": lungs,
        "results": {p.method: {"label": p.label, "probabilities": p.to_dict()["probabilities"]}
                    for p in predictions},
        "files": outputs,
    })
    return predictions


def write_lung_picture(scan: Scan, out_dir: Path) -> Path:
    """``lungs.png``: a few lung slices with the lung mask outlined (right cyan, left yellow)."""
    from PIL import Image

    from .atomic import atomic_path
    from .lungs import lung_picture, scan_lungs

    path = Path(out_dir) / "lungs.png"
    with atomic_path(path) as tmp:
        Image.fromarray(lung_picture(scan, scan_lungs(scan))).save(tmp, format="PNG")
    return path


def load_models(methods: Sequence[str], paths: Sequence[str | os.PathLike] = (),
                search: Sequence[str | os.PathLike] | None = None) -> list[Model]:
    """Models from explicit files, else the default file of each requested method."""
    if paths:
        return [load_model(p) for p in paths]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ModelError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return [load_model(find_model(m, search)) for m in methods]
