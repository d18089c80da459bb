"""95% confidence intervals by bootstrap resampling of patients.

Slices of one patient are not independent, so each replicate draws patients with
replacement (as many as there are) and keeps all slices of every patient drawn; a patient
drawn twice counts twice. The interval is the percentile interval of the replicates.
Replicates in which a figure is undefined (e.g. no COVID patient drawn) are left out of
that figure's interval, so it is conditional on the figure existing; "n_valid" (from
:func:`bootstrap_ci`) says how many remained. With fewer than two patients there is no
interval (None).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ._inputs import check_inputs, group_codes, resolve_positive, to_python
from .calibration import DEFAULT_BINS
from .classification import FigureEvaluator, assemble
from .operating import DEFAULT_TARGETS

_CELLS_PER_CHUNK = 2_000_000  # replicates x patients of weights held at once


def patient_draws(n_groups: int, n_boot: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first replicate, counts) blocks; counts[r, p] = times patient p is drawn in r.

    Replicate r depends only on ``seed`` and r, so every user of the same seed sees the
    same resamples (and :func:`bootstrap_ci` agrees with :func:`metrics_with_ci`).
    """
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    rng = np.random.default_rng(seed)
    rows = max(1, min(n_boot, _CELLS_PER_CHUNK // max(n_groups, 1)))
    for start in range(0, n_boot, rows):
        block = np.empty((min(rows, n_boot - start), n_groups))
        for r in range(block.shape[0]):
            block[r] = np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups)
        yield start, block


def interval(replicates: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    """Percentile interval of the finite replicates; (None, None) when there are none."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(metric_fn: Callable[..., Any], y_true, y_pred=None, y_prob=None, groups=None,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Point estimate and patient-bootstrap interval of any scalar figure.

    ``metric_fn(y_true, y_pred, y_prob)`` gets the resampled arrays (``None`` stays None) and
    returns a number, or None/NaN when undefined. ``groups`` gives each row's patient;
    without it rows are resampled independently. This calls ``metric_fn`` once per
    replicate; :func:`metrics_with_ci` computes the standard figures much faster.
    """
    y_true = np.asarray(y_true)
    arrays = [y_true, *(None if a is None else np.asarray(a) for a in (y_pred, y_prob))]
    for a in arrays[1:]:
        if a is not None and len(a) != y_true.size:
            raise ValueError("y_true, y_pred and y_prob differ in length")
    codes, n_groups = group_codes(groups, y_true.size)

    def value(rows=None):
        picked = [a if a is None or rows is None else a[rows] for a in arrays]
        v = to_python(metric_fn(*picked))
        return np.nan if v is None else v

    replicates = np.empty(n_boot)
    rows_of = np.arange(y_true.size)
    for start, counts in patient_draws(n_groups, n_boot, seed):
        for r, weight in enumerate(counts):
            replicates[start + r] = value(np.repeat(rows_of, weight[codes].astype(np.int64)))
    low, high = interval(replicates, alpha) if n_groups > 1 else (None, None)
    return {"value": to_python(value()), "ci_low": low, "ci_high": high,
            "n_patients": n_groups, "n_slices": int(y_true.size), "n_boot": n_boot,
            "n_valid": int(np.isfinite(replicates).sum())}


def metrics_with_ci(y_true, y_pred=None, y_prob=None, groups=None, *, class_names: Sequence[str],
                    positive_class: str | None = "auto", n_boot: int = 1000, seed: int = 0,
                    alpha: float = 0.05, n_bins: int = DEFAULT_BINS,
                    target_sensitivities: Sequence[float] = DEFAULT_TARGETS,
                    curves: bool = True) -> dict[str, Any]:
    """:func:`classification_metrics` with every figure as {"value", "ci_low", "ci_high"}.

    Adds "n_patients" (distinct ``groups``; each row is its own patient without them) and
    "bootstrap" (settings). Counts (support, confusion matrices), curves and the
    operating-point table stay plain numbers.
    """
    y_true, y_pred, y_prob = check_inputs(y_true, y_pred, y_prob, class_names)
    positive = resolve_positive(class_names, positive_class)
    codes, n_groups = group_codes(groups, y_true.size)
    evaluator = FigureEvaluator(y_true, y_pred, y_prob, codes, n_groups, class_names, positive,
                                n_bins)
    point = evaluator.evaluate(np.ones((1, n_groups)))
    replicates = {path: np.empty(n_boot) for path in point}
    for start, counts in patient_draws(n_groups, n_boot, seed):
        for path, values in evaluator.evaluate(counts).items():
            replicates[path][start:start + counts.shape[0]] = values
    figures = {}
    for path, value in point.items():
        low, high = interval(replicates[path], alpha) if n_groups > 1 else (None, None)
        value = to_python(value[0])
        figures[path] = {"value": value, "ci_low": None if value is None else low,
                         "ci_high": None if value is None else high}
    result = assemble(figures, y_true, y_pred, y_prob, class_names, positive, n_bins,
                      target_sensitivities, curves)
    head = {k: result.pop(k) for k in ("class_names", "positive_class", "n_slices")}
    return {**head, "n_patients": n_groups,
            "bootstrap": {"n_boot": n_boot, "seed": seed, "alpha": alpha, "method": "percentile",
                          "resampled": "patients" if groups is not None else "rows"},
            **result}
