"""What several report sections share: method titles, result levels, split order."""
from __future__ import annotations

from typing import Any, Mapping

from ..constants import METHOD_BIT, METHOD_COVIDCTNET
from ..metrics.tables import result_sets
from .discover import Evaluation, TrainingRun

METHOD_TITLES = {METHOD_BIT: "Slice classifier (BiT ResNet-v2)",
                 METHOD_COVIDCTNET: "CovidCTNet (BCDU-Net infection maps + 3D CNN)"}


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


def is_scan_level(level: str, result: Mapping[str, Any]) -> bool:
    """One item per scan (the patient), no slices: CovidCTNet's results, and the slice
    classifier's calls of whole series."""
    return level in SCAN_LEVELS or result.get("level") in SCAN_LEVELS


SCAN_LEVELS = ("scan", "series")


def run_method(run: TrainingRun) -> str:
    """Which method a training run trained, from its settings."""
    if "arch" in run.config or "crop" in run.config:
        return METHOD_BIT
    if "denoiser_epochs" in run.config or "volume_slices" in run.config:
        return METHOD_COVIDCTNET
    return ""
