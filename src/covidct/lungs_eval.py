"""Score the lung mask and the involvement figures on a cohort with true lungs (SYNTHETIC).

A `covidct synth` cohort's labels.csv names, per patient, the CT (``nifti`` or ``dicom``),
the true lesion labels (``lesions``), the true lungs (``lungs``: 1 right, 2 left) and the
true ``lesion_fraction``. :func:`evaluate_lungs` measures, per scan, the Dice of
:func:`covidct.lungs.lung_mask` against the true lungs, the share of true lesion voxels inside
the mask (lesion coverage), and compares :func:`covidct.lungs.involvement`'s
``involved_percent`` with the true lesion percentage (Pearson correlation, mean absolute
error in percentage points). `covidct evaluate` adds this as ``lungs.json`` when the data
(or the folder above it, for the COVIDx layout) has such a labels.csv.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_json
from .constants import SYNTHETIC_NOTICE
from .errors import DatasetError
from .labels import LABELS_CSV, read_labels
from .lungs import involvement, lung_mask
from .scanio import load_scan

LUNGS_JSON = "lungs.json"


def find_truth(data: str | os.PathLike) -> Path | None:
    """The labels.csv with true lungs at ``data`` or the folder above (None if none)."""
    data = Path(data)
    for folder in (data if data.is_dir() else data.parent, (data if data.is_dir() else data.parent).parent):
        path = folder / LABELS_CSV
        if path.is_file():
            rows = read_labels(path)
            # A cohort written without volumes (``--formats covidx``) names no lung files.
            if rows and {"lungs", "lesion_fraction"} <= set(rows[0]) and any(r["lungs"] for r in rows):
                return path
    return None


def evaluate_lungs(labels: str | os.PathLike, split: str | None = None,
                   out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Dice, lesion coverage and involvement-vs-truth over the scans of ``split`` (all: None)."""
    labels = Path(labels)
    root = labels.parent
    rows = [r for r in read_labels(labels)
            if r.get("lungs") and (split is None or r.get("split", split) == split)]
    if not rows:
        raise DatasetError(f"no scans with true lungs in split {split!r}", labels)
    per_scan = []
    for row in rows:
        scan = load_scan(root / (row.get("nifti") or row.get("dicom")))
        truth = load_scan(root / row["lungs"]).voxels.astype(np.uint8)
        lesions = load_scan(root / row["lesions"]).voxels if row.get("lesions") else None
        mask = lung_mask(scan)
        measured = involvement(scan, mask)
        lung = truth > 0
        entry = {"patient_id": row["patient_id"], "label": row["label"],
                 "dice": round(_dice(mask.lung, lung), 4),
                 "left_right_agreement": round(float((mask.labels[lung] == truth[lung]).mean()), 4),
                 "true_lesion_percent": round(100 * float(row["lesion_fraction"]), 3),
                 "involved_percent": measured["involved_percent"],
                 "severity_score": measured["severity_score"]}
        if lesions is not None:
            infection = np.isin(lesions, (1, 2, 3, 4)) & lung
            if infection.any():
                entry["lesion_coverage"] = round(float((infection & mask.lung).sum() / infection.sum()), 4)
        per_scan.append(entry)
    result = summarise(per_scan)
    result.update(split=split or "all", synthetic=True, synthetic_notice=SYNTHETIC_NOTICE,
                  per_scan=per_scan)
    if out_dir is not None:
        write_json(Path(out_dir) / LUNGS_JSON, result)
    return result


def summarise(per_scan: list[dict[str, Any]]) -> dict[str, Any]:
    dice = np.array([e["dice"] for e in per_scan])
    coverage = [e["lesion_coverage"] for e in per_scan if "lesion_coverage" in e]
    true = np.array([e["true_lesion_percent"] for e in per_scan])
    measured = np.array([e["involved_percent"] for e in per_scan])
    r = float(np.corrcoef(true, measured)[0, 1]) if len(true) > 2 and true.std() and measured.std() else None
    return {
        "n_scans": len(per_scan),
        "dice": {"mean": round(float(dice.mean()), 4), "min": round(float(dice.min()), 4)},
        "lesion_coverage": {"mean": round(float(np.mean(coverage)), 4),
                            "min": round(float(np.min(coverage)), 4)} if coverage else None,
        "involvement_vs_truth": {
            "pearson_r": None if r is None else round(r, 4),
            "mae_percent_points": round(float(np.abs(measured - true).mean()), 3),
            "mean_bias_percent_points": round(float((measured - true).mean()), 3),
            "note": "involved_percent (HU rule) against the true lesion percentage of the lungs; "
                    "a research measurement"},
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few printable lines."""
    inv = result["involvement_vs_truth"]
    cov = result.get("lesion_coverage")
    r = "n/a" if inv["pearson_r"] is None else f"{inv['pearson_r']:.2f}"
    return [f"Lung mask on {result['n_scans']} scans ({result['split']}, SYNTHETIC): Dice mean "
            f"{result['dice']['mean']:.3f} (min {result['dice']['min']:.3f})"
            + (f", lesion coverage mean {cov['mean']:.2f}" if cov else ""),
            f"Involvement (research measurement) vs true lesion %: r = {r}, "
            f"MAE {inv['mae_percent_points']:.2f} percentage points"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0
