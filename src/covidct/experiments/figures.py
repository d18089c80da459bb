"""The papers' figures, drawn from an experiment's measured results (matplotlib, no pyplot).

Published values, where the papers print them, are drawn hollow/dashed and labelled
"published"; measured bars and lines are solid. Synthetic runs say so in the title.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..explain.plotting import new_figure, tidy_axes
from . import published as pub
from .groups import finished, groups, stats

MIXUP_COLOURS = {True: "#0072B2", False: "#E69F00"}
GREY = "#666666"


def _title(fig, text: str, outcome, scale: str) -> None:
    extras = [x for x in ("SYNTHETIC data" if outcome.data.synthetic else "",
                          "tiny scale" if scale == "tiny" else "") if x]
    fig.suptitle(text + (f" ({', '.join(extras)})" if extras else ""), fontsize=10)


def _empty(ax, text: str = "no finished runs") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY)


def _grouped_bars(ax, categories: list[str], series: dict[str, dict[str, list]], colours) -> None:
    """Bars per category, one per series, height = mean test accuracy (%), whisker = SD."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for k, (name, by_cat) in enumerate(series.items()):
        means, sds = [], []
        for cat in categories:
            mean, sd, _ = stats(by_cat.get(cat, []))
            means.append(np.nan if mean is None else 100 * mean)
            sds.append(0.0 if sd is None else 100 * sd)
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, means, width, yerr=sds, capsize=3,
                      label=name, color=colours.get(name, None), alpha=0.9)
        # Values on the bars: a 0% bar is otherwise invisible.
        ax.bar_label(bars, labels=["" if np.isnan(m) else f"{m:.1f}" for m in means], fontsize=7,
                     padding=2)
    ax.set_xticks(x, categories, fontsize=8)
    ax.set_ylabel("test accuracy (%)", fontsize=9)
    _zoom(ax)


def _zoom(ax) -> None:
    """Accuracy axes from a little below the lowest bar to 100, as the paper's plots."""
    values = [b.get_height() for c in ax.containers for b in getattr(c, "patches", [])
              if np.isfinite(b.get_height())]
    values += [y for line in ax.get_lines() for y in np.asarray(line.get_ydata(), float) if np.isfinite(y)]
    low = min(values) if values else 0.0
    ax.set_ylim(max(0.0, np.floor(low / 5) * 5 - 5), 101)


