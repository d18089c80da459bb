"""CovidCTNet training cohorts: which scan is which patient, class and split.

Two layouts are read:

* the method's folder per class: ``DIR/Control/``, ``DIR/CAP/``, ``DIR/Covid/`` (also the
  class names themselves, any case), each holding one entry per patient: a DICOM series
  folder, a .zip of one, or a NIfTI file. The patient id is the entry's name.
* a labels CSV (``DIR/labels.csv`` or the CSV itself) with ``patient_id``, ``volume_label``
  (or ``label``) and optionally ``split`` and ``path`` columns. Without ``path`` the scan is
  looked for where ``covidct synth`` puts it (``covidctnet/<class>/<id>.nii.gz``,
  ``patients/<id>/ct.nii.gz``, ``patients/<id>/dicom``).

Without a split column the patients are split per class (stratified), seeded, so no patient
is ever on both sides of a split.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import SPLITS, VOLUME_CLASS_FOLDERS, VOLUME_CLASSES
from ..errors import DatasetError
from ..labels import LABELS_CSV, read_labels
from ..scanio.common import VOLUME_SUFFIXES, suffix_of, without_scan_suffix

_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                "validation": "val", "dev": "val", "test": "test", "holdout": "test"}
_LABEL_NAMES = {
    "control": "Control", "normal": "Control", "healthy": "Control",
    "cap": "CAP", "cp": "CAP", "pneumonia": "CAP", "common pneumonia": "CAP",
    "covid": "COVID-19", "covid-19": "COVID-19", "covid19": "COVID-19", "ncp": "COVID-19",
}
_TRUE = ("1", "true", "yes", "y")


@dataclass(frozen=True)
class CohortItem:
    patient_id: str
    label: str          # one of VOLUME_CLASSES
    path: Path
    split: str          # one of SPLITS

    @property
    def class_index(self) -> int:
        return VOLUME_CLASSES.index(self.label)


@dataclass
class Cohort:
    items: list[CohortItem]
    source: str
    layout: str                      # "folders" or "csv"
    split_from: str                  # "file" or "seeded stratified split (seed N)"
    synthetic: bool = False          # known from the labels file; scans may add to it
    notes: list[str] = field(default_factory=list)

    def split(self, name: str | None) -> list[CohortItem]:
        return list(self.items) if name in (None, "all") else [i for i in self.items if i.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Patients per split and class, for summaries."""
        out: dict[str, dict[str, int]] = {}
        for s in SPLITS:
            c = Counter(i.label for i in self.items if i.split == s)
            out[s] = {label: c.get(label, 0) for label in VOLUME_CLASSES}
        return out


def normalise_label(value: str, where: str | os.PathLike) -> str:
    label = _LABEL_NAMES.get(str(value).strip().lower())
    if label is None:
        raise DatasetError(f"unknown volume label {value!r}; expected one of "
                           f"{', '.join(VOLUME_CLASSES)}", where)
    return label


def load_cohort(source: str | os.PathLike, seed: int = 0, val_fraction: float = 0.15,
                test_fraction: float = 0.15) -> Cohort:
    """Read a cohort from a folder (per-class or with labels.csv) or a labels CSV."""
    source = Path(source)
    if not source.exists():
        raise DatasetError("no such data folder or labels file", source)
    if source.is_file():
        cohort = _from_csv(source)
    elif (source / LABELS_CSV).is_file():
        cohort = _from_csv(source / LABELS_CSV)
        cohort.source = str(source)
    elif _class_folders(source):
        cohort = _from_folders(source)
    elif (source / "covidctnet").is_dir() and _class_folders(source / "covidctnet"):
        cohort = _from_folders(source / "covidctnet")
    else:
        raise DatasetError("not a CovidCTNet cohort: expected class folders "
                           f"({', '.join(VOLUME_CLASS_FOLDERS)}) or a labels.csv", source)
    if not cohort.items:
        raise DatasetError("the cohort has no scans", source)
    unsplit = sum(i.split == "" for i in cohort.items)
    if 0 < unsplit < len(cohort.items):
        raise DatasetError(f"{unsplit} patients have no split while others have one; "
                           "fill the split column or leave it out", source)
    if unsplit:
        cohort.items = _stratified_split(cohort.items, seed, val_fraction, test_fraction)
        cohort.split_from = f"seeded stratified split by patient (seed {seed})"
    return cohort


