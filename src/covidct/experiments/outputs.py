"""An experiment's results: one CSV, a table in the paper's layout, the paper's figure, and
``experiment.json`` (what the HTML report reads).

Published numbers (:mod:`.published`) appear beside measured ones, always in their own rows
or columns marked "published"; measured rows are marked "measured here" (and SYNTHETIC when
the data was).
"""
from __future__ import annotations

import csv
import io
from typing import Any, Callable

from ..atomic import write_json, write_text
from ..constants import SLICE_CLASSES, SYNTHETIC_NOTICE
from ..explain.plotting import save_figure
from . import published as pub
from .figures import FIGURES
from .grid import Plan
from .groups import axis_text, finished, groups, stats
from .presets import KIND_COHORTS, Preset

CSV_NAME, TABLE_NAME, FIGURE_NAME, JSON_NAME = "results.csv", "table.md", "figure.png", "experiment.json"
MEASURED, PUBLISHED = "measured here", "published"
#: Column names of Table 2 (sensitivity, positive/negative predictive value, specificity).
FIGURE_NAMES = {"sn": "Sn", "ppv": "PPV", "sp": "Sp", "npv": "NPV"}
#: Bulky per-run series kept in result.json but left out of the CSV.
_SERIES = ("val_curve", "curve")


# -- rows -----------------------------------------------------------------------------------

def csv_rows(preset: Preset, outcome) -> list[dict[str, Any]]:
    """One row per run (per model for CovidCTNet runs); failed runs keep their error."""
    rows = []
    for run in outcome.runs:
        base = {"experiment": preset.name, "run": run.spec.id, "status": run.status,
                "synthetic": outcome.data.synthetic, **{f"axis_{k}": axis_text(v) for k, v in run.spec.axes.items()}}
        if run.status == "failed":
            rows.append({**base, "error": run.error})
            continue
        result = run.result or {}
        models = result.get("models")
        for part in (models if models else [result]):
            rows.append({**base, **{k: v for k, v in part.items()
                                    if k not in _SERIES and k not in ("axes", "models", "id")}})
    return rows


def write_csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return axis_text(value)


# -- number formats ------------------------------------------------------------------------------

def pct(values: list[Any]) -> str:
    """Mean accuracy in % with ± SD over repeats (n shown when more than one)."""
    mean, sd, n = stats(values)
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f} (n={n})" if sd is not None else "")


