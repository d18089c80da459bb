"""The report's sections, each built from what :mod:`.discover` found.

Every section is always present; one without input says what it looked for. Nothing that
could identify a patient is shown: galleries are described by class and probability,
cohorts by counts, predictions by the scan's geometry.
"""
from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..constants import (METHOD_BIT, METHOD_COVIDCTNET, SLICE_CLASS_LONG, SLICE_CLASSES,
                         VOLUME_CLASSES)
from ..metrics.tables import figure_parts, result_sets
from . import figures
from .discover import Cohort, Evaluation, Findings, TrainingRun
from .html import (code, count, dec, esc, figure, figure_row, img, key_values, missing, note, pct,
                   section, subsection, table)

log = logging.getLogger(__name__)

METHOD_TITLES = {METHOD_BIT: "Slice classifier (BiT ResNet-v2)",
                 METHOD_COVIDCTNET: "CovidCTNet (BCDU-Net infection maps + 3D CNN)"}
SPLIT_ORDER = ("train", "val", "test")

HOW = {
    "confusion": "each row is one true class; the cells give the share of its cases the model "
                 "called each class (counts below). A perfect model has 100% on the diagonal; "
                 "cells off the diagonal in the COVID-19 row are missed COVID-19 cases.",
    "roc": "each curve shows sensitivity against the false-positive rate as the threshold for "
           "calling that class moves from strict (bottom left) to lenient (top right). Curves "
           "close to the top-left corner are better; the dotted diagonal is chance (AUC 0.5). "
           "AUC is the chance that a case of the class scores higher than a case of another class.",
    "calibration": "cases are grouped by the probability the model gave (x axis); each bar shows "
                   "how often those cases really were correct (top label) or really COVID-19 (y "
                   "axis); the pale red part is the gap to the probability the model gave. Bars "
                   "reaching the dashed diagonal mean the probabilities can be read as frequencies; "
                   "bars below it mean over-confidence. Small numbers count the cases per bin; bins "
                   "with few cases are noisy. ECE is the average gap (0 is perfect).",
    "gradcam": "left, the slice as the model saw it (cropped to the body); right, the Grad-CAM heat "
               "map of the class the model called: red areas gave the most evidence for that call. "
               "It shows where the model looked, not what it found; heat outside the lungs is a "
               "warning sign. Mistakes are shown on purpose.",
    "infection": "yellow to red marks where a slice is denser than the BCDU-Net's reconstruction "
                 "of a normal lung (the infection map the 3D CNN classifies), on the three most "
                 "affected slices, then projected through the whole scan from above (axial) and "
                 "from the front (coronal, head at the top). The colour scale is the same for every "
                 "scan: full red is the density step from aerated lung to ground glass.",
    "tsne": "each dot is one case, placed so that cases the network represents alike lie close "
            "together; colours are the true classes. Separate clusters mean the learned features "
            "separate the classes; mixed regions show where confusions are likely. Axes and "
            "distances between clusters have no meaning.",
    "experiments": "each bar, line or dot measured here comes from this folder's runs (mean and "
                   "spread over repeated runs where there are several); values marked "
                   "\"published\" are copied from the paper for comparison, not measured. On "
                   "synthetic data or at tiny scale the numbers only show that the pipeline works.",
    "curves": "the training loss (solid) should fall and level off; with many steps a faint line "
              "shows every step and the solid line their smoothed trend. Validation figures "
              "(dashed, dots) are measured on held-out data during training and show when the "
              "model stopped improving; the saved model is the one with the best validation "
              "figure. Where shown, the learning rate follows the schedule (warm-up, then "
              "step-wise drops). CovidCTNet trains in two stages (the BCDU-Net denoiser, then "
              "the 3D CNN), each with its own colour.",
}


# Helpers ---------------------------------------------------------------------------------

