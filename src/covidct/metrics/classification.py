"""Classification figures of one set of calls: :func:`classification_metrics`.

Result layout (every figure a float, or None where undefined)::

    class_names, positive_class, n_slices
    accuracy, ece                          # ece: top-label, None without probabilities
    confusion_matrix, confusion_matrix_normalised   # rows = truth; an empty row is all None
    per_class[name]: sensitivity, specificity, ppv, npv, f1, auc, support
    macro / micro: sensitivity, specificity, ppv, npv, f1, auc
    binary (COVID vs rest): positive_class, accuracy, sensitivity, specificity, ppv, npv,
                            f1, auc, ece, operating_points
    roc[name or "micro"]: fpr, tpr, thresholds       # only with probabilities
    calibration: top_label, binary                   # reliability-diagram data

PPV is precision and sensitivity is recall. AUCs are one-vs-rest; a class's AUC is None
when the class, or every other class, is absent. "n_slices" counts the scored items
(scans, for a per-scan method).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._inputs import check_inputs, finite_mean, resolve_positive, to_python
from .calibration import DEFAULT_BINS, CalibrationTable, calibration_inputs, reliability_diagram
from .counts import RATES, confusion_matrix, count_figures, normalise_rows
from .operating import DEFAULT_TARGETS, operating_points
from .ranking import AucTable, roc_points

FIGURES = (*RATES, "auc")


class FigureEvaluator:
    """Every scalar figure as a function of per-patient weights.

    Weights (replicates x patients) say how often each patient is counted; ones give the
    point estimate, bootstrap counts give the replicates. Holding per-patient sufficient
    statistics (confusion counts, score histograms, calibration-bin sums) keeps a
    thousand replicates of tens of thousands of slices at a few seconds.
    """

    def __init__(self, y_true, y_pred, y_prob, codes, n_groups: int,
                 class_names: Sequence[str], positive: int | None, n_bins: int = DEFAULT_BINS):
        self.class_names = tuple(class_names)
        self.positive = positive
        k = len(class_names)
        cells = codes * k * k + y_true * k + y_pred
        self._cm = np.bincount(cells, minlength=n_groups * k * k).reshape(n_groups, k * k)
        self._cm = self._cm.astype(np.float64)
        self._auc: dict[tuple, AucTable] = {}
        self._ece: dict[tuple, CalibrationTable] = {}
        if y_prob is None:
            return
        for i, cls in enumerate(class_names):
            self._auc[("per_class", cls, "auc")] = AucTable(y_prob[:, i], y_true == i, codes,
                                                            n_groups)
        onehot = y_true[:, None] == np.arange(k)
        self._auc[("micro", "auc")] = AucTable(y_prob.ravel(), onehot.ravel(),
                                               np.repeat(codes, k), n_groups)
        views = {("ece",): None, ("binary", "ece"): positive}
        for path, view in views.items():
            if path[0] == "binary" and positive is None:
                continue
            conf, outcome = calibration_inputs(y_true, y_prob, view)
            self._ece[path] = CalibrationTable(conf, outcome, codes, n_groups, n_bins)

    def evaluate(self, weights: np.ndarray) -> dict[tuple, np.ndarray]:
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        k = len(self.class_names)
        out = count_figures((weights @ self._cm).reshape(-1, k, k), self.class_names,
                            self.positive)
        missing = np.full(weights.shape[0], np.nan)
        for path in [("per_class", c, "auc") for c in self.class_names] + [("micro", "auc")]:
            out[path] = self._auc[path].evaluate(weights) if path in self._auc else missing
        per_class_auc = np.stack([out[("per_class", c, "auc")] for c in self.class_names])
        out[("macro", "auc")] = finite_mean(per_class_auc, axis=0)
        out[("ece",)] = self._ece[("ece",)].evaluate(weights) if self._ece else missing
        if self.positive is not None:
            out[("binary", "auc")] = out[("per_class", self.class_names[self.positive], "auc")]
            table = self._ece.get(("binary", "ece"))
            out[("binary", "ece")] = table.evaluate(weights) if table else missing
        return out


def point_figures(y_true, y_pred, y_prob, class_names, positive, n_bins) -> dict[tuple, Any]:
    codes = np.zeros(y_true.size, dtype=np.int64)
    evaluator = FigureEvaluator(y_true, y_pred, y_prob, codes, 1, class_names, positive, n_bins)
    return {path: to_python(v[0]) for path, v in evaluator.evaluate(np.ones((1, 1))).items()}


def assemble(figures: dict[tuple, Any], y_true, y_pred, y_prob, class_names: Sequence[str],
             positive: int | None, n_bins: int, targets: Sequence[float],
             curves: bool) -> dict[str, Any]:
    """The result dictionary, with ``figures[path]`` at each scalar figure's place."""
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    result: dict[str, Any] = {
        "class_names": list(class_names),
        "positive_class": None if positive is None else class_names[positive],
        "n_slices": int(y_true.size),
        "accuracy": figures[("accuracy",)],
        "ece": figures[("ece",)],
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalised": [[to_python(v) for v in row] for row in normalise_rows(cm)],
        "per_class": {
            cls: {**{f: figures[("per_class", cls, f)] for f in FIGURES},
                  "support": int(cm[i].sum())}
            for i, cls in enumerate(class_names)},
        "macro": {f: figures[("macro", f)] for f in FIGURES},
        "micro": {f: figures[("micro", f)] for f in FIGURES},
    }
    if positive is not None:
        result["binary"] = {
            "positive_class": class_names[positive],
            **{f: figures[("binary", f)] for f in ("accuracy", *FIGURES, "ece")},
            "operating_points": None if y_prob is None else operating_points(
                y_true == positive, y_prob[:, positive], targets),
        }
    if y_prob is not None and curves:
        result["roc"] = {cls: roc_points(y_true == i, y_prob[:, i])
                         for i, cls in enumerate(class_names)}
        onehot = y_true[:, None] == np.arange(k)
        result["roc"]["micro"] = roc_points(onehot.ravel(), y_prob.ravel())
        result["calibration"] = {"top_label": reliability_diagram(y_true, y_prob, n_bins)}
        if positive is not None:
            result["calibration"]["binary"] = reliability_diagram(y_true, y_prob, n_bins, positive)
    return result


def classification_metrics(y_true, y_pred=None, y_prob=None, *, class_names: Sequence[str],
                           positive_class: str | None = "auto", n_bins: int = DEFAULT_BINS,
                           target_sensitivities: Sequence[float] = DEFAULT_TARGETS,
                           curves: bool = True) -> dict[str, Any]:
    """All figures of one evaluation (see the module docstring for the layout).

    ``y_true``/``y_pred`` are class indices or names; ``y_pred`` defaults to the arg-max of
    ``y_prob`` (cases x classes). ``positive_class`` is the COVID class of the binary view:
    "auto" finds the methods' COVID class among ``class_names``, None leaves the view out.
    Without ``y_prob`` the AUCs and ECEs are None and there are no curves.
    """
    y_true, y_pred, y_prob = check_inputs(y_true, y_pred, y_prob, class_names)
    positive = resolve_positive(class_names, positive_class)
    figures = point_figures(y_true, y_pred, y_prob, class_names, positive, n_bins)
    return assemble(figures, y_true, y_pred, y_prob, class_names, positive, n_bins,
                    target_sensitivities, curves)
