"""Evaluate a trained model on a labelled dataset: scores -> metrics with patient CIs -> files.

Both methods end here, so their results share one layout (``results.json``/``.csv`` from
covidct.metrics.save_results, plus ``scores.npz`` with the raw outputs for figures).
"""
from __future__ import annotations

import io
import os
import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import private_files, write_bytes, write_json
from .errors import DatasetError
from .labels import read_labels
from .lungs_eval import LUNGS_JSON, evaluate_lungs, find_truth
from .metrics import metrics_with_ci, save_results, slice_and_patient_metrics
from .privacy import folder_salt, pseudonym, show_paths
from .progress import inner_bar
from .models import Model, load_model
from .prediction import Scores

LOCALISATION_JSON = "localisation.json"


def score(model: Model, data: str | os.PathLike, split: str = "test") -> Scores:
    """Run ``model`` over one split of ``data`` (the layout each method reads)."""
    data = Path(data)
    if not data.exists():
        raise DatasetError("dataset folder not found", data)
    return model.score(data, split)


def metrics_for(scores: Scores, n_boot: int = 1000, seed: int = 0, rule: str = "mean") -> dict[str, Any]:
    """Slice- and patient-level figures for slice scores; scan-level for scan scores."""
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
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    scores = score(model, data, split)
    # Explanations are scored against the truth masks before names are hidden: the masks are
    # found by patient and file name.
    with private_files():
        localisation = localise(model, data, split, scores, out_dir)
    namer = item_namer(out_dir)
    scores.groups = np.array([namer(str(g), "patient") for g in scores.groups])
    scores.items = [namer(str(i), "item") for i in scores.items]
    metrics = metrics_for(scores, n_boot=n_boot, seed=seed, rule=rule)
    # A slice classifier scored on a synthetic cohort's labelled pictures is also scored the
    # way a hospital user runs it: one call per whole DICOM series (its own slice choice and
    # series rule), so that the two paths cannot drift apart unseen.
    truth = find_truth(data)
    series = (series_scores(model, truth, split)
              if scores.level == "slice" and truth is not None else None)
    if series is not None:
        series.groups = np.array([namer(str(g), "patient") for g in series.groups])
        metrics["series"] = metrics_for(series, n_boot=n_boot, seed=seed)["scan"]
        metrics["series"]["level"] = "series"
    provenance = {
        **scores.provenance,
        "method": model.method,
        "data": _hidden_path(data), "split": split, "level": scores.level,
        "n_items": int(len(scores.y_true)), "n_patients": int(len(set(scores.groups.tolist()))),
        "settings": {"n_boot": n_boot, "seed": seed, "patient_rule": rule,
                     **({"series_rule": series.provenance["rule"]} if series is not None else {})},
        "synthetic": bool(scores.provenance.get("synthetic", False)),
        "command": _command(), "covidct_version": __version__,
        "names": "as given" if show_paths() else "patients and files by salted digest",
        "python": platform.python_version(),
    }
    if "images" in provenance:
        provenance["images"] = _hidden_path(provenance["images"])
    # Where the data has true lungs (a covidct synth cohort), the lung mask and the involvement
    # figures are scored too, on the same split.
    lungs = evaluate_lungs(truth, split=split) if truth is not None else None
    for entry in (lungs or {}).get("per_scan", []):  # the same names as the scores'
        entry["patient_id"] = namer(str(entry["patient_id"]), "patient")
    if out_dir is not None:
        out_dir = Path(out_dir)
        with private_files():  # per-patient scores: 0600 files in a 0700 folder
            if localisation is not None:
                write_json(out_dir / LOCALISATION_JSON, {**localisation, "synthetic": True})
            save_results(out_dir / "results.json", out_dir / "results.csv", metrics, provenance)
            write_bytes(out_dir / "scores.npz", _npz(scores))
            if lungs is not None:
                write_json(out_dir / LUNGS_JSON, lungs)
    return {"metrics": metrics, "provenance": provenance, "scores": scores, "lungs": lungs,
            "localisation": localisation}


def series_scores(model: Model, labels: Path, split: str) -> Scores | None:
    """One row per whole DICOM series of ``split`` named in a synthetic cohort's ``labels``
    (:func:`covidct.lungs_eval.find_truth`), each called by ``model.predict``; None when the
    split names none."""
    from .scanio import load_scan

    rows = [r for r in read_labels(labels) if r.get("split") == split and r.get("dicom")
            and r.get("label") in model.class_names]
    if not rows:
        return None
    probabilities, rules = [], Counter()
    for row in inner_bar(rows, f"{split} series", "series", tty_only=True):
        prediction = model.predict(load_scan(labels.parent / row["dicom"]))
        probabilities.append(prediction.probabilities)
        rules[prediction.aggregation] += 1
    names = list(model.class_names)
    return Scores(method=model.method, class_names=tuple(names), level="scan",
                  y_true=np.array([names.index(r["label"]) for r in rows]),
                  y_prob=np.stack(probabilities), groups=np.array([r["patient_id"] for r in rows]),
                  provenance={"rule": rules.most_common(1)[0][0]})


def localise(model: Model, data: str | os.PathLike, split: str, scores: Scores,
             out_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Explanations scored against a synthetic cohort's lesion masks (None without them)."""
    return model.localise(data, split, scores, out_dir)


def item_namer(out_dir: str | os.PathLike | None):
    """How evaluation outputs name patients and files: by a digest keyed with the output
    folder's salt (patient ids and file names often are identifiers), or as they are with
    --show-paths. ``covidct explain`` uses the same namer to find the scored files again."""
    if show_paths():
        return lambda name, prefix="id": name
    salt = folder_salt(out_dir) if out_dir is not None else None
    return lambda name, prefix="id": pseudonym(name, salt, prefix)


def _hidden_path(value: Any) -> str:
    return str(value) if show_paths() else "(path hidden; --show-paths shows it)"


def _command() -> str:
    """The command line, with paths left out unless --show-paths (they may identify)."""
    if show_paths():
        return " ".join(sys.argv)
    return " ".join("<path>" if os.path.exists(a) or os.sep in a else a for a in sys.argv)


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
