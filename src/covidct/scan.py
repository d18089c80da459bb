"""The Scan: voxels with the geometry that gives them meaning.

Every reader returns a Scan and every method takes one, so spacing and orientation
travel with the image from the file to the model and are never re-guessed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from .errors import ScanError

Units = Literal["HU", "windowed"]
Orientation = Literal["axial", "coronal", "sagittal", "oblique", "unknown"]

#: Metadata keys a Scan may carry by default. Anything identifying a person
#: (name, ID, birth date, study dates, institution) is never among them.
SAFE_METADATA_KEYS = (
    "modality", "series_uid_hash", "n_slices", "orientation", "manufacturer",
    "slice_thickness", "kvp", "convolution_kernel", "series_description", "synthetic",
    "source_format", "warnings",
)


def evenly_spaced(n: int, at_most: int) -> np.ndarray:
    """At most ``at_most`` indices into ``n`` items, spread evenly from the first to the last
    (all ``n`` when they are no more); slices of a scan, scans of a split, rows of a table."""
    if n <= at_most:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, at_most)).astype(int))


@dataclass
class Scan:
    """A CT volume in (z, y, x) order.

    voxels:    float32 Hounsfield units when ``units == "HU"``; uint8 0-255 when the
               source was an already-windowed picture (PNG/JPG/TIFF).
    spacing:   voxel size in mm, (z, y, x). Pictures without geometry get (1, 1, 1)
               and ``geometry_known = False``.
    origin:    position of voxel (0, 0, 0) in patient coordinates (LPS, mm), (x, y, z) as DICOM.
    direction: 3x3 matrix whose columns are the patient-space directions of the
               x, y and z array axes (as SimpleITK's GetDirection, reshaped).
    orientation: how the slices were acquired/stored: axial methods refuse the others.
    metadata:  de-identified facts (see SAFE_METADATA_KEYS).
    phi:       patient name/ID/dates, only filled when the caller asked for them.
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    units: Units
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    orientation: Orientation = "axial"
    geometry_known: bool = True
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    phi: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ScanError(f"expected a 3D (z, y, x) volume, got shape {self.voxels.shape}", self.source)
        if self.units not in ("HU", "windowed"):
            raise ScanError(f"unknown units {self.units!r}", self.source)
        self.spacing = tuple(float(s) for s in self.spacing)
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ScanError(f"voxel spacing must be positive, got {self.spacing}", self.source)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        self.metadata.setdefault("n_slices", int(self.voxels.shape[0]))
        self.metadata.setdefault("orientation", self.orientation)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return int(self.voxels.shape[0])

    @property
    def is_hu(self) -> bool:
        return self.units == "HU"

    @property
    def synthetic(self) -> bool:
        return bool(self.metadata.get("synthetic", False))

    def require_axial(self, purpose: str) -> "Scan":
        """Refuse scans whose slices are not axial, for methods trained on axial slices."""
        if self.orientation not in ("axial", "unknown"):
            raise ScanError(
                f"{purpose} needs axial slices, but this scan is {self.orientation}; "
                "supply the axial series", self.source)
        return self

    def require_volume(self, purpose: str, min_slices: int = 2) -> "Scan":
        if self.n_slices < min_slices:
            raise ScanError(
                f"{purpose} needs a volume of at least {min_slices} slices, got {self.n_slices}",
                self.source)
        return self

    def with_voxels(self, voxels: np.ndarray, **changes: Any) -> "Scan":
        """A copy with new voxels (and optionally new geometry), metadata kept."""
        meta = dict(self.metadata, n_slices=int(voxels.shape[0]))
        return replace(self, voxels=voxels, metadata=meta, **changes)

    def summary(self) -> str:
        z, y, x = self.shape
        sz, sy, sx = self.spacing
        tag = " [synthetic]" if self.synthetic else ""
        return (f"{z}x{y}x{x} {self.units} {self.orientation} scan, "
                f"spacing {sz:.2f}x{sy:.2f}x{sx:.2f} mm{tag}")

    def deidentified(self, warnings: list[str] | None = None,
                     metadata: bool = False) -> dict[str, Any]:
        """The facts about this scan that outputs may carry: geometry, units, the synthetic
        flag and the reader's warnings (``warnings`` replaces them, e.g. reworded for the
        web), plus, with ``metadata``, the :data:`SAFE_METADATA_KEYS` it has. The one place
        that decides what of a scan reaches a prediction, the web page or a log: never
        :attr:`phi`, never a file or folder name."""
        out = {k: self.metadata[k] for k in SAFE_METADATA_KEYS if metadata and k in self.metadata}
        out.update(summary=self.summary(), shape=list(self.shape), spacing_mm=list(self.spacing),
                   units=self.units, orientation=self.orientation,
                   geometry_known=self.geometry_known, synthetic=self.synthetic)
        found = self.metadata.get("warnings") if warnings is None else warnings
        out["warnings"] = list(found or [])  # as of this call
        return out
