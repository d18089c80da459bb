"""What a model says about one scan, in one shape for both methods.

The CLI, the web app, the demo and the experiments all read a Prediction, so a result
looks the same wherever it appears and always carries its disclaimer and provenance.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_json, write_text
from .constants import DISCLAIMER, SYNTHETIC_NOTICE


@dataclass
class Prediction:
    method: str                       # constants.METHODS
    class_names: tuple[str, ...]
    probabilities: np.ndarray         # (C,) scan/patient-level
    aggregation: str = ""             # how slice scores became the scan-level result
    slice_probabilities: np.ndarray | None = None  # (n, C) for the slices in slice_indices
    slice_indices: np.ndarray | None = None        # positions of those slices in the scan
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # e.g. infection map
    model: dict[str, Any] = field(default_factory=dict)    # name, version, trained_on, synthetic
    scan: dict[str, Any] = field(default_factory=dict)     # safe scan summary (no PHI)
    timings: dict[str, float] = field(default_factory=dict)
    #: The lung mask's summary and the involvement (a research measurement, covidct.lungs).
    lungs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)

    @property
    def label(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    @property
    def synthetic(self) -> bool:
        """True when the scan or the model's training data were synthetic."""
        return bool(self.scan.get("synthetic") or self.model.get("synthetic"))

    def summary_line(self) -> str:
        probs = ", ".join(f"{c} {p:.1%}" for c, p in zip(self.class_names, self.probabilities))
        tag = " [SYNTHETIC]" if self.synthetic else ""
        return f"{self.method}: {self.label} ({probs}){tag}. Research use only, not a diagnosis."

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "disclaimer": DISCLAIMER,
            "method": self.method,
            "label": self.label,
            "probabilities": dict(zip(self.class_names, map(float, self.probabilities))),
            "aggregation": self.aggregation,
            "model": self.model,
            "scan": self.scan,
            "timings_s": self.timings,
        }
        if self.synthetic:
            out["synthetic_notice"] = SYNTHETIC_NOTICE
        if self.lungs:
            out["lungs"] = self.lungs
        if self.slice_probabilities is not None:
            out["slices"] = [
                {"index": int(k), **dict(zip(self.class_names, map(float, p)))}
                for k, p in zip(self.slice_indices, self.slice_probabilities)]
        return out

    def slices_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["slice_index", *self.class_names])
        if self.slice_probabilities is not None:
            for k, p in zip(self.slice_indices, self.slice_probabilities):
                writer.writerow([int(k), *(f"{v:.6f}" for v in p)])
        return buf.getvalue()

    def save(self, out_dir: str | Path, stem: str = "prediction") -> dict[str, Path]:
        """Write ``<stem>.json`` and, with per-slice scores, ``<stem>-slices.csv`` atomically."""
        out_dir = Path(out_dir)
        paths = {"json": write_json(out_dir / f"{stem}.json", self.to_dict())}
        if self.slice_probabilities is not None:
            paths["csv"] = write_text(out_dir / f"{stem}-slices.csv", self.slices_csv())
        if (self.lungs or {}).get("involvement"):
            paths["lungs_csv"] = write_text(out_dir / f"{stem}-lungs.csv", self.lungs_csv())
        return paths

    def lungs_csv(self) -> str:
        """Lung volumes and involvement as ``measure,value`` rows (a research measurement)."""
        found = self.lungs.get("involvement") or {}
        rows = [("note", found.get("note", ""))]
        rows += [(f"lung_volume_{k}_ml", v) for k, v in (found.get("lung_volume_ml") or {}).items()]
        for key in ("involved_ml", "involved_percent", "ground_glass_percent",
                    "consolidation_percent", "map_share_percent", "severity_score"):
            if key in found:
                rows.append((key, found[key]))
        for zone in found.get("zones", []):
            name = zone["zone"].replace(" ", "_")
            rows += [(f"{name}_involved_percent", zone["involved_percent"]),
                     (f"{name}_score", zone["score"])]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["measure", "value"])
        writer.writerows(rows)
        return buf.getvalue()


@dataclass
class Scores:
    """A model's outputs on a labelled dataset, ready for covidct.metrics.

    One row per scored item (a slice for the slice classifier, a scan for CovidCTNet);
    ``groups`` names the patient of each row so that CIs resample patients, not slices.
    """

    method: str
    class_names: tuple[str, ...]
    y_true: np.ndarray               # (n,) int class indices
    y_prob: np.ndarray               # (n, C)
    groups: np.ndarray               # (n,) patient ids (str)
    level: str = "slice"             # "slice" or "scan"
    items: list[str] = field(default_factory=list)      # file names / scan ids, optional
    provenance: dict[str, Any] = field(default_factory=dict)  # model, data, settings, synthetic
