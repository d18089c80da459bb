"""Input checks and the small numeric helpers every metrics module shares.

Undefined figures (a zero denominator: no positives, nothing called positive, one class
only for an AUC) are NaN inside the arrays and ``None`` in the dictionaries handed to
users, so they survive JSON and are never reported as 0 or 1.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..constants import COVID_CLASS


def encode_labels(labels: Any, class_names: Sequence[str]) -> np.ndarray:
    """Class indices (int array) from class indices or class names."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "USO":
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({str(v) for v in arr if v not in index})
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; known: {list(class_names)}")
        return np.array([index[v] for v in arr], dtype=np.int64)
    if arr.size and arr.dtype.kind not in "iub":
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError("labels must be class indices or class names")
    out = arr.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= len(class_names)):
        raise ValueError(f"class index out of range 0..{len(class_names) - 1}")
    return out


def check_inputs(y_true, y_pred, y_prob, class_names: Sequence[str]):
    """Validated (y_true, y_pred, y_prob); y_pred defaults to the arg-max of y_prob."""
    n_classes = len(class_names)
    if n_classes < 2:
        raise ValueError("need at least two classes")
    y_true = encode_labels(y_true, class_names)
    if y_true.size == 0:
        raise ValueError("no samples to evaluate")
    if y_prob is not None:
        y_prob = np.asarray(y_prob, dtype=np.float64)
        if y_prob.shape != (y_true.size, n_classes):
            raise ValueError(f"y_prob must have shape ({y_true.size}, {n_classes}), "
                             f"got {y_prob.shape}")
        if not np.all(np.isfinite(y_prob)) or y_prob.min() < 0 or y_prob.max() > 1:
            raise ValueError("y_prob must hold probabilities in [0, 1]")
    if y_pred is None:
        if y_prob is None:
            raise ValueError("give y_pred, y_prob or both")
        y_pred = np.argmax(y_prob, axis=1)
    y_pred = encode_labels(y_pred, class_names)
    if y_pred.shape != y_true.shape:
        raise ValueError(f"y_pred has {y_pred.size} entries, y_true {y_true.size}")
    return y_true, y_pred, y_prob


def resolve_positive(class_names: Sequence[str], positive_class: str | None) -> int | None:
    """Index of the COVID-vs-rest positive class.

    ``"auto"`` picks whichever of the methods' COVID classes (constants.COVID_CLASS) is
    among ``class_names`` and means "no binary view" when none is; ``None`` turns it off.
    """
    if positive_class is None:
        return None
    if positive_class == "auto":
        found = [c for c in COVID_CLASS.values() if c in class_names]
        return list(class_names).index(found[0]) if found else None
    if positive_class not in class_names:
        raise ValueError(f"positive class {positive_class!r} is not one of {list(class_names)}")
    return list(class_names).index(positive_class)


def group_codes(groups, n: int) -> tuple[np.ndarray, int]:
    """Patient codes 0..G-1 per row; without groups every row is its own patient."""
    if groups is None:
        return np.arange(n), n
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have one entry per row ({n}), got shape {groups.shape}")
    _, codes = np.unique(groups.astype(str), return_inverse=True)
    return codes.ravel(), int(codes.max()) + 1


def safe_div(num, den) -> np.ndarray:
    """num / den, NaN where den == 0, without a warning."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def finite_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the defined (finite) entries along ``axis``; NaN when none is."""
    ok = np.isfinite(values)
    total = np.where(ok, values, 0.0).sum(axis=axis)
    return safe_div(total, ok.sum(axis=axis))


def to_python(value) -> Any:
    """A JSON-ready scalar: float, int or None for NaN/inf."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if np.isfinite(value) else None
