"""One section per evaluation: the figures tables (BiT paper's Table 2, CovidCTNet paper's Table 3,
COVID-19 vs rest, operating points), ROC / confusion / calibration figures, galleries, t-SNE,
localisation and lungs."""
from __future__ import annotations

import logging
from typing import Any, Mapping

from ..constants import METHOD_BIT, METHOD_COVIDCTNET
from ..evaluation import load_scores
from ..explain.localisation import localisation_lines
from ..metrics.tables import figure_parts
from . import figures
from .common import evaluation_title, is_scan_level, levels_of, method_title
from .discover import Evaluation, Findings
from .guide import HOW
from .html import (count, dec, esc, figure, figure_row, img, key_values, missing, note, pct,
                   subsection, table)

log = logging.getLogger(__name__)


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


def _get(result: Mapping[str, Any], *path: str) -> Any:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


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
    if not all(is_scan_level(name, r) for name, r in levels.items()):
        rows.append(["Slices", *("" if is_scan_level(name, r) else count(r.get("n_slices"))
                                 for name, r in levels.items())])
    caption = "Overall figures" + (", levels side by side" if len(levels) > 1 else "")
    if "series" in levels:
        caption += ("; whole series: each test patient's DICOM series called as covidct predict "
                    "calls it (its own slice choice and series rule)")
    return subsection("Overall", table(["Figure", *_level_header(levels)], rows, caption=caption, css="figures"))


def _row_name(text: str, level: str, levels: Mapping[str, Any]) -> str:
    """A row's name, with its level when the table shows several ("NCP, patient level")."""
    return text if len(levels) == 1 else f"{text}, {figures.level_title(level).lower()}"


def _per_class_rows(levels: Mapping[str, Mapping[str, Any]], cells) -> list[list[str]]:
    """One row per class and level: its name, then ``cells(per_class_figures)``."""
    classes = list(next(iter(levels.values()))["class_names"])
    return [[_row_name(cls, name, levels), *cells((result.get("per_class") or {}).get(cls) or {})]
            for cls in classes for name, result in levels.items()]


def per_class_table(levels: Mapping[str, Mapping[str, Any]]) -> str:
    """Sensitivity, specificity, PPV, NPV, AUC per class (the BiT paper's Table 2 layout)."""
    rows = _per_class_rows(levels, lambda per: [
        pct(per.get("sensitivity")), pct(per.get("specificity")), pct(per.get("ppv")),
        pct(per.get("npv")), dec(per.get("auc")), count(per.get("support"))])
    return subsection("Per class: sensitivity, specificity, PPV, NPV", table(
        ["Class", "Sensitivity", "Specificity", "PPV", "NPV", "AUC (one-vs-rest)", "Cases (n)"], rows,
        caption="Each class against the others, as the BiT paper's Table 2", css="figures"))


def prf_table(levels: Mapping[str, Mapping[str, Any]]) -> str:
    """Precision, recall, F1 per class (the CovidCTNet paper's Table 3 layout)."""
    rows = _per_class_rows(levels, lambda per: [
        dec(per.get("ppv")), dec(per.get("sensitivity")), dec(per.get("f1"))])
    for name, result in levels.items():
        rows.append([_row_name("Accuracy", name, levels), dec(result.get("accuracy")), "", ""])
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


#: The explanation each method's evaluation writes (its model's ``overlay``), for evaluations
#: whose outputs do not say (no gallery and no explain.json).
_OVERLAYS = {METHOD_BIT: "gradcam", METHOD_COVIDCTNET: "infection"}


def _overlay_of(ev: Evaluation) -> str:
    """The gallery kind the evaluation's own outputs name (explain.json's keys and the gallery
    folders are the model's overlay name), else the method's."""
    for kind in (*ev.galleries, *(ev.explain or {})):
        if kind in _OVERLAYS.values():
            return kind
    return _OVERLAYS.get(ev.method, "gradcam")


def gallery_html(ev: Evaluation) -> str:
    kind = _overlay_of(ev)
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