def levels_of(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Result per level: slice + patient (slice classifier), scan (CovidCTNet), or one."""
    sets = result_sets(metrics)
    return {k: v for k, v in sets.items() if isinstance(v, Mapping) and "per_class" in v}


def headline_level(levels: Mapping[str, Any]) -> str:
    for name in ("patient", "scan"):
        if name in levels:
            return name
    return next(iter(levels))


def method_title(method: str) -> str:
    return METHOD_TITLES.get(method, method or "Unknown method")


def evaluation_title(ev: Evaluation) -> str:
    split = ev.provenance.get("split")
    return method_title(ev.method) + (f", {split} split" if split else "")


def _get(result: Mapping[str, Any], *path: str) -> Any:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def is_scan_level(level: str, result: Mapping[str, Any]) -> bool:
    """CovidCTNet's results: one item per scan (the patient), no slices."""
    return level == "scan" or result.get("level") == "scan"


def _items_name(level: str, result: Mapping[str, Any]) -> str:
    return "scans" if is_scan_level(level, result) else "slices"


def ci_footnote(levels: Mapping[str, Mapping[str, Any]]) -> str:
    first = next(iter(levels.values()))
    boot = first.get("bootstrap") or {}
    level = 100 * (1 - float(boot.get("alpha", 0.05)))
    counts = "; ".join(f"{figures.level_title(name).lower()}: {count(r.get('n_patients'))} patients"
                       + ("" if is_scan_level(name, r) else f", {count(r.get('n_slices'))} slices")
                       for name, r in levels.items())
    return note(f"Figures in brackets are {level:g}% confidence intervals from "
                f"{boot.get('n_boot', '?')} bootstrap resamples of {boot.get('resampled', 'patients')} "
                f"(slices of one patient are never treated as independent). n = {counts}.", "footnote")


# Summary -----------------------------------------------------------------------------------

def summary_section(found: Findings) -> str:
    cards = []
    for ev in found.evaluations:
        levels = levels_of(ev.results.get("metrics") or {})
        if not levels:
            continue
        name = headline_level(levels)
        result = levels[name]
        binary = result.get("binary") or {}
        positive = binary.get("positive_class") or "COVID-19"
        lines = [f"<li>{esc(positive)} sensitivity {esc(pct(binary.get('sensitivity')))}</li>",
                 f"<li>{esc(positive)} specificity {esc(pct(binary.get('specificity')))}</li>",
                 f"<li>{esc(positive)}-vs-rest AUC {esc(dec(binary.get('auc')))}</li>",
                 f"<li>{count(result.get('n_patients'))} patients"
                 + ("" if is_scan_level(name, result) else f", {count(result.get('n_slices'))} slices")
                 + "</li>"]
        badge = ' <span class="badge syn">SYNTHETIC</span>' if ev.synthetic else ""
        cards.append(f'<div class="card"><h4>{esc(evaluation_title(ev))}{badge}</h4>'
                     f'<div>{esc(figures.level_title(name))} accuracy</div>'
                     f'<div class="big">{esc(pct(result.get("accuracy")))}</div>'
                     f'<ul>{"".join(lines)}</ul></div>')
    body = (f'<div class="cards">{"".join(cards)}</div>' + note(
        "Accuracy with its 95% confidence interval at the level a clinician decides on (the "
        "patient or scan); details, slice-level figures and pictures follow below.")
            if cards else missing("No evaluation results yet", "results.json from covidct evaluate"))
    found_list = (f"Found in <code>{esc(found.root.name or found.root)}</code>: "
                  f"{len(found.runs)} training run(s), {len(found.evaluations)} evaluation(s), "
                  f"{len(found.cohorts)} dataset folder(s), {len(found.predictions)} example prediction(s).")
    return section("summary", "Summary", body + f'<p class="note">{found_list}</p>')


# Data ---------------------------------------------------------------------------------------

def data_section(found: Findings) -> str:
    parts = []
    for cohort in found.cohorts:
        parts.append(_cohort_html(cohort, found))
    evaluated = [[evaluation_title(ev), found.relative(ev.provenance.get("data", "")) if ev.provenance.get("data") else "n/a",
                  str(ev.provenance.get("split", "n/a")), count(ev.provenance.get("n_patients")),
                  f"{count(ev.provenance.get('n_items'))} {'scans' if ev.provenance.get('level') == 'scan' else 'slices'}",
                  "yes" if ev.synthetic else "no"] for ev in found.evaluations]
    if evaluated:
        parts.append(subsection("Data each evaluation scored", table(
            ["Evaluation", "Data", "Split", "Patients", "Items", "Synthetic"], evaluated)))
    trained = [_run_data_row(run, found) for run in found.runs]
    trained = [row for row in trained if row]
    if trained:
        parts.append(subsection("Data each training run used", table(
            ["Run", "Training data", "Validation data", "Synthetic"], trained)))
    body = "".join(parts) or missing("No dataset folders or data summaries found",
                                     "labels.csv, <split>_COVIDx_CT-2A.txt, results.json, config.json")
    return section("data", "Data: provenance and counts", body)


def _cohort_html(cohort: Cohort, found: Findings) -> str:
    badge = ' <span class="badge syn">SYNTHETIC</span>' if cohort.synthetic else ""
    out = [f"<h3>Dataset folder <code>{esc(found.relative(cohort.path))}</code>{badge}</h3>"]
    if cohort.synthetic:
        out.append(note("Computer-generated phantoms (marked synthetic by its README); no patient data."))
    if cohort.labels_csv is not None:
        out.append(_labels_table(cohort.labels_csv))
    if cohort.split_files:
        out.append(_covidx_table(cohort.split_files))
    return "".join(out)


def _labels_table(path: Path) -> str:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return note(f"labels.csv could not be read ({exc}).")
    if not rows:
        return note("labels.csv is empty.")
    columns = set(rows[0])
    label_columns = [c for c in ("label", "volume_label", "class", "diagnosis") if c in columns][:2]
    if not label_columns:
        return note("labels.csv has no label column (label or volume_label).")
    per_patient: dict[str, tuple[str, str]] = {}
    for k, row in enumerate(rows):
        patient = (row.get("patient_id") or row.get("patient") or str(k)).strip()
        # With both the slice and the volume label ("NCP" and "COVID-19") show them as a pair.
        label = " / ".join(dict.fromkeys((row.get(c) or "?").strip() for c in label_columns))
        per_patient[patient] = ((row.get("split") or "all").strip().lower() or "all", label)
    counts = Counter(per_patient.values())
    splits = _ordered({s for s, _ in counts})
    labels = _class_order({c for _, c in counts})
    body = [[s, *(str(counts.get((s, c), 0)) for c in labels), str(sum(counts.get((s, c), 0) for c in labels))]
            for s in splits]
    body.append(["total", *(str(sum(counts.get((s, c), 0) for s in splits)) for c in labels),
                 str(len(per_patient))])
    return table(["Split", *labels, "All"], body, caption="Patients per split and class (labels.csv)",
                 css="figures")


def _covidx_table(split_files: list[Path]) -> str:
    from ..constants import SLICE_CLASSES
    from ..covidx import read_split
    from ..errors import CovidctError
    from .discover import SPLIT_SUFFIX

    body = []
    for path in sorted(split_files, key=lambda p: _split_rank(p.name[: -len(SPLIT_SUFFIX)])):
        try:
            records = read_split(path)
        except CovidctError as exc:
            body.append([path.name, f"unreadable: {exc.message}", *([""] * len(SLICE_CLASSES))])
            continue
        cells = []
        for label in range(len(SLICE_CLASSES)):
            members = [r for r in records if r.label == label]
            cells.append(f"{len(members):,} slices / {len({r.patient for r in members}):,} patients")
        body.append([path.name[: -len(SPLIT_SUFFIX)], *cells,
                     f"{len(records):,} slices / {len({r.patient for r in records}):,} patients"])
    return table(["Split", *SLICE_CLASSES, "All"], body,
                 caption="Slices and patients per split and class (COVIDx split files)")


def _class_order(labels: set[str]) -> list[str]:
    """The methods' class order (Control/Normal first, COVID-19 last); unknown labels after."""
    known = [*VOLUME_CLASSES, *SLICE_CLASSES]

    def rank(label: str) -> tuple[int, str]:
        first = label.split(" / ")[0]
        return (known.index(first) % len(VOLUME_CLASSES) if first in known else len(known), label)

    return sorted(labels, key=rank)


def _patients_text(counts: Any) -> str:
    if not isinstance(counts, Mapping):
        return "n/a"
    total = sum(v for v in counts.values() if isinstance(v, int))
    return f"{total} patients (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"


def _ordered(splits: set[str]) -> list[str]:
    return sorted(splits, key=_split_rank)


def _split_rank(name: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


def run_method(run: TrainingRun) -> str:
    """Which method a training run trained, from its settings."""
    if "arch" in run.config or "crop" in run.config:
        return METHOD_BIT
    if "denoiser_epochs" in run.config or "volume_slices" in run.config:
        return METHOD_COVIDCTNET
    return ""


def _run_data_row(run: TrainingRun, found: Findings) -> list[str] | None:
    data = run.config.get("data")
    summary_data = (run.summary or {}).get("data")
    if not isinstance(data, Mapping) and isinstance(summary_data, Mapping) and \
            isinstance(summary_data.get("patients"), Mapping):
        # CovidCTNet: patients per split and class in summary.json.
        per_split = summary_data["patients"]
        return [found.relative(run.path), _patients_text(per_split.get("train")),
                _patients_text(per_split.get("val")), "yes" if run.synthetic else "no"]
    if not isinstance(data, Mapping):
        return None

    def describe(part: Any) -> str:
        if not isinstance(part, Mapping):
            return "n/a"
        per_class = part.get("per_class") or {}
        classes = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in per_class.items())
        items = part.get("slices", part.get("scans", part.get("n")))
        head = f"{count(items)} {'slices' if 'slices' in part else 'items'}" if items is not None else ""
        patients = f", {count(part.get('patients'))} patients" if part.get("patients") is not None else ""
        return f"{head}{patients}" + (f" ({classes})" if classes else "")

    return [found.relative(run.path), describe(data.get("train")), describe(data.get("val")),
            "yes" if run.synthetic else "no"]


# One evaluation ----------------------------------------------------------------------------

def evaluation_html(ev: Evaluation, found: Findings) -> str:
    metrics = ev.results.get("metrics") or {}
    levels = levels_of(metrics)
    if not levels:
        return note("results.json holds no per-class figures.")
    prov = ev.provenance
    model = prov.get("model") if isinstance(prov.get("model"), Mapping) else {}
    settings = prov.get("settings") or {}
    intro = key_values([
        ("Folder", found.relative(ev.path)),
        ("Data", found.relative(prov["data"]) if prov.get("data") else None),
        ("Split", prov.get("split")),
        ("Patients", count(prov.get("n_patients"))),
        ("Scored items", f"{count(prov.get('n_items'))} {'scans' if prov.get('level') == 'scan' else 'slices'}"),
        ("Model", _model_text(model)),
        ("Patient-level rule", (f"{settings.get('patient_rule')} of the slice probabilities"
                                if prov.get("level") == "slice" and settings.get("patient_rule") else None)),
        ("Synthetic data", "yes" if ev.synthetic else "no"),
    ])
    parts = [intro, overall_table(levels), per_class_table(levels), prf_table(levels),
             covid_table(levels), operating_table(levels), ci_footnote(levels)]
    parts.append(_figures_html(ev, levels))
    parts.append(gallery_html(ev))
    parts.append(localisation_html(ev))
    parts.append(tsne_html(ev))
    parts.append(lungs_html(ev))
    return "".join(parts)


def localisation_html(ev: Evaluation) -> str:
    """Explanations scored against the synthetic cohort's true lesion masks, when it has them."""
    from ..explain.localisation import localisation_lines

    result = ev.localisation
    if not result:
        return ""
    title = "Explanations against the true lesions (SYNTHETIC truth)"
    text = note(" ".join(localisation_lines(result)) + (f" ({result['what']}.)" if result.get("what") else ""))
    if ev.localisation_png is None or not ev.localisation_png.is_file():
        return subsection(title, text)
    caption = ("left, the pre-processed CT slice with most lesion; middle, CovidCTNet's infection "
               "map inside the lungs; right, the phantom's true lesion mask")
    return subsection(title, text + figure(img(ev.localisation_png.read_bytes(), "image/png",
                                                "infection map and true lesion mask"),
                                            caption, "what the denoiser removed, next to where the "
                                                     "generator painted lesions"))


def lungs_html(ev: Evaluation) -> str:
    """The lung mask against the true lungs and the involvement against the true lesion share
    (lungs.json, written by covidct evaluate on covidct synth cohorts)."""
    found = ev.lungs
    if not found or not found.get("per_scan"):
        return ""
    versus = found.get("involvement_vs_truth") or {}
    coverage = found.get("lesion_coverage") or {}
    intro = key_values([
        ("Scans", count(found.get("n_scans"))),
        ("Lung mask Dice vs true lungs", f"mean {dec(found['dice']['mean'])}, min {dec(found['dice']['min'])}"),
        ("True lesion voxels inside the mask", (f"mean {pct(coverage.get('mean'))}, min "
                                                f"{pct(coverage.get('min'))}") if coverage else None),
        ("Involvement vs true lesion % (research measurement)",
         f"Pearson r {dec(versus.get('pearson_r'), 2)}, mean absolute error "
         f"{dec(versus.get('mae_percent_points'), 2)} percentage points"),
        ("Synthetic data", "yes" if found.get("synthetic") else "no"),
    ])
    rows = [[esc(e["patient_id"]), esc(e["label"]), dec(e["dice"]), dec(e.get("lesion_coverage"), 2),
             dec(e["true_lesion_percent"], 1), dec(e["involved_percent"], 1), count(e["severity_score"])]
            for e in found["per_scan"]]
    body = intro + table(["Patient", "Class", "Dice", "Lesion coverage", "True lesion %",
                          "Involved % (HU rule)", "Zone score (0-24)"], rows,
                         caption="Lung mask (covidct.lungs, HU rule) and share of lung involved, per "
                                 "scan. Involvement is a research measurement, not a clinical score.",
                         raw=True)
    return subsection("Lungs: mask and involvement", body)


def _model_text(model: Mapping[str, Any]) -> str | None:
    if not model:
        return None
    bits = [str(model.get(k)) for k in ("name", "arch", "init", "input") if model.get(k)]
    file = model.get("file")
    # Models describe their file as {"name", "sha256"}; older outputs as a name + "sha256".
    sha = (file.get("sha256") if isinstance(file, Mapping) else None) or model.get("sha256")
    if isinstance(file, Mapping):
        file = file.get("name")
    if file:
        bits.append(f"file {file}")
    if sha:
        bits.append(f"sha256 {str(sha)[:16]}")
    return ", ".join(dict.fromkeys(bits)) or None


def _level_header(levels: Mapping[str, Any]) -> list[str]:
    return [figures.level_title(name) for name in levels]


def overall_table(levels: Mapping[str, Mapping[str, Any]]) -> str:
    positive = next(iter(levels.values())).get("positive_class") or "COVID-19"
    rows_spec = [
        ("Accuracy", ("accuracy",), pct),
        ("Macro-average sensitivity", ("macro", "sensitivity"), pct),
        ("Macro-average specificity", ("macro", "specificity"), pct),
        ("Macro-average F1", ("macro", "f1"), dec),
        ("Macro-average AUC (one-vs-rest)", ("macro", "auc"), dec),
        (f"{positive} vs rest: sensitivity", ("binary", "sensitivity"), pct),
        (f"{positive} vs rest: specificity", ("binary", "specificity"), pct),
        (f"{positive} vs rest: AUC", ("binary", "auc"), dec),
        ("Expected calibration error (top label)", ("ece",), dec),
    ]
    rows = [[label, *(fmt(_get(r, *path)) for r in levels.values())] for label, path, fmt in rows_spec]
    rows.append(["Patients", *(count(r.get("n_patients")) for r in levels.values())])
    if not any(is_scan_level(name, r) for name, r in levels.items()):
        rows.append(["Slices", *(count(r.get("n_slices")) for r in levels.values())])
    caption = "Overall figures" + (", slice level and patient level side by side" if len(levels) > 1 else "")
    return subsection("Overall", table(["Figure", *_level_header(levels)], rows, caption=caption, css="figures"))


def per_class_table(levels: Mapping[str, Mapping[str, Any]]) -> str:
    """Sensitivity, specificity, PPV, NPV, AUC per class (the BiT paper's Table 2 layout)."""
    classes = list(next(iter(levels.values()))["class_names"])
    rows = []
    for cls in classes:
        for name, result in levels.items():
            per = (result.get("per_class") or {}).get(cls) or {}
            rows.append([cls if len(levels) == 1 else f"{cls}, {figures.level_title(name).lower()}",
                         pct(per.get("sensitivity")), pct(per.get("specificity")), pct(per.get("ppv")),
                         pct(per.get("npv")), dec(per.get("auc")), count(per.get("support"))])
    return subsection("Per class: sensitivity, specificity, PPV, NPV", table(
        ["Class", "Sensitivity", "Specificity", "PPV", "NPV", "AUC (one-vs-rest)", "Cases (n)"], rows,
        caption="Each class against the others, as the BiT paper's Table 2", css="figures"))


def prf_table(levels: Mapping[str, Mapping[str, Any]]) -> str:
    """Precision, recall, F1 per class (the CovidCTNet paper's Table 3 layout)."""
    classes = list(next(iter(levels.values()))["class_names"])
    rows = []
    for cls in classes:
        for name, result in levels.items():
            per = (result.get("per_class") or {}).get(cls) or {}
            rows.append([cls if len(levels) == 1 else f"{cls}, {figures.level_title(name).lower()}",
                         dec(per.get("ppv")), dec(per.get("sensitivity")), dec(per.get("f1"))])
    for name, result in levels.items():
        rows.append(["Accuracy" + ("" if len(levels) == 1 else f", {figures.level_title(name).lower()}"),
                     dec(result.get("accuracy")), "", ""])
    return subsection("Per class: precision, recall, F1", table(
        ["Class", "Precision", "Recall", "F1-score"], rows,
        caption="As the CovidCTNet paper's Table 3 (precision = PPV, recall = sensitivity)", css="figures"))


def covid_table(levels: Mapping[str, Mapping[str, Any]]) -> str:
    first = next(iter(levels.values()))
    positive = (first.get("binary") or {}).get("positive_class")
    if not positive:
        return subsection("COVID-19 vs rest", note("No COVID-19 class in this model's classes."))
    rows_spec = [("Sensitivity", "sensitivity", pct), ("Specificity", "specificity", pct),
                 ("PPV", "ppv", pct), ("NPV", "npv", pct), ("Accuracy", "accuracy", pct),
                 ("F1", "f1", dec), ("AUC", "auc", dec), ("ECE", "ece", dec)]
    rows = [[label, *(fmt(_get(r, "binary", key)) for r in levels.values())] for label, key, fmt in rows_spec]
    return subsection(f"{positive} vs rest", table(
        ["Figure", *_level_header(levels)], rows, css="figures",
        caption=f"{positive} against all other classes together, at the model's usual call "
                f"(the class with the highest probability)"))


def operating_table(levels: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    positive = None
    for name, result in levels.items():
        binary = result.get("binary") or {}
        positive = positive or binary.get("positive_class")
        for point in binary.get("operating_points") or []:
            value = lambda key: figure_parts(point.get(key))[0]
            threshold = value("threshold")
            rows.append([figures.level_title(name), pct(point.get("target_sensitivity"), 0),
                         "n/a" if threshold is None else f"{threshold:.3f}",
                         pct(point.get("sensitivity")), pct(point.get("specificity")),
                         pct(point.get("ppv")), pct(point.get("npv")),
                         " / ".join(count(point.get(k)) for k in ("tp", "fp", "fn", "tn"))])
    if not rows:
        return ""
    return subsection("Operating points", table(
        ["Level", "Target sensitivity", f"Threshold on P({positive})", "Sensitivity", "Specificity",
         "PPV", "NPV", "TP / FP / FN / TN"], rows, css="figures",
        caption=f"The {positive} probability threshold that reaches each target sensitivity, and the "
                "specificity it costs") + note(
        "Choosing a threshold on the same data it is reported on flatters it; confirm a chosen "
        "threshold on independent data."))


def _figures_html(ev: Evaluation, levels: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    out.append(_safe_figure(lambda: figures.confusion_matrices(levels), "Normalised confusion matrices",
                            HOW["confusion"], "confusion"))
    roc_levels = dict(levels)
    if not any(r.get("roc") for r in levels.values()) and ev.has_scores:
        roc_levels = _roc_from_scores(ev, levels)
    if any(r.get("roc") for r in roc_levels.values()):
        out.append(_safe_figure(lambda: figures.roc_curves(roc_levels), "ROC curves, one class against the rest",
                                HOW["roc"], "roc"))
    else:
        out.append(missing("No ROC curves", "roc points in results.json or scores in scores.npz"))
    if any(r.get("calibration") for r in levels.values()):
        out.append(_safe_figure(lambda: figures.reliability_diagrams(levels),
                                "Calibration: reliability diagrams", HOW["calibration"], "calibration"))
    else:
        out.append(missing("No calibration data", "calibration bins in results.json"))
    return subsection("Figures", figure_row(out))


def _roc_from_scores(ev: Evaluation, levels: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    from ..evaluation import load_scores

    scores = load_scores(ev.path / "scores.npz")
    out = {}
    for name, result in levels.items():
        if name in ("slice", "scan", "model"):
            out[name] = {**result, "roc": figures.roc_from_scores(scores.y_true, scores.y_prob,
                                                                 scores.class_names)}
    return out or dict(levels)


def _safe_figure(draw, caption: str, how: str, what: str) -> str:
    try:
        data = draw()
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("report: %s figure skipped (%s)", what, exc)
        return note(f"{caption}: could not be drawn from these results ({exc}).")
    return figure(img(data, "image/svg+xml", caption), caption, how)


def gallery_html(ev: Evaluation) -> str:
    kind = "gradcam" if ev.method == METHOD_BIT else "infection"
    title = "Grad-CAM gallery" if kind == "gradcam" else "Infection-map gallery"
    index = ev.galleries.get(kind)
    if not index:
        explained = (ev.explain or {}).get(kind) or {}
        if explained.get("note"):
            return subsection(title, note(explained["note"]))
        return subsection(title, missing("No gallery for this evaluation",
                                         f"{kind}/index.json; run covidct.explain.explain_evaluation"))
    tiles = []
    for item in index["items"]:
        path = ev.path / kind / str(item.get("file", ""))
        if not path.is_file() or path.parent != ev.path / kind:
            continue
        tiles.append(_tile(path.read_bytes(), item))
    if not tiles:
        return subsection(title, note("The gallery's pictures are missing."))
    selection = (ev.explain or {}).get("selection")
    intro = note(f"Cases chosen {selection}." if selection else "Chosen cases.")
    css = "gallery wide" if kind == "infection" else "gallery"
    return subsection(title, intro + figure(f'<div class="{css}">{"".join(tiles)}</div>', "", HOW[kind]))


def _tile(png: bytes, item: Mapping[str, Any]) -> str:
    true, called = item.get("true_class", "?"), item.get("predicted_class", "?")
    probabilities = item.get("probabilities") or {}
    p_called = probabilities.get(called)
    correct = item.get("kind") == "correct" or true == called
    badge = ('<span class="badge ok">correct</span>' if correct else '<span class="badge bad">mistake</span>')
    probs = ", ".join(f"{esc(k)} {100 * float(v):.0f}%" for k, v in probabilities.items())
    level = item.get("level", "")
    caption = (f"{badge} true <b>{esc(true)}</b>, called <b>{esc(called)}</b>"
               + (f" ({100 * float(p_called):.0f}%)" if isinstance(p_called, (int, float)) else "")
               + f"<br><span class=\"note\">{esc(level)} probabilities: {probs}</span>")
    if item.get("explained_class") and item.get("explained_class") != called:
        caption += f"<br>map explains {esc(item['explained_class'])}"
    return f'<div class="tile">{img(png, "image/png", f"true {true}, called {called}")}<p>{caption}</p></div>'


def tsne_html(ev: Evaluation) -> str:
    info = (ev.explain or {}).get("tsne") or {}
    if ev.tsne is None or not ev.tsne.is_file():
        if info.get("note"):
            return subsection("t-SNE of the penultimate-layer features", note(info["note"]))
        return subsection("t-SNE of the penultimate-layer features",
                          missing("No t-SNE map for this evaluation", "tsne.png"))
    details = []
    if info.get("n"):
        details.append(f"{info['n']:,} cases")
    if info.get("feature_dim"):
        details.append(f"{info['feature_dim']}-dimensional features")
    agreement = info.get("neighbour_agreement")
    if isinstance(agreement, (int, float)):
        details.append(f"{100 * agreement:.1f}% of cases have a nearest neighbour on the map of their own class")
    caption = "t-SNE of the penultimate-layer features, coloured by true class (as the BiT paper's Fig. 4)"
    return subsection("t-SNE of the penultimate-layer features",
                      (note("; ".join(details) + ".") if details else "")
                      + figure(img(ev.tsne.read_bytes(), "image/png", "t-SNE map", css="narrow"),
                               caption, HOW["tsne"]))


def method_sections(found: Findings) -> list[tuple[str, str, str]]:
    """(anchor, title, html) per evaluation; a short note for a method with none."""
    out = []
    for method in (METHOD_BIT, METHOD_COVIDCTNET):
        evaluations = [ev for ev in found.evaluations if ev.method == method]
        if not evaluations:
            out.append((f"eval-{method}", method_title(method),
                         missing(f"No evaluation of the {method_title(method).split(' (')[0].lower()} found",
                                 f'results.json with "method": "{method}"')))
        for k, ev in enumerate(evaluations):
            out.append((f"eval-{method}-{k}", evaluation_title(ev), evaluation_html(ev, found)))
    others = [ev for ev in found.evaluations if ev.method not in (METHOD_BIT, METHOD_COVIDCTNET)]
    for k, ev in enumerate(others):
        out.append((f"eval-other-{k}", evaluation_title(ev), evaluation_html(ev, found)))
    return out


# Experiments ---------------------------------------------------------------------------------

def experiments_section(found: Findings) -> str:
    """Each `covidct experiment` folder: its table (published rows marked) and its figure."""
    if not found.experiments:
        return section("experiments", "Experiments", missing(
            "No paper experiments found", "experiment.json written by covidct experiment"))
    parts = []
    for exp in found.experiments:
        content = exp.content
        badge = ' <span class="badge syn">SYNTHETIC</span>' if exp.synthetic else ""
        parts.append(f"<h3>{esc(content.get('title') or content['experiment'])} "
                     f"<code>{esc(found.relative(exp.path))}</code>{badge}</h3>")
        runs = content.get("runs") or []
        failed = [r for r in runs if r.get("status") == "failed"]
        data = content.get("data") or {}
        parts.append(key_values([("reproduces", content.get("paper")), ("scale", content.get("scale")),
                                 ("data", data.get("description")),
                                 ("runs", f"{len(runs) - len(failed)} finished, {len(failed)} failed")],
                                columns=2))
        table_spec = content["table"]
        parts.append(table(table_spec.get("header") or [], table_spec.get("rows") or [],
                           caption=table_spec.get("caption", "")))
        for text in content.get("notes") or []:
            parts.append(note(text))
        for run in failed:
            parts.append(note(f"Failed run {run.get('id')}: {run.get('error')}"))
        if exp.figure is not None and exp.figure.is_file():
            parts.append(figure(img(exp.figure.read_bytes(), "image/png", content["experiment"]),
                                f"{content.get('title')} ({content.get('paper')})", HOW["experiments"]))
    return section("experiments", "Experiments", "".join(parts))


# Training ------------------------------------------------------------------------------------

#: Settings shown for a run, when present (slice classifier, then CovidCTNet).
_RUN_KEYS = ("arch", "init", "weights", "resize", "crop", "schedule", "batch_size", "lr", "momentum",
             "mixup_alpha", "balanced", "stage", "binary", "slice_size", "volume_slices",
             "max_denoised_slices", "denoiser_epochs", "denoiser_lr", "epochs", "patience",
             "ablation", "seed", "device", "processes")


def training_section(found: Findings) -> str:
    from ..explain.curves import plot_training_curves, read_history
    from ..explain.plotting import figure_bytes

    # An experiment's runs are summarised in its own section; dozens of curves would bury the rest.
    runs = [r for r in found.runs if not any(e.path in r.path.parents for e in found.experiments)]
    skipped = len(found.runs) - len(runs)
    skipped_note = note(f"{skipped} training run(s) of the experiments above are not drawn one by one "
                        "(see the Experiments section; each run folder holds its history.csv).") if skipped else ""
    if not runs:
        return section("training", "Training", skipped_note or missing(
            "No training runs found", "folders with config.json and history.csv"))
    parts, histories = [skipped_note], {}
    for run in runs:
        name = found.relative(run.path)
        badge = ' <span class="badge syn">SYNTHETIC</span>' if run.synthetic else ""
        method = run_method(run)
        parts.append(f"<h3>{esc(method_title(method) + ': ' if method else '')}run "
                     f"<code>{esc(name)}</code>{badge}</h3>")
        summary = run.summary or {}
        facts = [(k.replace("_", " "), _plain(run.config[k])) for k in _RUN_KEYS if k in run.config]
        # summary.json is written last by both methods' training, so it marks a finished run.
        finished = run.summary is not None and summary.get("finished", True)
        facts += [("finished", "yes" if finished else "no (no summary.json yet)"),
                  ("best validation accuracy", pct(summary["best_val_acc"]) if isinstance(summary.get("best_val_acc"), (int, float)) else None),
                  ("model weights", summary.get("model_weights")),
                  ("training time", f"{summary['train_seconds_this_session']:.0f} s"
                   if isinstance(summary.get("train_seconds_this_session"), (int, float)) else None)]
        parts.append(key_values(facts, columns=3))
        try:
            history = read_history(run.path / "history.csv")
            fig = plot_training_curves(history, synthetic=run.synthetic)
        except Exception as exc:  # a half-written or foreign history must not sink the report
            parts.append(note(f"history.csv could not be plotted ({exc})."))
            continue
        histories[name] = history
        parts.append(figure(img(figure_bytes(fig, "svg"), "image/svg+xml", "training curves"),
                            "Training curves: loss, learning rate and validation accuracy over steps",
                            HOW["curves"]))
    with_acc = {k: {c: v for c, v in h.items() if c in ("step", "epoch", "val_acc")}
                for k, h in histories.items() if "val_acc" in h and np.isfinite(h["val_acc"]).any()}
    if len(with_acc) > 1:
        fig = plot_training_curves(with_acc, title="Validation accuracy of all runs", synthetic=found.synthetic)
        parts.append(figure(img(figure_bytes(fig, "svg"), "image/svg+xml", "validation accuracy"),
                            "Validation accuracy of every run (as the BiT paper's Fig. 7)",
                            "one line per run; higher and earlier is better."))
    return section("training", "Training", "".join(parts))


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


# Example predictions --------------------------------------------------------------------------

def predictions_section(found: Findings) -> str:
    if not found.predictions:
        return section("predictions", "Example predictions",
                       missing("No example predictions found", "<method>.json from covidct predict --out"))
    parts = []
    for pred in found.predictions:
        content = pred.content
        method = content.get("method", "")
        probabilities = content.get("probabilities") or {}
        scan = content.get("scan") or {}
        badge = ' <span class="badge syn">SYNTHETIC</span>' if pred.synthetic else ""
        parts.append(f"<h3>{esc(method_title(method))}: <code>{esc(found.relative(pred.path.parent))}</code>{badge}</h3>")
        parts.append(table(["Class", "Probability"],
                           [[k, f"{100 * float(v):.1f}%"] for k, v in probabilities.items()
                            if isinstance(v, (int, float))],
                           caption=f"Call: {content.get('label', 'n/a')}", css="figures"))
        parts.append(key_values([
            ("How the call was made", content.get("aggregation")),
            ("Scan", _scan_text(scan)),
            ("Time", f"{sum(v for v in (content.get('timings_s') or {}).values() if isinstance(v, (int, float)) and not isinstance(v, bool)):.1f} s"
             if content.get("timings_s") else None),
        ]))
        parts.append(_prediction_lungs(content.get("lungs") or {}))
        for picture in pred.pictures[:6]:
            parts.append(figure(img(picture.read_bytes(), "image/png", picture.stem, css="picture"),
                                _picture_title(picture.stem, method),
                                HOW["infection"] if "infection" in picture.stem else ""))
    shown: set[Path] = set()
    for pred in found.predictions:  # one lung picture per prediction folder
        picture = pred.path.parent / "lungs.png"
        if picture.is_file() and picture not in shown:
            shown.add(picture)
            parts.append(figure(img(picture.read_bytes(), "image/png", "lung mask", css="picture"),
                                f"Lung mask used by both methods ({found.relative(pred.path.parent)})",
                                "Right lung outlined in cyan, left in yellow (covidct.lungs, HU rule)."))
    return section("predictions", "Example predictions", "".join(parts))


def _prediction_lungs(lungs: Mapping[str, Any]) -> str:
    """The lung volumes and involvement of a prediction (a research measurement)."""
    found = lungs.get("involvement")
    if not isinstance(found, Mapping):
        return ""
    volumes = found.get("lung_volume_ml") or {}
    zones = ", ".join(f"{z.get('zone')} {z.get('score')}" for z in found.get("zones") or [])
    return key_values([
        ("Lung volume (right / left)", f"{volumes.get('right')} / {volumes.get('left')} mL"),
        ("Lung with infection-like density (research measurement)",
         f"{found.get('involved_percent')}% ({found.get('involved_ml')} mL; ground glass "
         f"{found.get('ground_glass_percent')}%, consolidation {found.get('consolidation_percent')}%)"),
        ("Lung under the CovidCTNet infection map", (f"{found['map_share_percent']}% (map > "
                                                     f"{found.get('map_threshold')})")
         if "map_share_percent" in found else None),
        ("Zone scores (0-4 each; total 0-24)", f"{zones}; total {found.get('severity_score')}"),
    ])


PICTURE_TITLES = {"infection-slices": "Infection map on the most affected slices",
                  "infection-mip": "Infection map: maximum-intensity projections"}


def _picture_title(stem: str, method: str) -> str:
    key = stem[len(method):].strip("-_ ") if stem.startswith(method) else stem
    return PICTURE_TITLES.get(key, key.replace("-", " ").replace("_", " ").capitalize() or stem)


def _scan_text(scan: Mapping[str, Any]) -> str | None:
    shape, spacing = scan.get("shape"), scan.get("spacing_mm")
    if not shape:
        return None
    text = " x ".join(map(str, shape)) + " voxels"
    if spacing:
        text += ", spacing " + " x ".join(f"{float(s):.2f}" for s in spacing) + " mm"
    if scan.get("units"):
        text += f", {scan['units']}"
    return text


# Reproducibility -------------------------------------------------------------------------------

def reproducibility_section(found: Findings, report_command: str) -> str:
    parts = []
    for run in found.runs:
        parts.append(f"<h3>Training run <code>{esc(found.relative(run.path))}</code></h3>")
        if run.config.get("command"):
            parts.append(code(str(run.config["command"])))
        versions = run.config.get("versions")
        if isinstance(versions, Mapping):
            parts.append(key_values(sorted(versions.items())))
    for ev in found.evaluations:
        prov = ev.provenance
        parts.append(f"<h3>Evaluation <code>{esc(found.relative(ev.path))}</code></h3>")
        if prov.get("command"):
            command = str(prov["command"])
            parts.append(code(command) if not command.startswith("-c") else
                         note("Run from a Python session (no command line to repeat)."))
        parts.append(key_values([("covidct", prov.get("covidct_version") or ev.results.get("covidct_version")),
                                 ("python", prov.get("python")),
                                 ("results written (UTC)", ev.results.get("created_utc")),
                                 ("bootstrap", _boot_text(prov.get("settings")))]))
    parts.append("<h3>This report</h3>" + code(report_command) + key_values(_own_versions()))
    return section("reproducibility", "Commands and versions", "".join(parts))


def _boot_text(settings: Any) -> str | None:
    if not isinstance(settings, Mapping) or "n_boot" not in settings:
        return None
    return f"{settings['n_boot']} resamples of patients, seed {settings.get('seed', '?')}"


def _own_versions() -> list[tuple[str, str]]:
    import platform

    import matplotlib

    from .. import __version__

    return [("covidct", __version__), ("python", platform.python_version()),
            ("numpy", np.__version__), ("matplotlib", matplotlib.__version__),
            ("platform", platform.platform())]


# Reading guide ---------------------------------------------------------------------------------

GLOSSARY = (
    ("Sensitivity (recall)", "of the cases that have the condition, the share the model called so."),
    ("Specificity", "of the cases that do not have it, the share the model did not call so."),
    ("PPV (precision)", "of the cases the model called so, the share that really have it; depends on "
                        "how common the condition is in the tested group."),
    ("NPV", "of the cases the model did not call so, the share that really do not have it."),
    ("F1", "the harmonic mean of precision and recall (0 to 1)."),
    ("AUC", "area under the ROC curve: the chance that a case of the class scores higher than one "
            "of another class (0.5 is chance, 1 is perfect)."),
    ("95% confidence interval", "the range of values compatible with the data; here from bootstrap "
                                "resampling of whole patients."),
    ("Slice level / patient level", "the slice classifier scores single CT slices; a patient's call "
                                    "combines the probabilities of all their slices."),
    ("ECE", "expected calibration error: the average gap between the stated probability and the "
            "observed frequency (0 is perfect)."),
)


def glossary_section() -> str:
    long = {**SLICE_CLASS_LONG, "Normal": "no pneumonia"}
    classes = (("Classes of the slice classifier", "; ".join(f"{c}: {long[c]}" for c in SLICE_CLASSES)),
               ("Classes of CovidCTNet", "Control: no pneumonia; CAP: community-acquired pneumonia; "
                                         "COVID-19: COVID-19 pneumonia"))
    items = "".join(f"<dt>{esc(term)}</dt><dd>{esc(text[:1].upper() + text[1:])}</dd>"
                    for term, text in (*classes, *GLOSSARY))
    return section("glossary", "How to read the figures", f'<dl class="glossary">{items}</dl>')
