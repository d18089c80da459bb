"""Infection maps scored against truth: a synthetic cohort's lesion and lung masks on the
3D CNN's grid.

``covidct synth`` writes, beside every phantom's CT, its lesion labels (``lesions.nii.gz``)
and its lungs (``lungs.nii.gz``, 1 right, 2 left) on the CT's grid. The masks go through the
geometry the CT goes through (canonical orientation, in-plane resize, 1-mm z resampling, the
slices sent through BCDU-Net, the resize to the 3D CNN's depth), as shares of a voxel, so a
map voxel and a truth voxel describe the same place. A voxel is "lesion" when at least half
of it is infection (labels 1-4), "lung" when at least half of it is lung or lesion.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics.ranking import roc_auc
from ..scanio import load_scan
from .infection_maps import denoise_indices
from .preprocess import resample_to_grid, resize_depth
from .settings import VolumeSettings

#: Lesion labels that are infection (covidct.synth.findings.INFECTION; 5 is atelectasis).
INFECTION_LABELS = (1, 2, 3, 4)


@dataclass
class Truth:
    lesion: np.ndarray   # bool (volume_slices, S, S)
    lung: np.ndarray     # bool, same grid; includes the lesions


def truth_on_grid(lesions_path: str | os.PathLike, lungs_path: str | os.PathLike,
                  settings: VolumeSettings) -> Truth:
    """The phantom's lesion and lung masks on the infection map's grid."""
    lesion = _share(load_scan(lesions_path), settings,
                    lambda labels: np.isin(labels, INFECTION_LABELS))
    lung = _share(load_scan(lungs_path), settings, lambda labels: labels > 0)
    lesion_mask = lesion >= 0.5
    return Truth(lesion=lesion_mask, lung=(lung >= 0.5) | lesion_mask)


def _share(scan, settings: VolumeSettings, select) -> np.ndarray:
    grid = resample_to_grid(scan, settings, lambda chunk: select(chunk).astype(np.float32))
    chosen = grid[denoise_indices(len(grid), settings.max_denoised_slices)]
    return resize_depth(chosen, settings.volume_slices)


def score_map(maps: list[np.ndarray], truths: list[Truth], labels: list[str]) -> dict[str, Any]:
    """How well infection maps single out lesions, inside the lungs.

    ``auc``: voxel-level ROC AUC of the map value for lesion vs healthy lung, voxels of all
    scans pooled (scans without lesions add healthy voxels); ``per_class``: mean map value on
    lesion and on healthy lung voxels per class, and the number of scans.
    """
    values, positive = [], []
    per_class: dict[str, dict[str, list[np.ndarray]]] = {}
    for infection, truth, label in zip(maps, truths, labels):
        inside = truth.lung
        values.append(infection[inside])
        positive.append(truth.lesion[inside])
        row = per_class.setdefault(label, {"lesion": [], "healthy": [], "n": []})
        row["lesion"].append(infection[truth.lesion])
        row["healthy"].append(infection[inside & ~truth.lesion])
        row["n"].append(np.zeros(1))
    pooled, is_lesion = np.concatenate(values), np.concatenate(positive)
    both = bool(is_lesion.any() and (~is_lesion).any())
    return {
        "auc": float(roc_auc(is_lesion, pooled)) if both else None,
        "lesion_voxels": int(is_lesion.sum()), "lung_voxels": int(is_lesion.size),
        "per_class": {label: {"scans": len(row["n"]),
                              "mean_on_lesions": _mean(row["lesion"]),
                              "mean_on_healthy_lung": _mean(row["healthy"]),
                              "lesion_voxels": int(sum(a.size for a in row["lesion"]))}
                      for label, row in per_class.items()},
    }


def _mean(parts: list[np.ndarray]) -> float | None:
    total = sum(a.size for a in parts)
    return float(sum(float(a.sum()) for a in parts) / total) if total else None