def _published(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


# -- tables per experiment ------------------------------------------------------------------------

Table = tuple[list[str], list[list[str]]]


def _res_label(result: dict) -> str:
    return f"({result['resize']}, {result['crop']})"


def _mixup_label(result: dict) -> str:
    return "with mixup" if result.get("mixup_alpha") else "without mixup"


def table_resolution(preset, outcome) -> Table:
    rows = []
    for axes, members in groups(finished(outcome)):
        first = members[0]
        rows.append([_res_label(first), _mixup_label(first),
                     pct([m["val_acc"] for m in members]), pct([m["test_acc"] for m in members]),
                     MEASURED])
    return ["Resolution (resize, crop)", "Mixup", "Val accuracy (%)", "Test accuracy (%)", "Source"], rows


def table_schedule(preset, outcome) -> Table:
    rows = []
    for axes, members in groups(finished(outcome)):
        first = members[0]
        rows.append([f"{first['steps']} steps ({first['schedule']})", _mixup_label(first),
                     pct([m["val_acc"] for m in members]), pct([m["test_acc"] for m in members]),
                     MEASURED])
    return ["Schedule", "Mixup", "Val accuracy (%)", "Test accuracy (%)", "Source"], rows


def table_init(preset, outcome) -> Table:
    rows = []
    for axes, members in groups(finished(outcome)):
        first = members[0]
        name = str(first["init"]) + ("" if first["init_used"] == first["init"]
                                     else f" (trained from {first['init_used']})")
        val, test = pub.TABLE3.get(str(first["init"]), (None, None))
        rows.append([name, pct([m["val_acc"] for m in members]), pct([m["test_acc"] for m in members]),
                     _published(val), _published(test)])
    return ["Initialisation", f"Val accuracy (%), {MEASURED}", f"Test accuracy (%), {MEASURED}",
            f"Val (%), {PUBLISHED}", f"Test (%), {PUBLISHED}"], rows


def table_data_size(preset, outcome) -> Table:
    rows = []
    for axes, members in groups(finished(outcome)):
        first = members[0]
        tests = [m["test_acc"] for m in members]
        mean, sd, n = stats(tests)
        spread = (f"{100 * min(tests):.1f}-{100 * max(tests):.1f}" if n > 1 else "")
        key = first["per_class"] if first["per_class"] == "full" else int(first["per_class"])
        rows.append([str(first["per_class"]), str(first["train_images"]), str(n),
                     "n/a" if mean is None else f"{100 * mean:.1f}",
                     "" if sd is None else f"{100 * sd:.1f}", spread,
                     _published(pub.FIG8.get(key))])
    return ["Images per class", "Training images", "Draws", f"Test accuracy (%), mean, {MEASURED}",
            "SD", "Range", f"BiT-M (%), {PUBLISHED}"], rows


def table_table1(preset, outcome) -> Table:
    header = ["Model", "Source", "Accuracy (%)",
              *(f"{FIGURE_NAMES[fig]} {cls} (%)" for fig in pub.FIGURES for cls in SLICE_CLASSES)]
    rows = []
    for model, acc in pub.TABLE1_ACCURACY.items():
        figures = pub.TABLE2[model]
        rows.append([model, PUBLISHED, _published(acc),
                     *(_published(figures[f"{fig}_{cls}"]) for fig in pub.FIGURES for cls in SLICE_CLASSES)])
    source = MEASURED + (" (SYNTHETIC)" if outcome.data.synthetic else "")
    for axes, members in groups(finished(outcome)):
        first = members[0]
        name = str(first["init"]) + ("" if first["init_used"] == first["init"]
                                     else f" (trained from {first['init_used']})")
        rows.append([name, source, pct([m["test_acc"] for m in members]),
                     *(pct([m.get(f"{fig}_{cls}") for m in members])
                       for fig in pub.FIGURES for cls in SLICE_CLASSES)])
    return header, rows


def table_covidctnet(preset, outcome) -> Table:
    rows = []
    for result in finished(outcome):
        for model in result.get("models") or []:
            rows.append([model["mode"] or "", model["model"], _pct1(model.get("val_acc")),
                         _pct1(model.get("test_acc")), _dec(model.get("test_covid_auc")),
                         _dec(model.get("best_val_loss")), str(model.get("epochs_run")), MEASURED])
    for mode, figures in pub.COVIDCTNET.items():
        rows.append([mode, "CovidCTNet (Javaheri et al., validation, Fig. 4)",
                     _published(figures.get("val_acc")), "", _dec(figures.get("val_covid_auc")), "", "",
                     PUBLISHED])
    return ["Mode", "Model", "Val accuracy (%)", "Test accuracy (%)", "Test COVID-19 AUC",
            "Best val loss", "Epochs", "Source"], rows


def _pct1(value: Any) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _dec(value: Any) -> str:
    return "" if not isinstance(value, (int, float)) else f"{value:.3f}"


def table_learning_curve(preset, outcome) -> Table:
    """One row per run: method, training patients, difficulty, held-out figures with CIs."""
    results = sorted(finished(outcome), key=lambda r: (str(r["method"]), float(r["difficulty"]),
                                                       int(r["train_patients"]), str(r["seed"])))
    source = MEASURED + (" (SYNTHETIC)" if outcome.data.synthetic else "")
    rows = [[str(r["method"]), str(r["train_patients"]), f"{float(r['difficulty']):g}",
             str(r["seed"]), str(r.get("test_patients")), with_ci(r, "test_acc"),
             with_ci(r, "test_covid_auc"), str(r.get("sweeps") or "").replace(";", ", "), source]
            for r in results]
    return ["Method", "Training patients", "Difficulty", "Seed", "Test patients",
            "Patient-level accuracy [95% CI]", "COVID-vs-rest AUC [95% CI]", "Curve",
            "Source"], rows


def with_ci(result: dict[str, Any], key: str) -> str:
    """``0.83 [0.58, 1.00]`` from a row's KEY, KEY_ci_low and KEY_ci_high."""
    value, low, high = (result.get(key + s) for s in ("", "_ci_low", "_ci_high"))
    if not isinstance(value, (int, float)):
        return "n/a"
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return f"{value:.2f} [{low:.2f}, {high:.2f}]"
    return f"{value:.2f}"


TABLES: dict[str, Callable] = {
    "resolution": table_resolution, "schedule": table_schedule, "init": table_init,
    "data-size": table_data_size, "table1": table_table1, "covidctnet-ablation": table_covidctnet,
    "learning-curve": table_learning_curve,
}


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# -- writing everything ---------------------------------------------------------------------------

def write_outputs(preset: Preset, outcome, plan: Plan, scale: str, command: str = ""):
    folder = outcome.folder
    files = [write_text(folder / CSV_NAME, write_csv(csv_rows(preset, outcome)))]
    header, rows = TABLES[preset.name](preset, outcome)
    caption = f"{preset.title} ({preset.figure}), scale {scale}. Data: {outcome.data.description}. "
    caption += (f"'{MEASURED}' rows come from this experiment folder; 95% CIs from a bootstrap "
                "of the test patients." if preset.kind == KIND_COHORTS else
                f"Rows marked '{PUBLISHED}' are copied from the papers; '{MEASURED}' rows come "
                "from this experiment folder.")
    notes = "".join(f"\n- {n}" for n in outcome.notes)
    failed = "".join(f"\n- FAILED run {r.spec.id}: {r.error}" for r in outcome.failed)
    banner = f"**{SYNTHETIC_NOTICE}**\n\n" if outcome.data.synthetic else ""
    files.append(write_text(folder / TABLE_NAME, f"# {preset.title}\n\n{banner}{caption}\n\n"
                            f"{markdown(header, rows)}\n{notes}{failed}\n"))
    fig = FIGURES[preset.name](outcome, scale)
    files.append(save_figure(fig, folder / FIGURE_NAME))
    files.append(write_json(folder / JSON_NAME, {
        "experiment": preset.name, "title": preset.title, "paper": preset.figure,
        "description": preset.description, "scale": scale, "data": outcome.data.to_dict(),
        "synthetic": outcome.data.synthetic,
        **({"synthetic_notice": SYNTHETIC_NOTICE} if outcome.data.synthetic else {}),
        "grid": plan.grid, "settings": plan.settings, "overrides": plan.overrides,
        "runs": [{"id": r.spec.id, "axes": r.spec.axes, "status": r.status, "error": r.error}
                 for r in outcome.runs],
        "notes": outcome.notes, "table": {"caption": caption, "header": header, "rows": rows},
        "files": {"csv": CSV_NAME, "table": TABLE_NAME, "figure": FIGURE_NAME},
        "command": command}))
    return files
