"""Operating points of a binary score (e.g. the COVID probability).

A case is called positive when ``score >= threshold``. For a target sensitivity the chosen
threshold is the highest observed score at which sensitivity reaches the target, i.e. the
threshold that reaches it with the best specificity. Cases tied at the threshold are all
called positive, so with ties the achieved sensitivity can exceed the target; the table
reports the achieved figures, never the target.

A threshold chosen on a test set is optimistic for that set: choose it on validation data
and report :func:`figures_at_threshold` on the test data.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._inputs import to_python
from .counts import rates

DEFAULT_TARGETS = (0.90, 0.95, 0.99)


def _binary_inputs(positive, scores) -> tuple[np.ndarray, np.ndarray]:
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if positive.shape != scores.shape or positive.ndim != 1:
        raise ValueError("positive and scores must be 1-D and of equal length")
    return positive, scores


def figures_at_threshold(positive, scores, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV and counts when ``score >= threshold`` is positive."""
    positive, scores = _binary_inputs(positive, scores)
    called = scores >= threshold
    tp = int(np.sum(called & positive))
    fp = int(np.sum(called & ~positive))
    fn = int(np.sum(~called & positive))
    tn = int(np.sum(~called & ~positive))
    figures = {k: to_python(v) for k, v in rates(tp, fp, fn, tn).items() if k != "f1"}
    return {"threshold": to_python(threshold), **figures, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def operating_points(positive, scores,
                     target_sensitivities: Sequence[float] = DEFAULT_TARGETS) -> list[dict]:
    """For each target sensitivity: the threshold and the specificity, PPV, NPV it gives.

    Without positive cases no threshold is defined and every figure is None.
    """
    positive, scores = _binary_inputs(positive, scores)
    n_pos = int(positive.sum())
    thresholds = np.unique(scores)[::-1]                 # highest first
    # Positives at or above each candidate threshold.
    tp_at = np.cumsum(np.bincount(np.searchsorted(-thresholds, -scores[positive]),
                                  minlength=thresholds.size))
    table = []
    for target in target_sensitivities:
        if not 0 < target <= 1:
            raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
        if n_pos == 0:
            table.append({"target_sensitivity": float(target), "threshold": None,
                          "sensitivity": None, "specificity": None, "ppv": None, "npv": None})
            continue
        needed = np.ceil(target * n_pos - 1e-9)
        j = int(np.argmax(tp_at >= needed))
        row = figures_at_threshold(positive, scores, float(thresholds[j]))
        table.append({"target_sensitivity": float(target), **row})
    return table
