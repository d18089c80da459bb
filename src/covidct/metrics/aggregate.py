"""From slice scores to patient scores, and slice- and patient-level figures side by side.

Rules (``rule=``):

- ``"mean"``: the mean of the patient's slice probability vectors.
- ``"topk"``: the mean probability vector of the ``k`` slices least likely to be the
  reference class (index ``reference``, default 0 = Normal/Control), i.e. the most
  abnormal-looking slices. Disease often shows on a minority of slices, which a plain
  mean dilutes. Patients with fewer than ``k`` slices use all of them.
- ``"vote"``: the share of the patient's slices called each class (arg-max).

The patient's call is the arg-max of its vector; a tie goes to the lower class index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import DatasetError
from ._inputs import encode_labels
from .bootstrap import metrics_with_ci

RULES = ("mean", "topk", "vote")


@dataclass
class PatientScores:
    patients: np.ndarray           # (P,) patient ids, in order of first appearance
    probs: np.ndarray              # (P, C) patient-level vectors
    pred: np.ndarray               # (P,) arg-max call
    y_true: np.ndarray | None      # (P,) the patients' labels, when slice labels were given
    n_slices: np.ndarray           # (P,) slices per patient
    rule: str


def _patient_codes(groups) -> tuple[np.ndarray, np.ndarray]:
    groups = np.asarray(groups).astype(str)
    _, first, codes = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first)                  # codes follow first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[codes.ravel()], groups[np.sort(first)]


def _mean_by(codes, values, n_groups) -> np.ndarray:
    counts = np.bincount(codes, minlength=n_groups)
    return np.stack([np.bincount(codes, weights=values[:, c], minlength=n_groups) / counts
                     for c in range(values.shape[1])], axis=1)


def aggregate_by_patient(groups, probs, rule: str = "mean", *, y_true=None, k: int = 5,
                         reference: int = 0,
                         class_names: Sequence[str] | None = None) -> PatientScores:
    """Patient-level probabilities and calls from slice probabilities (rules above).

    ``y_true`` (slice labels, indices or names with ``class_names``) must agree within a
    patient; the patient's label is that shared label. A disagreement raises DatasetError.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError("probs must be a non-empty (slices, classes) array")
    if len(groups) != probs.shape[0]:
        raise ValueError("groups and probs differ in length")
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
    codes, patients = _patient_codes(groups)
    n_groups = patients.size
    if rule == "mean":
        agg = _mean_by(codes, probs, n_groups)
    elif rule == "vote":
        agg = _mean_by(codes, np.eye(probs.shape[1])[np.argmax(probs, axis=1)], n_groups)
    else:
        if k < 1:
            raise ValueError("k must be at least 1")
        order = np.lexsort((probs[:, reference], codes))        # by patient, most abnormal first
        starts = np.searchsorted(codes[order], np.arange(n_groups))
        rank = np.arange(order.size) - starts[codes[order]]
        keep = order[rank < k]
        agg = _mean_by(codes[keep], probs[keep], n_groups)
    labels = None
    if y_true is not None:
        names = class_names if class_names is not None else [str(c) for c in range(probs.shape[1])]
        slice_labels = encode_labels(y_true, names)
        labels = np.zeros(n_groups, dtype=np.int64)
        labels[codes] = slice_labels
        if np.any(labels[codes] != slice_labels):
            raise DatasetError("slices of one patient carry different labels; patient-level "
                               "evaluation needs one label per patient")
    return PatientScores(patients=patients, probs=agg, pred=np.argmax(agg, axis=1),
                         y_true=labels, n_slices=np.bincount(codes, minlength=n_groups),
                         rule=rule)


def slice_and_patient_metrics(y_true, y_prob, groups, *, class_names: Sequence[str],
                              rule: str = "mean", k: int = 5, n_boot: int = 1000, seed: int = 0,
                              **options: Any) -> dict[str, dict]:
    """{"slice": ..., "patient": ...}: figures with patient-bootstrap CIs at both levels.

    Slice-level CIs resample patients with all their slices; patient-level figures use
    :func:`aggregate_by_patient` and resample patients. ``options`` go to metrics_with_ci.
    """
    slice_level = metrics_with_ci(y_true, None, y_prob, groups, class_names=class_names,
                                  n_boot=n_boot, seed=seed, **options)
    patients = aggregate_by_patient(groups, y_prob, rule, y_true=y_true, k=k,
                                    class_names=class_names)
    patient_level = metrics_with_ci(patients.y_true, patients.pred, patients.probs,
                                    patients.patients, class_names=class_names, n_boot=n_boot,
                                    seed=seed, **options)
    # The patient-level figures rest on the same slices; say so rather than count patients twice.
    patient_level["n_slices"] = int(patients.n_slices.sum())
    patient_level["aggregation"] = {"rule": rule, **({"k": k} if rule == "topk" else {})}
    slice_level["level"], patient_level["level"] = "slice", "patient"
    return {"slice": slice_level, "patient": patient_level}
