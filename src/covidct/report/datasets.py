"""The Data section: the dataset folders found (labels.csv, COVIDx split files) and the data each
evaluation and training run used, as counts only."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from ..constants import SLICE_CLASSES, SPLITS, VOLUME_CLASSES
from ..covidx import SPLIT_FILES, read_split, split_of
from ..errors import CovidctError, DatasetError
from ..labels import read_labels
from .common import evaluation_title
from .discover import Cohort, Findings, TrainingRun
from .html import count, esc, missing, note, section, subsection, table


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
                                     f"labels.csv, {SPLIT_FILES}, results.json, config.json")
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
        rows = read_labels(path)
    except DatasetError as exc:
        return note(f"labels.csv could not be read ({exc.message}).")
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
    body = []
    for path in sorted(split_files, key=lambda p: _split_rank(split_of(p))):
        try:
            records = read_split(path)
        except CovidctError as exc:
            body.append([path.name, f"unreadable: {exc.message}", *([""] * len(SLICE_CLASSES))])
            continue
        cells = []
        for label in range(len(SLICE_CLASSES)):
            members = [r for r in records if r.label == label]
            cells.append(f"{len(members):,} slices / {len({r.patient for r in members}):,} patients")
        body.append([split_of(path), *cells,
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
    return (SPLITS.index(name) if name in SPLITS else len(SPLITS), name)


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
