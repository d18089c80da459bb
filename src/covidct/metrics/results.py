"""Saving results: JSON (everything, with provenance) and a flat CSV (one row per figure).

CSV columns: ``set, name, class, value, ci_low, ci_high, synthetic``. ``set`` names the
result set (e.g. "slice"/"patient", a reader; "model" for a single result). ``name`` is
the figure: per-class figures keep their name with the class in ``class``; averages are
``macro_<figure>``/``micro_<figure>``; the COVID-vs-rest view is ``binary_<figure>`` with
the positive class in ``class``; operating points are ``sens<target %>_<figure>``.
"""
from __future__ import annotations

import csv
import io
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..atomic import write_json, write_text
from ..constants import SYNTHETIC_NOTICE
from .tables import figure_parts, result_sets

CSV_COLUMNS = ("set", "name", "class", "value", "ci_low", "ci_high", "synthetic")
_TOP_LEVEL = ("n_patients", "n_slices", "n_cases", "accuracy", "ece")


def json_safe(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def flatten_metrics(metrics: Mapping) -> list[dict[str, Any]]:
    """One row (set, name, class, value, ci_low, ci_high) per scalar figure."""
    rows = []

    def add(set_name, name, cls, figure):
        value, low, high = figure_parts(figure)
        if isinstance(value, (int, float, type(None))) and not isinstance(value, bool):
            rows.append({"set": set_name, "name": name, "class": cls, "value": value,
                         "ci_low": low, "ci_high": high})

    for set_name, result in result_sets(metrics).items():
        for key in _TOP_LEVEL:
            if key in result:
                add(set_name, key, "", result[key])
        for cls, figures in result.get("per_class", {}).items():
            for name, figure in figures.items():
                add(set_name, name, cls, figure)
        for average in ("macro", "micro"):
            for name, figure in result.get(average, {}).items():
                add(set_name, f"{average}_{name}", "", figure)
        binary = result.get("binary") or {}
        positive = binary.get("positive_class", "")
        for name, figure in binary.items():
            if name not in ("positive_class", "operating_points"):
                add(set_name, f"binary_{name}", positive, figure)
        for point in binary.get("operating_points") or []:
            target = f"sens{100 * point['target_sensitivity']:g}"
            for name in ("threshold", "sensitivity", "specificity", "ppv", "npv"):
                add(set_name, f"{target}_{name}", positive, point[name])
    return rows


def save_results(path_json: str | os.PathLike, path_csv: str | os.PathLike,
                 metrics: Mapping, provenance: Mapping) -> tuple[Path, Path]:
    """Write the metrics with their provenance as JSON and as a flat CSV, each atomically.

    ``provenance`` says what produced the figures (model, data, settings, command) and must
    say whether any data were synthetic (``"synthetic": True/False``); synthetic results
    carry the synthetic-data notice in the JSON and a ``synthetic`` column in the CSV.
    """
    if not isinstance(provenance, Mapping) or not isinstance(provenance.get("synthetic"), bool):
        raise ValueError('provenance must be a dict with "synthetic": True or False')
    synthetic = provenance["synthetic"]
    document = {
        **({"synthetic_notice": SYNTHETIC_NOTICE} if synthetic else {}),
        "provenance": json_safe(provenance),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "covidct_version": __version__,
        "metrics": json_safe(metrics),
    }
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in flatten_metrics(metrics):
        writer.writerow({k: ("" if v is None else v) for k, v in json_safe(row).items()}
                        | {"synthetic": str(synthetic).lower()})
    return write_json(path_json, document), write_text(path_csv, buffer.getvalue())
