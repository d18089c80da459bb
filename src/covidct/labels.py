"""``labels.csv``: one row per patient (``patient_id``, a label, ``split``, paths), as `covidct synth`
writes it and CovidCTNet cohorts, lung evaluation, localisation and the report read it."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from .errors import DatasetError

LABELS_CSV = "labels.csv"


def labels_path(data: str | os.PathLike) -> Path:
    """The labels CSV of a dataset: ``data/labels.csv`` for a folder, else ``data`` itself."""
    data = Path(data)
    return data / LABELS_CSV if data.is_dir() else data


def read_labels(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a labels CSV (a byte-order mark is ignored); a DatasetError naming the file
    when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read the labels CSV ({exc})", path) from None
