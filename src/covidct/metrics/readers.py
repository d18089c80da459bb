"""Reader study: radiologists' calls next to the model's on the same cases.

The reader file is a CSV with a header and at least the columns ``reader, case, label``
(any order, any case; extra columns ignored), one row per call. Labels are class names,
matched without regard to case; the folder names and long names in covidct.constants
are accepted too (e.g. "Covid" for "COVID-19"). Every reader, the average reader and the
model get the same figures (:func:`classification_metrics`), as the CovidCTNet paper's
Table 3 and Fig. 5. Each reader is scored on the cases they read; the model on every
case any reader read. The average reader is the mean of the readers' figures.

Error messages name line numbers, never case IDs, which may identify patients.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..constants import SLICE_CLASS_LONG, VOLUME_CLASS_FOLDERS, VOLUME_CLASSES
from ..errors import DatasetError
from .classification import classification_metrics

COLUMNS = ("reader", "case", "label")


@dataclass(frozen=True)
class ReaderCall:
    reader: str
    case: str
    label: int      # class index
    line: int       # where it came from, for messages


def label_lookup(class_names: Sequence[str]) -> dict[str, int]:
    """Lower-cased accepted spellings of each class -> class index."""
    index = {name.lower(): i for i, name in enumerate(class_names)}
    aliases = [*zip(VOLUME_CLASS_FOLDERS, VOLUME_CLASSES),
               *((long, short) for short, long in SLICE_CLASS_LONG.items())]
    for alias, name in aliases:
        if name in class_names:
            index.setdefault(alias.lower(), list(class_names).index(name))
    return index


def read_reader_csv(path: str | os.PathLike, class_names: Sequence[str]) -> list[ReaderCall]:
    """Parse and check a reader CSV; DatasetError (with the path) for any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError("reader file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the reader file ({exc.__class__.__name__})", path) from None
    rows = csv.reader(io.StringIO(text), strict=True)
    header, found = None, []
    try:
        for fields in rows:
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip().lower() for f in fields]
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise DatasetError(f"reader CSV needs a header with columns "
                                       f"{', '.join(COLUMNS)}; missing {', '.join(missing)}", path)
                continue
            if len(fields) != len(header):
                raise DatasetError(f"line {rows.line_num}: expected {len(header)} fields, "
                                   f"found {len(fields)}", path)
            row = dict(zip(header, fields))
            found.append(((row["reader"], row["case"], row["label"]), rows.line_num))
    except csv.Error as exc:
        raise DatasetError(f"line {rows.line_num}: malformed CSV ({exc})", path) from None
    if header is None:
        raise DatasetError("reader CSV is empty", path)
    return _calls(found, class_names, path, "line")


def _calls(rows: Iterable[tuple[tuple, int]], class_names, source, where: str) -> list[ReaderCall]:
    lookup = label_lookup(class_names)
    calls, seen = [], set()
    for (reader, case, label), line in rows:
        reader, case, label = (str(v).strip() for v in (reader, case, label))
        if not (reader and case and label):
            raise DatasetError(f"{where} {line}: reader, case and label must all be filled in",
                               source)
        if label.lower() not in lookup:
            raise DatasetError(f"{where} {line}: unknown label {label!r}; expected one of "
                               f"{', '.join(class_names)}", source)
        if (reader, case) in seen:
            raise DatasetError(f"{where} {line}: reader {reader!r} already called this case",
                               source)
        seen.add((reader, case))
        calls.append(ReaderCall(reader, case, lookup[label.lower()], line))
    if not calls:
        raise DatasetError("no reader calls", source)
    return calls


def _rows(readers) -> Iterable[tuple[tuple, int]]:
    for i, row in enumerate(readers, start=1):
        if isinstance(row, Mapping):
            row = tuple(row.get(c, "") for c in COLUMNS)
        if len(row) != 3:
            raise DatasetError(f"row {i}: expected (reader, case, label)")
        yield tuple(row), i


def _labels_of(mapping: Mapping, class_names, what: str) -> dict[str, int]:
    lookup = label_lookup(class_names)
    out = {}
    for case, label in mapping.items():
        key = str(label).strip().lower()
        if key not in lookup:
            raise DatasetError(f"{what}: unknown label {label!r}; expected one of "
                               f"{', '.join(class_names)}")
        out[str(case).strip()] = lookup[key]
    return out


def _average(results: list[dict]) -> dict[str, Any]:
    """Mean of each figure over the readers (None where no reader has it)."""
    out: dict[str, Any] = {}
    for key, value in results[0].items():
        values = [r.get(key) for r in results]
        if isinstance(value, dict):
            out[key] = _average([v for v in values if isinstance(v, dict)])
        elif key in ("class_names", "positive_class"):
            out[key] = value
        elif all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                 for v in values):
            present = [v for v in values if v is not None]
            out[key] = float(np.mean(present)) if present else None
    return out


def compare_readers(readers, model_calls: Mapping, truth: Mapping, class_names: Sequence[str],
                    *, model_probs: Mapping | None = None, positive_class: str | None = "auto",
                    model_name: str = "model") -> dict[str, Any]:
    """Each reader's, the average reader's and the model's figures on the readers' cases.

    ``readers`` is a CSV path or rows (reader, case, label) / dicts with those keys;
    ``model_calls`` and ``truth`` map case -> class name; ``model_probs`` optionally maps
    case -> probability vector (gives the model's AUCs). Unknown cases or labels, repeated
    calls and cases the model did not call raise DatasetError.
    """
    source = None
    if isinstance(readers, (str, os.PathLike)):
        source = Path(readers)
        calls = read_reader_csv(source, class_names)
    else:
        calls = _calls(_rows(readers), class_names, None, "row")
    where = "line" if source else "row"
    truth = _labels_of(truth, class_names, "ground truth")
    model = _labels_of(model_calls, class_names, "model calls")
    for call in calls:
        if call.case not in truth:
            raise DatasetError(f"{where} {call.line}: case is not in the ground truth", source)
        if call.case not in model:
            raise DatasetError(f"{where} {call.line}: the model has no call for this case", source)
    by_reader: dict[str, list[ReaderCall]] = {}
    for call in calls:
        by_reader.setdefault(call.reader, []).append(call)
    cases = sorted({c.case for c in calls})
    options = dict(class_names=class_names, positive_class=positive_class)
    figures = {
        name: {**classification_metrics([truth[c.case] for c in rows], [c.label for c in rows],
                                        curves=False, **options), "n_cases": len(rows)}
        for name, rows in by_reader.items()}
    probs = None
    if model_probs is not None:
        lookup = {str(k).strip(): v for k, v in model_probs.items()}
        missing = [c for c in cases if c not in lookup]
        if missing:
            raise DatasetError(f"model probabilities missing for {len(missing)} case(s)", source)
        probs = np.array([lookup[c] for c in cases], dtype=np.float64)
    model_figures = classification_metrics([truth[c] for c in cases], [model[c] for c in cases],
                                           probs, **options)
    return {
        "class_names": list(class_names),
        "positive_class": model_figures.get("positive_class"),
        "n_cases": len(cases),
        "n_readers": len(by_reader),
        "readers": figures,
        "reader_average": {**_average(list(figures.values())), "n_readers": len(by_reader)},
        "model_name": model_name,
        "model": {**model_figures, "n_cases": len(cases)},
    }
