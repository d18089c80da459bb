"""Calibration: reliability-diagram data and expected calibration error (ECE).

Bins are equal-width on [0, 1] (default 15, as Guo et al. 2017), each bin (low, high],
with 0 in the first bin. Two views:

- top-label (``positive=None``): confidence = the highest class probability, outcome =
  whether that arg-max class is the true class;
- one class (``positive=k``, e.g. the COVID probability): confidence = p(class k),
  outcome = whether the case is truly class k.

ECE = sum over bins of (n_bin / n) * |outcome rate - mean confidence| = sum |outcomes -
confidences| per bin / n. Per-patient bin sums make it cheap to bootstrap.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._inputs import encode_labels, safe_div, to_python

DEFAULT_BINS = 15


def bin_edges(n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    return np.linspace(0.0, 1.0, n_bins + 1)


def bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each value for bins (low, high]; 0 falls in the first bin."""
    return np.searchsorted(bin_edges(n_bins)[1:-1], values, side="left")


def calibration_inputs(y_true, y_prob, positive: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome) of the chosen view."""
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_prob.ndim != 2:
        raise ValueError("y_prob must be (cases, classes)")
    y_true = encode_labels(y_true, [str(k) for k in range(y_prob.shape[1])])
    if y_true.size != y_prob.shape[0]:
        raise ValueError("y_true and y_prob differ in length")
    if positive is None:
        return y_prob.max(axis=1), (np.argmax(y_prob, axis=1) == y_true).astype(float)
    return y_prob[:, positive], (y_true == positive).astype(float)


class CalibrationTable:
    """Per-patient, per-bin counts and sums of confidence and outcome."""

    def __init__(self, confidence, outcome, codes, n_groups: int, n_bins: int = DEFAULT_BINS):
        self.n_bins = n_bins
        cell = np.asarray(codes) * n_bins + bin_index(confidence, n_bins)
        size = n_groups * n_bins
        self._count = np.bincount(cell, minlength=size).reshape(n_groups, n_bins).astype(float)
        self._conf = np.bincount(cell, weights=confidence, minlength=size).reshape(n_groups, n_bins)
        self._hits = np.bincount(cell, weights=outcome, minlength=size).reshape(n_groups, n_bins)

    def sums(self, weights: np.ndarray):
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        return weights @ self._count, weights @ self._conf, weights @ self._hits

    def evaluate(self, weights: np.ndarray) -> np.ndarray:
        """ECE for each row of ``weights`` (replicates x patients)."""
        count, conf, hits = self.sums(weights)
        return safe_div(np.abs(hits - conf).sum(axis=1), count.sum(axis=1))


def reliability_diagram(y_true, y_prob, n_bins: int = DEFAULT_BINS,
                        positive: int | None = None) -> dict[str, Any]:
    """Per-bin count, mean confidence and accuracy (observed rate), plus the ECE.

    Empty bins have count 0 and None for confidence and accuracy.
    """
    confidence, outcome = calibration_inputs(y_true, y_prob, positive)
    table = CalibrationTable(confidence, outcome, np.zeros(confidence.size, dtype=np.int64), 1,
                             n_bins)
    count, conf, hits = (s[0] for s in table.sums(np.ones((1, 1))))
    edges = bin_edges(n_bins)
    bins = [{
        "low": float(edges[b]), "high": float(edges[b + 1]), "count": int(count[b]),
        "confidence": to_python(safe_div(conf[b], count[b])),
        "accuracy": to_python(safe_div(hits[b], count[b])),
    } for b in range(n_bins)]
    return {
        "view": "top-label" if positive is None else f"class {positive}",
        "n_bins": n_bins,
        "bins": bins,
        "ece": to_python(table.evaluate(np.ones((1, 1)))[0]),
    }


def expected_calibration_error(y_true, y_prob, n_bins: int = DEFAULT_BINS,
                               positive: int | None = None) -> float:
    """ECE with equal-width bins; top-label unless ``positive`` names a class index."""
    return reliability_diagram(y_true, y_prob, n_bins, positive)["ece"]
