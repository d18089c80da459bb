"""One predict() and one predict_to_folder() for both methods, used by the CLI, the web app,
the demo and experiments (models are found and loaded by :mod:`covidct.models`)."""
from __future__ import annotations

import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from .atomic import atomic_path, make_dir, private_files, write_json
from .checks import check_scan
from .constants import DISCLAIMER
from .errors import CovidctError, ScanError
from .lungs import lung_picture, lung_report, scan_lungs
from .models import Model
from .prediction import Prediction
from .scan import Scan
from .scanio import load_scan

log = logging.getLogger(__name__)

class Predictions(list):
    """The predictions of the models that could run, and why the others could not."""

    def __init__(self, items=(), refused: dict[str, str] | None = None):
        super().__init__(items)
        self.refused: dict[str, str] = dict(refused or {})


def read_checked(scan: Scan | str | os.PathLike) -> Scan:
    """A scan (read from a path if needed) that passed :func:`covidct.checks.check_scan`."""
    if not isinstance(scan, Scan):
        scan = load_scan(scan)
    check_scan(scan)
    return scan


def predict(scan: Scan | str | os.PathLike, models: Sequence[Model]) -> Predictions:
    """Run every model on one scan (a Scan or a path load_scan understands).

    The scan is checked for plausibility before any model sees it (``ScanError`` if it
    fails). A model that refuses the scan (too little lung for CovidCTNet, ...) is listed in
    ``.refused`` with its reason while the others run; when none can run, the first
    refusal is raised. Models that :func:`covidct.models.load_models` loaded ``concurrent``
    predict at the same time, each in its own thread (same results, in the same order).
    """
    scan = read_checked(scan)  # before the threads: they share its lung mask
    results = Predictions()
    first: ScanError | None = None
    outcomes = run_each(models, lambda model: _timed_predict(model, scan), ScanError,
                        getattr(models, "concurrent", False))
    for model, outcome in outcomes:
        if isinstance(outcome, ScanError):
            if len(models) == 1:
                raise outcome
            first = first or outcome
            results.refused[model.method] = outcome.message
            log.debug("%s: not run: %s", model.method, outcome.message)
            continue
        results.append(outcome)
    if not results and first is not None:
        raise ScanError("no method could run: " + "; ".join(
            f"{m}: {r}" for m, r in results.refused.items()), first.path)
    return results


def _timed_predict(model: Model, scan: Scan) -> Prediction:
    start = time.perf_counter()
    prediction = model.predict(scan)
    prediction.timings.setdefault("total", time.perf_counter() - start)
    return prediction


def run_each(models: Sequence[Any], call: Callable[[Any], Any], catch: type[Exception],
             concurrent: bool = False) -> list[tuple[Any, Any]]:
    """(model, ``call(model)`` or the ``catch`` exception it raised) for each model, in order;
    with ``concurrent``, each call in its own thread (networks on ONNX Runtime release the
    GIL). Any other exception is raised once every call has finished."""
    def attempt(model):
        try:
            return call(model)
        except catch as exc:
            return exc

    if not concurrent or len(models) < 2:
        return [(model, attempt(model)) for model in models]
    with ThreadPoolExecutor(max_workers=len(models), thread_name_prefix="covidct-model") as pool:
        futures = [pool.submit(attempt, model) for model in models]
    return [(model, future.result()) for model, future in zip(models, futures)]


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Make ``out_dir`` (0700 when new) and prove it writable, before any work is done."""
    out_dir = Path(out_dir)
    try:
        with private_files():
            make_dir(out_dir)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise CovidctError(f"output folder is not writable ({exc.strerror or exc})",
                           out_dir) from None
    return out_dir


def predict_to_folder(scan_path: Scan | str | os.PathLike, models: Sequence[Model],
                      out_dir: str | os.PathLike, pictures: bool = True) -> Predictions:
    """Predict and write ``<method>.json``/CSV (+ pictures) per model, then ``summary.json``.

    Everything written is derived patient data: files 0600, new folders 0700.
    """
    scan = read_checked(scan_path)
    out_dir = check_writable(out_dir)
    if pictures:  # what only the pictures need is built while the models predict
        for model in models:
            model.prepare_pictures()
    predictions = predict(scan, models)
    outputs = {}
    with private_files():
        for model, prediction in _pairs(models, predictions):
            files = prediction.save(out_dir, stem=prediction.method)
            if pictures:
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
            "warnings": list(scan.metadata.get("warnings", []) or []),
            "results": {p.method: {"label": p.label,
                                   "probabilities": p.to_dict()["probabilities"]}
                        for p in predictions},
            "not_run": predictions.refused,
            "files": {m: (_relative(f, out_dir) if not isinstance(f, dict) else
                          {k: _relative(v, out_dir) for k, v in f.items()})
                      for m, f in outputs.items()},
        })
    return predictions


def _pairs(models: Sequence[Model], predictions: Sequence[Prediction]):
    by_method = {p.method: p for p in predictions}
    return [(m, by_method[m.method]) for m in models if m.method in by_method]


def _relative(value, out_dir: Path):
    """Output files by their names inside --out (the folder's own path may identify)."""
    if isinstance(value, (list, tuple)):
        return [_relative(v, out_dir) for v in value]
    try:
        return str(Path(value).relative_to(out_dir))
    except ValueError:
        return Path(value).name


def write_lung_picture(scan: Scan, out_dir: Path) -> Path:
    """``lungs.png``: a few lung slices with the lung mask outlined (right cyan, left yellow)."""
    from PIL import Image

    path = Path(out_dir) / "lungs.png"
    with atomic_path(path) as tmp:
        Image.fromarray(lung_picture(scan, scan_lungs(scan))).save(tmp, format="PNG")
    return path
