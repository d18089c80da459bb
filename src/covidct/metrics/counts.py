"""Confusion matrices and every figure that follows from them.

The functions work on a stack of confusion matrices (shape ``(..., K, K)``, rows = truth,
columns = call) so that one code path gives both the point estimate and all bootstrap
replicates at once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._inputs import finite_mean, safe_div

#: Per-class figures, in the order tables show them. PPV is precision, sensitivity recall.
RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class (as scikit-learn's)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred differ in length")
    for arr in (y_true, y_pred):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise ValueError(f"class index out of range 0..{n_classes - 1}")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (each row sums to 1); a class with no cases is a NaN row."""
    cm = np.asarray(cm, dtype=np.float64)
    return safe_div(cm, cm.sum(axis=-1, keepdims=True))


def normalised_confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Row-normalised confusion matrix: entry (i, j) = share of class i called j."""
    return normalise_rows(confusion_matrix(y_true, y_pred, n_classes))


def rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and F1 from counts (NaN where undefined).

    F1 = 2TP / (2TP + FP + FN), which equals the harmonic mean of PPV and sensitivity
    where both exist and is 0 (not undefined) when a present class is never called.
    """
    return {
        "sensitivity": safe_div(tp, tp + fn),
        "specificity": safe_div(tn, tn + fp),
        "ppv": safe_div(tp, tp + fp),
        "npv": safe_div(tn, tn + fn),
        "f1": safe_div(2 * tp, 2 * tp + fp + fn),
    }


def count_figures(cm: np.ndarray, class_names: Sequence[str],
                  positive: int | None) -> dict[tuple, np.ndarray]:
    """All confusion-count figures of a stack of matrices, keyed by their path in the result.

    Macro = mean over classes where the figure is defined; micro = the figure of the summed
    one-vs-rest counts (micro sensitivity = micro PPV = micro F1 = accuracy for one label
    per case). The binary view is the positive class's one-vs-rest figures plus the
    two-class accuracy (TP + TN) / n.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    n = cm.sum(axis=(-2, -1))
    fn = cm.sum(axis=-1) - tp
    fp = cm.sum(axis=-2) - tp
    tn = n[..., None] - tp - fn - fp
    per_class = rates(tp, fp, fn, tn)
    micro = rates(tp.sum(-1), fp.sum(-1), fn.sum(-1), tn.sum(-1))
    out: dict[tuple, np.ndarray] = {("accuracy",): safe_div(tp.sum(-1), n)}
    for name, values in per_class.items():
        for k, cls in enumerate(class_names):
            out[("per_class", cls, name)] = values[..., k]
        out[("macro", name)] = finite_mean(values, axis=-1)
        out[("micro", name)] = micro[name]
    if positive is not None:
        for name, values in per_class.items():
            out[("binary", name)] = values[..., positive]
        out[("binary", "accuracy")] = safe_div(tp[..., positive] + tn[..., positive], n)
    return out
