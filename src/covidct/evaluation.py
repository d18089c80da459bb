"""Evaluate a trained model on a labelled dataset: scores -> metrics with patient CIs -> files.

Both methods end here, so their results share one layout (``results.json``/``.csv`` from
covidct.metrics.save_results, plus ``scores.npz`` with the raw outputs for figures).
"""
from __future__ import annotations

import io
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import write_bytes, write_json
from .constants import METHOD_BIT
from .errors import DatasetError
from .lungs_eval import LUNGS_JSON, evaluate_lungs, find_truth
from .models import Model, load_model
from .prediction import Scores

SPLIT_FILE = "{split}_COVIDx_CT-2A.txt"


def score(model: Model, data: str | os.PathLike, split: str = "test") -> Scores:
    """Run ``model`` over one split of ``data`` (the layout each method reads)."""
    data = Path(data)
    if not data.exists():
        raise DatasetError("dataset folder not found", data)
    if model.method == METHOD_BIT:
        split_file = data / SPLIT_FILE.format(split=split) if data.is_dir() else data
        image_dir = (data if data.is_dir() else data.parent) / "images"
        if data.is_dir() and not split_file.is_file():
            raise DatasetError(f"no {split_file.name} in the dataset folder (COVIDx layout: "
                               "<split>_COVIDx_CT-2A.txt + images/)", data)
        return model.score_dataset(split_file, image_dir)
    return model.score_dataset(data, split=split)


def metrics_for(scores: Scores, n_boot: int = 1000, seed: int = 0, rule: str = "mean") -> dict[str, Any]:
    """Slice- and patient-level figures for slice scores; scan-level for scan scores."""
    from .metrics import metrics_with_ci, slice_and_patient_metrics

    if scores.level == "slice":
        return slice_and_patient_metrics(scores.y_true, scores.y_prob, scores.groups,
                                         class_names=scores.class_names, rule=rule,
                                         n_boot=n_boot, seed=seed)
    return {"scan": metrics_with_ci(scores.y_true, y_prob=scores.y_prob, groups=scores.groups,
                                    class_names=scores.class_names, n_boot=n_boot, seed=seed)}


def evaluate(model: Model | str | os.PathLike, data: str | os.PathLike, split: str = "test",
             out_dir: str | os.PathLike | None = None, n_boot: int = 1000, seed: int = 0,
             rule: str = "mean") -> dict[str, Any]:
    """Score, compute every figure with 95% patient-bootstrap CIs, and save them to ``out_dir``."""
    from .metrics import save_results

    if not hasattr(model, "predict"):
        model = load_model(model)
    scores = score(model, data, split)
    metrics = metrics_for(scores, n_boot=n_boot, seed=seed, rule=rule)
    provenance = {
        **scores.provenance,
        "method": model.method,
        "data": str(data), "split": split, "level": scores.level,
        "n_items": int(len(scores.y_true)), "n_patients": int(len(set(scores.groups.tolist()))),
        "settings": {"n_boot": n_boot, "seed": seed, "patient_rule": rule},
        "synthetic": bool(scores.provenance.get("synthetic", False)),
        "command": " ".join(sys.argv), "covidct_version": __version__,
        "python": platform.python_version(),
    }
    # Where the data has true lungs (a covidct synth cohort), the lung mask and the involvement
    # figures are scored too, on the same split.
    truth = find_truth(data)
    lungs = evaluate_lungs(truth, split=split) if truth is not None else None
    if out_dir is not None:
        out_dir = Path(out_dir)
        save_results(out_dir / "results.json", out_dir / "results.csv", metrics, provenance)
        write_bytes(out_dir / "scores.npz", _npz(scores))
        if lungs is not None:
            write_json(out_dir / LUNGS_JSON, lungs)
    return {"metrics": metrics, "provenance": provenance, "scores": scores, "lungs": lungs}


def _npz(scores: Scores) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, y_true=scores.y_true, y_prob=scores.y_prob,
                        groups=np.asarray(scores.groups, dtype=str),
                        items=np.asarray(scores.items, dtype=str),
                        class_names=np.asarray(scores.class_names, dtype=str),
                        level=np.asarray(scores.level))
    return buf.getvalue()


def load_scores(path: str | os.PathLike) -> Scores:
    with np.load(path) as data:
        return Scores(method="", class_names=tuple(data["class_names"].tolist()),
                      y_true=data["y_true"], y_prob=data["y_prob"], groups=data["groups"],
                      level=str(data["level"]), items=data["items"].tolist())
