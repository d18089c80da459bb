"""Plain-text (markdown) tables in the papers' layouts.

- :func:`format_table2`: accuracy and per-class sensitivity, PPV, specificity, NPV in %,
  one row per model, as Zhao et al. (BiT) Table 2.
- :func:`format_table3`: per-class precision, recall, F1 and accuracy, one block per model
  or reader, as Javaheri et al. (CovidCTNet) Table 3.
- :func:`format_reader_table`: the readers' and the model's three- and two-class figures,
  as CovidCTNet Fig. 5.

Figures with a CI print as ``value [low, high]``; undefined figures as ``n/a``.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

ITEM_NAMES = {"slice": "slices", "patient": "slices", "scan": "scans", "series": "series"}


def figure_parts(figure: Any) -> tuple[Any, Any, Any]:
    """(value, ci_low, ci_high) of a plain or {"value", "ci_low", "ci_high"} figure."""
    if isinstance(figure, Mapping):
        return figure.get("value"), figure.get("ci_low"), figure.get("ci_high")
    return figure, None, None


def as_number(value: Any) -> float | None:
    """A real number as float; None for None, booleans and anything else."""
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def format_figure(figure: Any, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
    """The one way a figure is printed: ``value [low, high]`` when it has a CI (``97.1% [95.2,
    98.4]`` with scale 100, digits 1 and unit "%"), the value alone without; ``n/a`` when the
    figure is undefined or not a number."""
    value, low, high = (as_number(v) for v in figure_parts(figure))
    if value is None:
        return "n/a"
    text = f"{value * scale:.{digits}f}{unit}"
    if low is not None and high is not None:
        text += f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
    return text


def result_sets(metrics: Mapping) -> dict[str, Mapping]:
    """Named result dicts from one result, a name -> result mapping, or compare_readers'."""
    if "per_class" in metrics:
        return {"model": metrics}
    if "readers" in metrics and "model" in metrics:
        return {**metrics["readers"], "Average reader": metrics["reader_average"],
                metrics.get("model_name", "model"): metrics["model"]}
    return dict(metrics)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _footnote(sets: Mapping[str, Mapping]) -> str:
    notes = []
    for name, result in sets.items():
        if "n_patients" in result:
            items = ITEM_NAMES.get(result.get("level", "slice"), "slices")
            boot = result.get("bootstrap", {})
            level = 100 * (1 - boot.get("alpha", 0.05))
            notes.append(f"{name}: n = {result['n_patients']} patients, {result['n_slices']} "
                         f"{items}; {level:g}% CI by bootstrap over "
                         f"{boot.get('resampled', 'patients')} ({boot.get('n_boot', '?')} resamples)")
    return ("\n\n" + "\n".join(f"- {n}" for n in notes)) if notes else ""


def format_table2(metrics: Mapping, class_names: Sequence[str] | None = None, *,
                  digits: int = 1) -> str:
    """Accuracy and per-class Sn, PPV, Sp, NPV (%) per model, as the BiT paper's Table 2."""
    sets = result_sets(metrics)
    classes = list(class_names or next(iter(sets.values()))["class_names"])
    figures = (("sensitivity", "Sn"), ("ppv", "PPV"), ("specificity", "Sp"), ("npv", "NPV"))
    header = ["Model", "Accuracy (%)",
              *(f"{short} {cls} (%)" for _, short in figures for cls in classes)]
    rows = []
    for name, result in sets.items():
        row = [name, format_figure(result["accuracy"], 100, digits)]
        row += [format_figure(result["per_class"][cls][f], 100, digits)
                for f, _ in figures for cls in classes]
        rows.append(row)
    return _markdown(header, rows) + _footnote(sets)


def format_table3(metrics: Mapping, class_names: Sequence[str] | None = None, *,
                  digits: int = 3) -> str:
    """Per-class precision, recall, F1 and accuracy per model/reader (CovidCTNet Table 3)."""
    sets = result_sets(metrics)
    classes = list(class_names or next(iter(sets.values()))["class_names"])
    rows = []
    for name, result in sets.items():
        for i, cls in enumerate(classes):
            per = result["per_class"][cls]
            rows.append([name if i == 0 else "", cls,
                         *(format_figure(per[f], 1, digits) for f in ("ppv", "sensitivity", "f1"))])
        rows.append(["", "Accuracy", format_figure(result["accuracy"], 1, digits), "", ""])
    return _markdown(["", "Class", "Precision", "Recall", "F1-score"], rows) + _footnote(sets)


def format_reader_table(metrics: Mapping, *, digits: int = 1) -> str:
    """Three-class and COVID-vs-rest figures (%) of each reader and the model (Fig. 5)."""
    sets = result_sets(metrics)
    columns = [("Accuracy, 3 classes", ("accuracy",)),
               ("Macro Sn", ("macro", "sensitivity")), ("Macro Sp", ("macro", "specificity")),
               ("Micro Sp", ("micro", "specificity")),
               ("Accuracy, 2 classes", ("binary", "accuracy")),
               ("COVID Sn", ("binary", "sensitivity")), ("COVID Sp", ("binary", "specificity")),
               ("COVID AUC", ("binary", "auc"))]
    rows = []
    for name, result in sets.items():
        row = [name]
        for _, path in columns:
            value: Any = result
            for key in path:
                value = value.get(key) if isinstance(value, Mapping) else None
            row.append(format_figure(value, 100, digits))
        rows.append(row)
    return _markdown(["", *(f"{title} (%)" for title, _ in columns)], rows) + _footnote(sets)