def _mixup_figure(outcome, scale: str, label_of: Callable[[dict], str], title: str, xlabel: str):
    fig = new_figure(6.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    tidy_axes(ax)
    results = finished(outcome)
    if not results:
        _empty(ax)
    categories: list[str] = []
    series: dict[str, dict[str, list]] = {}
    for result in results:
        cat = label_of(result)
        if cat not in categories:
            categories.append(cat)
        name = "with mixup" if result.get("mixup_alpha") else "without mixup"
        series.setdefault(name, {}).setdefault(cat, []).append(result["test_acc"])
    if results:
        _grouped_bars(ax, categories, series, {"with mixup": MIXUP_COLOURS[True],
                                               "without mixup": MIXUP_COLOURS[False]})
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.set_xlabel(xlabel, fontsize=9)
    _title(fig, title, outcome, scale)
    return fig


def figure_resolution(outcome, scale: str):
    return _mixup_figure(outcome, scale, lambda r: f"({r['resize']}, {r['crop']})",
                         "Test accuracy by resolution, measured here\n(cf. Zhao et al. Fig. 6A)",
                         "(resize, crop) in pixels")


def figure_schedule(outcome, scale: str):
    return _mixup_figure(outcome, scale, lambda r: f"{r['steps']}",
                         "Test accuracy by schedule, measured here\n(cf. Zhao et al. Fig. 6B)",
                         "training steps (BiT-HyperRule schedule)")


def figure_init(outcome, scale: str):
    fig = new_figure(9.0, 3.8)
    curves, bars = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for ax in (curves, bars):
        tidy_axes(ax)
    results = finished(outcome)
    if not results:
        _empty(curves)
        _empty(bars)
    for k, result in enumerate(results):
        points = np.asarray(result.get("val_curve") or [], float).reshape(-1, 2)
        name = _init_name(result)
        if len(points):
            curves.plot(points[:, 0], 100 * points[:, 1], marker="o" if len(points) < 30 else None,
                        markersize=3, linewidth=1.3, label=name)
    curves.set_xlabel("training step", fontsize=9)
    curves.set_ylabel("validation accuracy (%)", fontsize=9)
    curves.set_title("Validation accuracy during training (cf. Fig. 7)", fontsize=9)
    if results:
        curves.legend(fontsize=7, frameon=False, loc="lower right")
        names = [_init_name(g[1][0]) for g in groups(results)]
        x = np.arange(len(names))
        for offset, key, label, colour in ((-0.2, "val_acc", "validation", "#56B4E9"),
                                           (0.2, "test_acc", "test", "#0072B2")):
            means = [stats([m[key] for m in members])[0] for _, members in groups(results)]
            bars.bar(x + offset, [np.nan if m is None else 100 * m for m in means], 0.38,
                     label=f"{label}, measured here", color=colour)
        published = [pub.TABLE3.get(str(g[1][0]["init"])) for g in groups(results)]
        for offset, index in ((-0.2, 0), (0.2, 1)):
            ys = [p[index] if p else np.nan for p in published]
            bars.scatter(x + offset, ys, marker="_", s=300, color="black", zorder=3,
                         label="published (Table 3)" if index == 0 else None)
        bars.set_xticks(x, names, fontsize=7, rotation=20)
        bars.set_ylabel("accuracy (%)", fontsize=9)
        bars.legend(fontsize=7, frameon=False, loc="lower right")
        _zoom(bars)
    bars.set_title("Accuracy by initialisation (cf. Table 3)", fontsize=9)
    _title(fig, "Weight initialisation", outcome, scale)
    return fig


def _init_name(result: dict[str, Any]) -> str:
    init, used = str(result["init"]), str(result.get("init_used", result["init"]))
    return init if init == used else f"{init} (as {used})"


def figure_data_size(outcome, scale: str):
    fig = new_figure(6.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    tidy_axes(ax)
    results = finished(outcome)
    if not results:
        _empty(ax)
    labels, means, sds = [], [], []
    for _, members in groups(results):
        mean, sd, _ = stats([m["test_acc"] for m in members])
        labels.append(str(members[0]["per_class"]))
        means.append(np.nan if mean is None else 100 * mean)
        sds.append(0.0 if sd is None else 100 * sd)
        x = len(labels) - 1
        ax.scatter([x] * len(members), [100 * m["test_acc"] for m in members], s=10,
                   color=GREY, alpha=0.6, zorder=3)
    if labels:
        x = np.arange(len(labels))
        ax.errorbar(x, means, yerr=sds, marker="o", color="#0072B2", capsize=4,
                    label="measured here: mean ± SD over draws (dots: each draw)")
        shown = False
        for k, label in enumerate(labels):
            key = label if label == "full" else int(label)
            if key in pub.FIG8:
                ax.scatter([k], [pub.FIG8[key]], marker="D", facecolors="none", edgecolors="black",
                           s=40, zorder=4, label=None if shown else "published (Zhao et al. text)")
                shown = True
        for (name, value), style in zip(pub.FIG8_REFERENCES.items(), (":", "--", "-.")):
            ax.axhline(value, color=GREY, linestyle=style, linewidth=0.8,
                       label=f"{name}, full set: {value:.1f} (published)")
        ax.set_xticks(x, labels, fontsize=8)
        ax.legend(fontsize=7, frameon=False, loc="lower right")
        _zoom(ax)
    ax.set_xlabel("training images per class", fontsize=9)
    ax.set_ylabel("test accuracy (%)", fontsize=9)
    _title(fig, "Test accuracy by training-set size, measured here\n(cf. Zhao et al. Fig. 8)",
           outcome, scale)
    return fig


def figure_table1(outcome, scale: str):
    """Horizontal bars, published (grey) then measured here (blue), best at the top."""
    names = [f"{n} (published)" for n in pub.TABLE1_ACCURACY]
    values = list(pub.TABLE1_ACCURACY.values())
    colours = ["#bbbbbb"] * len(names)
    for _, members in groups(finished(outcome)):
        mean, _, _ = stats([m["test_acc"] for m in members])
        names.append(f"{_init_name(members[0])} (measured here)")
        values.append(np.nan if mean is None else 100 * mean)
        colours.append("#0072B2")
    fig = new_figure(7.0, 1.2 + 0.32 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    tidy_axes(ax)
    y = np.arange(len(names))[::-1]
    bars = ax.barh(y, values, color=colours)
    ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.1f}" for v in values], fontsize=7,
                 padding=2)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(0, 105)
    ax.set_xlabel("test accuracy (%)", fontsize=9)
    _title(fig, "COVIDx CT-2A test accuracy: published (grey) and measured here (blue)\n"
                "(cf. Zhao et al. Table 1)", outcome, scale)
    return fig


def figure_covidctnet(outcome, scale: str):
    """Fig. 1 of CovidCTNet: loss and validation accuracy per epoch, with and without BCDU-Net."""
    results = [r for r in finished(outcome) if r.get("models")]
    fig = new_figure(8.0, 3.2 * max(1, len(results)))
    if not results:
        ax = fig.add_subplot(1, 1, 1)
        _empty(ax)
    colours = {"classifier": "#D55E00", "ablation": "#0072B2", "lung_masked": "#009E73"}
    for row, result in enumerate(results):
        loss = fig.add_subplot(len(results), 2, 2 * row + 1)
        acc = fig.add_subplot(len(results), 2, 2 * row + 2)
        for ax in (loss, acc):
            tidy_axes(ax)
        for model in result["models"]:
            curve = np.asarray([[np.nan if v is None else v for v in point]
                                for point in model.get("curve") or []], float).reshape(-1, 4)
            if not len(curve):
                continue
            colour = colours.get(model["stage"], GREY)
            loss.plot(curve[:, 0], curve[:, 1], color=colour, label=f"{model['model']}, train")
            loss.plot(curve[:, 0], curve[:, 2], color=colour, linestyle="--", label=f"{model['model']}, val")
            acc.plot(curve[:, 0], 100 * curve[:, 3], color=colour, marker="o", markersize=3,
                     label=model["model"])
        mode = result.get("mode") or ""
        loss.set_title(f"{mode}: cross-entropy loss", fontsize=9)
        acc.set_title(f"{mode}: validation accuracy (%)", fontsize=9)
        for ax in (loss, acc):
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        loss.legend(fontsize=6, frameon=False)
        acc.legend(fontsize=6, frameon=False)
    _title(fig, "CovidCTNet with and without BCDU-Net / Perlin noise, measured here\n"
                "(cf. Javaheri et al. Fig. 1)", outcome, scale)
    return fig


METHOD_COLOURS = {"bit": "#0072B2", "covidctnet": "#D55E00"}
METHOD_NAMES = {"bit": "BiT slice classifier", "covidctnet": "CovidCTNet"}


def figure_learning_curve(outcome, scale: str):
    """Held-out patient accuracy (95% patient-bootstrap CI) against training patients (at the
    centre difficulty) and against difficulty (at the centre number of training patients)."""
    fig = new_figure(9.0, 3.8)
    results = finished(outcome)
    panels = (("train_patients", "training patients"), ("difficulty", "phantom difficulty"))
    for k, (axis, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        tidy_axes(ax)
        points = [r for r in results if axis in str(r.get("sweeps") or "").split(";")]
        if not points:
            _empty(ax)
        for method in sorted({str(r["method"]) for r in points}):
            _curve(ax, [r for r in points if r["method"] == method], axis, method)
        ax.axhline(1 / 3, color=GREY, linestyle=":", linewidth=0.8, label="chance (3 classes)")
        ax.set_ylim(0, 1.03)
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("held-out patient accuracy", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="lower right" if axis == "train_patients"
                  else "lower left")
    _title(fig, "Learning curve: accuracy on held-out patients (one fixed test split per "
                "difficulty), 95% CIs", outcome, scale)
    return fig


def _curve(ax, rows: list[dict[str, Any]], axis: str, method: str) -> None:
    """One method's points with CI whiskers (repeats side by side), a line through the means."""
    rows = sorted(rows, key=lambda r: float(r[axis]))
    xs = np.array([float(r[axis]) for r in rows])
    ys = np.array([np.nan if r.get("test_acc") is None else r["test_acc"] for r in rows], float)
    low, high = (np.array([y if r.get(key) is None else r[key] for r, y in zip(rows, ys)], float)
                 for key in ("test_acc_ci_low", "test_acc_ci_high"))
    colour = METHOD_COLOURS.get(method, GREY)
    shift = 0.01 * (np.ptp(xs) or 1.0) * (1 if method == "bit" else -1)   # whiskers apart
    ax.errorbar(xs + shift, ys, yerr=[ys - low, high - ys], fmt="o", color=colour, capsize=3,
                markersize=4)
    unique = np.unique(xs)
    means = [np.nanmean(ys[xs == x]) for x in unique]
    ax.plot(unique + shift, means, color=colour, label=METHOD_NAMES.get(method, method))
    ax.set_xticks(unique)


FIGURES: dict[str, Callable] = {
    "resolution": figure_resolution, "schedule": figure_schedule, "init": figure_init,
    "data-size": figure_data_size, "table1": figure_table1, "covidctnet-ablation": figure_covidctnet,
    "learning-curve": figure_learning_curve,
}
