"""Training curves from a run folder's ``history.csv``, as the BiT paper's Fig. 7.

Columns are recognised by name, so both methods' histories plot without configuration:
the x axis is ``step`` (else ``epoch``, else the row number); columns whose name contains
``loss`` go to the loss panel, ``lr``/``learning_rate`` to the learning-rate panel and
``acc`` to the accuracy panel. Empty cells (validation figures exist only on validation
steps) are skipped. A ``stage``/``phase`` column (e.g. denoiser then classifier) draws one
line per stage.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DatasetError
from .plotting import class_colour, new_figure, tidy_axes

X_COLUMNS = ("step", "global_step", "iteration", "epoch")
STAGE_COLUMNS = ("stage", "phase")
PANELS = (("loss", "Loss"), ("lr", "Learning rate"), ("acc", "Accuracy"))


def read_history(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``history.csv`` as column -> array (float, NaN where empty; stages as str)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read the training history ({exc})", path) from None
    if not rows:
        raise DatasetError("training history has no rows", path)
    columns: dict[str, np.ndarray] = {}
    for name in rows[0]:
        if name is None:
            continue
        values = [(row.get(name) or "").strip() for row in rows]
        if name in STAGE_COLUMNS:
            columns[name] = np.array(values, dtype=str)
        else:
            columns[name] = np.array([_number(v) for v in values], dtype=np.float64)
    return columns


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def panel_of(column: str) -> str | None:
    name = column.lower()
    if name in X_COLUMNS or name in STAGE_COLUMNS:
        return None
    if "loss" in name:
        return "loss"
    if name in ("lr", "learning_rate") or name.endswith("_lr"):
        return "lr"
    if "acc" in name:
        return "acc"
    return None


def pretty(column: str) -> str:
    """Column name as a legend label: val_acc -> validation accuracy, loss -> training loss."""
    name = column.lower()
    words = {"val": "validation", "valid": "validation", "train": "training", "acc": "accuracy",
             "lr": "learning rate", "loss": "loss"}
    parts = [words.get(p, p) for p in name.split("_") if p]
    if parts in (["loss"], ["accuracy"]):
        parts.insert(0, "training")
    return " ".join(parts)


def x_axis(history: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    for name in X_COLUMNS:
        if name in history and np.isfinite(history[name]).any():
            return history[name], name
    n = len(next(iter(history.values())))
    return np.arange(1, n + 1, dtype=np.float64), "row"


def smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out = np.empty_like(values, dtype=np.float64)
    avg, norm = 0.0, 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = avg / norm
    return out


def plot_training_curves(histories: Mapping[str, Mapping[str, np.ndarray]] | Mapping[str, np.ndarray],
                         title: str | None = None, synthetic: bool = False):
    """Loss, learning rate and accuracy over steps for one run or several overlaid.

    ``histories`` is one :func:`read_history` result or a mapping run name -> result.
    Panels without data are left out; raises ValueError when nothing is plottable.
    """
    if histories and all(isinstance(v, np.ndarray) for v in histories.values()):
        histories = {"": histories}  # a single run
    # One colour per run and stage, the same in every panel; validation dashed with markers.
    lines: dict[str, list[tuple[str, str, int, np.ndarray, np.ndarray]]] = {p: [] for p, _ in PANELS}
    series = 0
    for run_name, history in histories.items():
        x, _ = x_axis(history)
        for stage, mask in _stages(history):
            for column, values in history.items():
                panel = panel_of(column)
                if panel is None:
                    continue
                keep = mask & np.isfinite(values) & np.isfinite(x)
                if keep.any():
                    label = " · ".join(p for p in (run_name, stage, pretty(column)) if p)
                    lines[panel].append((label, column, series, x[keep], values[keep]))
            series += 1
    panels = [(key, name) for key, name in PANELS if lines[key]]
    if not panels:
        raise ValueError("no loss, learning-rate or accuracy columns with values to plot")
    fig = new_figure(3.3 * len(panels), 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (key, name) in zip(axes, panels):
        for label, column, k, x, y in lines[key]:
            colour = class_colour(k)
            validation = column.lower().startswith("val")
            if key == "loss" and not validation and len(y) > 20:
                ax.plot(x, y, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(x, smooth(y), color=colour, linewidth=1.4, label=label + " (smoothed)")
            else:
                ax.plot(x, y, "o--" if validation else ("o-" if len(y) <= 20 else "-"), color=colour,
                        markersize=3, linewidth=1.2, label=label)
        if _x_label(histories) == "epoch":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "lr" and all((y > 0).all() for *_, y in lines[key]):
            spans = [y.max() / y.min() for *_, y in lines[key]]
            if max(spans) >= 100:
                ax.set_yscale("log")
        if key == "acc":
            ax.set_ylim(min(0.0, *(y.min() for *_, y in lines[key])), 1.02)
        tidy_axes(ax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(_x_label(histories), fontsize=8)
        if len(lines[key]) > 1 or len(histories) > 1 or key == "loss":
            ax.legend(fontsize=7, frameon=False)
    if title or synthetic:
        fig.suptitle((title or "Training curves") + (" (SYNTHETIC data)" if synthetic else ""),
                     fontsize=9)
    return fig


def _stages(history: Mapping[str, np.ndarray]) -> Sequence[tuple[str, np.ndarray]]:
    n = len(next(iter(history.values())))
    for name in STAGE_COLUMNS:
        if name in history:
            values = history[name]
            return [(str(s), values == s) for s in dict.fromkeys(values.tolist())]
    return [("", np.ones(n, dtype=bool))]


def _x_label(histories: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    names = {x_axis(h)[1] for h in histories.values()}
    return names.pop() if len(names) == 1 else "step / epoch"
