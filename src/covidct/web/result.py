"""A finished job's result JSON: each method's prediction, the patient-level call, per-slice
scores and the de-identified scan summary, in words that never name the user's files."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import DISCLAIMER, SYNTHETIC_NOTICE
from ..errors import CovidctError
from .uploads import MEMBER_PREFIX, Upload

_MEMBER = re.compile(re.escape(MEMBER_PREFIX) + r"0*(\d+)[\w.]*")


def public_message(exc: CovidctError, upload: Upload) -> str:
    """The error in neutral terms: no work folder path, zip members by their position."""
    where = ""
    if exc.path:
        path = Path(exc.path)
        inside = path.is_relative_to(upload.folder)
        where = ("the upload" if inside and path in (upload.folder, upload.scan_path,
                                                      upload.scan_path.parent) else path.name)
    return neutral_text(f"{where}: {exc.message}" if where else exc.message, upload)


def neutral_text(text: str, upload: Upload) -> str:
    """``text`` with the upload's private folder gone and zip members named by position."""
    text = text.replace(str(upload.folder) + "/", "").replace(str(upload.folder), "the upload")
    return _MEMBER.sub(lambda m: f"file {int(m.group(1))} of the zip (in name order)", text)


#: Each method's classes in the common order Normal / pneumonia / COVID-19.
COMMON_CLASSES = ("Normal", "Other pneumonia", "COVID-19")


def patient_call(predictions: dict[str, Any]) -> dict[str, Any]:
    """The patient-level call: each method's label, their agreement, the mean COVID-19 probability.

    The two methods' three classes correspond (Normal/Control, CP/CAP, NCP/COVID-19), so the
    call names the common class when the methods agree; binary models contribute only their
    COVID-19 probability.
    """
    labels, covid = {}, []
    for method, p in predictions.items():
        probs = np.asarray(p.probabilities)
        covid.append(float(probs[-1]))  # the COVID-19 class is last in every class list
        labels[method] = (COMMON_CLASSES[int(np.argmax(probs))] if len(probs) == 3
                          else ("COVID-19" if probs[-1] >= 0.5 else "not COVID-19"))
    distinct = set(labels.values())
    agree = len(distinct) == 1
    label = distinct.pop() if agree else "methods disagree"
    return {"label": label, "agree": agree, "by_method": labels,
            "covid19_probability": float(np.mean(covid)),
            "rule": "the methods' common label when they agree; COVID-19 probability averaged"}


def slice_scores(predictions: dict[str, Any], models: Any) -> dict[str, list[float | None]]:
    """Per scan slice, what drove each method's call (None where a method did not look):
    :meth:`covidct.models.Model.slice_scores` (bit: the slice's COVID-19 probability;
    covidctnet: the infection map's mean over the slice on the shared colour scale)."""
    out = {}
    for method, prediction in predictions.items():
        scores = models.get(method).slice_scores(prediction)
        if scores is not None:
            out[method] = scores
    return out


def display_of(methods: Any, models: Any) -> dict[str, dict[str, str]]:
    """Each method's :attr:`covidct.models.Model.display`, which the page draws from."""
    return {m: {**models.get(m).display, "overlay": models.get(m).overlay}
            for m in methods if models.get(m) is not None}


def build_result(job_id: str, scan, predictions: dict[str, Any], errors: dict[str, str],
                 timings: dict[str, float], upload: Upload, show_phi: bool,
                 models: Any) -> dict[str, Any]:
    methods = {m: p.to_dict() for m, p in predictions.items()}
    synthetic = scan.synthetic or any(p.synthetic for p in predictions.values())
    result = {
        "id": job_id,
        "disclaimer": DISCLAIMER,
        "synthetic": synthetic,
        "scan": {**scan.deidentified([neutral_text(str(w), upload)
                                      for w in scan.metadata.get("warnings") or []]),
                 "upload_kind": upload.kind, "n_files": upload.n_files},
        "call": patient_call(predictions),
        "methods": methods,
        "errors": errors,
        "slice_scores": slice_scores(predictions, models),
        "display": display_of(predictions, models),
        "models": {m: p.model for m, p in predictions.items()},
        "timings_s": timings,
    }
    if synthetic:
        result["synthetic_notice"] = SYNTHETIC_NOTICE
    if show_phi and scan.phi:
        result["phi"] = {k: str(v) for k, v in scan.phi.items()}
    return result
