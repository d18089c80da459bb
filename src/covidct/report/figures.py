"""The report's figures, drawn from saved results (``results.json``, ``scores.npz``).

Each function takes ``{level name: result}`` (e.g. slice and patient level, or scan level)
and returns SVG bytes, one panel per level side by side, so levels compare at a glance.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..explain.plotting import class_colour, figure_bytes, new_figure, tidy_axes
from ..metrics import roc_points
from ..metrics.tables import figure_parts

LEVEL_TITLES = {"slice": "Slice level", "patient": "Patient level", "scan": "Scan (patient) level",
                "series": "Whole series (as predict)", "model": "Model"}


def level_title(level: str) -> str:
    return LEVEL_TITLES.get(level, level.replace("_", " ").capitalize())


def _svg(fig) -> bytes:
    return figure_bytes(fig, "svg")


def confusion_matrices(results: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Row-normalised confusion matrices with counts; rows true class, columns predicted."""
    n = len(results)
    fig = new_figure(3.6 * n + 0.4, 3.3)
    axes = np.atleast_1d(fig.subplots(1, n))
    image = None
    for ax, (level, result) in zip(axes, results.items()):
        names = list(result["class_names"])
        counts = np.asarray(result.get("confusion_matrix"), dtype=float)
        share = np.asarray(result.get("confusion_matrix_normalised"), dtype=float)
        if share.shape != counts.shape:
            totals = counts.sum(axis=1, keepdims=True)
            share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        share = np.nan_to_num(share)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(share.shape[0]):
            for j in range(share.shape[1]):
                colour = "white" if share[i, j] > 0.55 else "#222222"
                ax.text(j, i, f"{100 * share[i, j]:.1f}%\nn = {int(counts[i, j])}", ha="center",
                        va="center", fontsize=8, color=colour)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("Predicted class", fontsize=8)
        ax.set_ylabel("True class", fontsize=8)
        ax.set_title(level_title(level), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the true class")
    return _svg(fig)


def roc_curves(results: Mapping[str, Mapping[str, Any]]) -> bytes:
    """One-vs-rest ROC curve per class (and micro-average) with AUCs and their CIs."""
    n = len(results)
    fig = new_figure(3.7 * n, 4.6)
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, (level, result) in zip(axes, results.items()):
        curves = result.get("roc") or {}
        for k, name in enumerate(result["class_names"]):
            curve = curves.get(name)
            if not curve:
                continue
            auc = figure_parts((result.get("per_class", {}).get(name) or {}).get("auc"))
            ax.plot(curve["fpr"], curve["tpr"], color=class_colour(k), linewidth=1.5,
                    label=f"{name}: AUC {_auc_text(auc)}")
        if curves.get("micro"):
            micro = figure_parts((result.get("micro") or {}).get("auc"))
            ax.plot(curves["micro"]["fpr"], curves["micro"]["tpr"], color="#555555", linewidth=1,
                    linestyle="--", label=f"micro-average: AUC {_auc_text(micro)}")
        ax.plot([0, 1], [0, 1], color="#aaaaaa", linewidth=0.8, linestyle=":")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        tidy_axes(ax)
        ax.set_xlabel("1 - specificity (false-positive rate)", fontsize=8)
        ax.set_ylabel("Sensitivity (true-positive rate)", fontsize=8)
        ax.set_title(level_title(level), fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return _svg(fig)


def _auc_text(parts) -> str:
    value, low, high = parts
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" ({low:.3f}\u2013{high:.3f})" if low is not None and high is not None else "")


def reliability_diagrams(results: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Observed frequency against mean predicted probability per bin, with the ECE.

    Two views per level: the top-label view (is the model right as often as its
    confidence says?) and the COVID-vs-rest view (is its COVID probability a frequency?).
    """
    views = [(level, view_name, diagram) for level, result in results.items()
             for view_name, diagram in (result.get("calibration") or {}).items() if diagram]
    if not views:
        raise ValueError("no calibration data")
    fig = new_figure(3.0 * len(views), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(views)))
    for ax, (level, view_name, diagram) in zip(axes, views):
        bins = [b for b in diagram.get("bins", []) if b.get("count")]
        for k, b in enumerate(bins):
            width = (b["high"] - b["low"]) * 0.9
            centre = (b["low"] + b["high"]) / 2
            # Blue: what happened; red: the gap up or down to what the model said.
            ax.bar(centre, b["accuracy"], width=width, color="#4C72B0", edgecolor="#2f4f7f",
                   linewidth=0.5, label="observed" if k == 0 else None)
            ax.bar(centre, b["confidence"] - b["accuracy"], bottom=b["accuracy"], width=width,
                   color="#D55E00", alpha=0.35, edgecolor="#D55E00", linewidth=0.5,
                   label="gap to predicted" if k == 0 else None)
            ax.text(centre, 1.01, str(b["count"]), ha="center", va="bottom", fontsize=5.5,
                    color="#555555")
        ax.plot([0, 1], [0, 1], color="#777777", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.08)
        tidy_axes(ax)
        positive = results[level].get("positive_class") or "positive class"
        what = "top label" if view_name == "top_label" else f"{positive} vs rest"
        ece = diagram.get("ece")
        ax.set_title(f"{level_title(level)}, {what}\nECE {ece:.3f} (numbers: cases per bin)"
                     if isinstance(ece, (int, float)) else f"{level_title(level)}, {what}", fontsize=8)
        ax.set_xlabel("Predicted probability", fontsize=8)
        ax.set_ylabel("Observed frequency", fontsize=8)
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(0.0, 0.94), frameon=False)
    return _svg(fig)


def roc_from_scores(y_true: np.ndarray, y_prob: np.ndarray, class_names) -> dict[str, Any]:
    """One-vs-rest ROC points recomputed from raw scores (for results saved without curves)."""
    curves = {name: roc_points(np.asarray(y_true) == k, np.asarray(y_prob)[:, k])
              for k, name in enumerate(class_names)}
    return {k: v for k, v in curves.items() if v}