def _class_folders(root: Path) -> dict[str, Path]:
    wanted = {name.lower(): label for name, label in zip(VOLUME_CLASS_FOLDERS, VOLUME_CLASSES)}
    wanted.update({label.lower(): label for label in VOLUME_CLASSES})
    return {wanted[d.name.lower()]: d for d in sorted(root.iterdir())
            if d.is_dir() and d.name.lower() in wanted}


def _patient_id(entry: Path) -> str:
    return without_scan_suffix(entry.name)


def _from_folders(root: Path) -> Cohort:
    items = []
    for label, folder in _class_folders(root).items():
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or (entry.is_file() and suffix_of(entry) not in VOLUME_SUFFIXES):
                continue
            items.append(CohortItem(_patient_id(entry), label, entry, ""))
    _check_unique(items, root)
    return Cohort(items, str(root), "folders", "file")


def _from_csv(path: Path) -> Cohort:
    rows = read_labels(path)
    columns = set(rows[0]) if rows else set()
    label_column = "volume_label" if "volume_label" in columns else "label"
    if "patient_id" not in columns or label_column not in columns:
        raise DatasetError("labels CSV needs patient_id and volume_label (or label) columns", path)
    by_patient: dict[str, CohortItem] = {}
    synthetic = False
    for line, row in enumerate(rows, start=2):
        pid = (row.get("patient_id") or "").strip()
        if not pid:
            raise DatasetError(f"line {line}: empty patient_id", path)
        label = normalise_label(row.get(label_column, ""), f"{path}:{line}")
        split = _split_name(row.get("split"), f"{path}:{line}")
        scan_path = _resolve_scan(path.parent, pid, label, (row.get("path") or "").strip(), line, path)
        synthetic |= str(row.get("synthetic", "")).strip().lower() in _TRUE
        item = CohortItem(pid, label, scan_path, split)
        previous = by_patient.get(pid)
        if previous and (previous.label, previous.split) != (label, split):
            raise DatasetError(f"line {line}: patient {pid} appears with two labels or splits", path)
        by_patient[pid] = item
    return Cohort(list(by_patient.values()), str(path), "csv", "file", synthetic)


def _split_name(value: str | None, where: str) -> str:
    if value is None or not value.strip():
        return ""
    name = _SPLIT_NAMES.get(value.strip().lower())
    if name is None:
        raise DatasetError(f"unknown split {value!r}; expected train, val or test", where)
    return name


def _resolve_scan(root: Path, pid: str, label: str, given: str, line: int, csv_path: Path) -> Path:
    if given:
        candidate = Path(given) if os.path.isabs(given) else root / given
        if not candidate.exists():
            raise DatasetError(f"line {line}: scan {given!r} not found", csv_path)
        return candidate
    folder = VOLUME_CLASS_FOLDERS[VOLUME_CLASSES.index(label)]
    for candidate in (root / "covidctnet" / folder / f"{pid}.nii.gz",
                      root / "patients" / pid / "ct.nii.gz",
                      root / "patients" / pid / "dicom"):
        if candidate.exists():
            return candidate
    raise DatasetError(f"line {line}: no scan found for patient {pid} (no path column, and "
                       f"nothing at covidctnet/{folder}/{pid}.nii.gz or patients/{pid}/)", csv_path)


def _check_unique(items: list[CohortItem], where: Path) -> None:
    seen = Counter(i.patient_id for i in items)
    repeated = [pid for pid, n in seen.items() if n > 1]
    if repeated:
        raise DatasetError(f"patient id {repeated[0]!r} appears in more than one class folder", where)


def _stratified_split(items: list[CohortItem], seed: int, val_fraction: float,
                      test_fraction: float) -> list[CohortItem]:
    """Assign train/val/test per class so each split keeps the class mix (by patient)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError("val and test fractions must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    out = []
    for label in VOLUME_CLASSES:
        group = sorted((i for i in items if i.label == label), key=lambda i: i.patient_id)
        order = rng.permutation(len(group))
        n_test = _share(len(group), test_fraction)
        n_val = _share(len(group) - n_test, val_fraction / (1 - test_fraction))
        splits = {}
        for rank, k in enumerate(order):
            splits[k] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        out += [CohortItem(item.patient_id, label, item.path, splits[k]) for k, item in enumerate(group)]
    return out


def _share(n: int, fraction: float) -> int:
    """round(n * fraction), but at least one when the fraction is positive and n allows it."""
    if fraction <= 0 or n < 3:
        return 0
    return max(1, int(round(n * fraction)))
