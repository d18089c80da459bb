"""Pieces every reader shares: warnings that travel with the scan, UID hashing, orientation."""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np

from ..constants import SYNTHETIC_TAG

log = logging.getLogger("covidct.scanio")

#: Picture suffixes read as already-windowed 8-bit slices.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

#: How close to a patient axis a slice normal must be to name its plane (cos 35 degrees),
#: so that tilted-gantry axial series still count as axial.
_PLANE_COS = 0.82


class Notes:
    """Warnings about one scan: logged once and kept in ``metadata["warnings"]``.

    Real exports are messy; a missing optional tag should be visible to the user and to
    whoever reads the result later, without stopping the run.
    """

    def __init__(self, source: str | Path):
        self.source = str(source)
        self.items: list[str] = []

    def warn(self, message: str) -> None:
        if message not in self.items:
            self.items.append(message)
            log.warning("%s: %s", self.source, message)


def uid_hash(uid: str | None) -> str | None:
    """First 12 hex digits of sha256(UID): lets users tell series apart without the UID itself."""
    if not uid:
        return None
    return hashlib.sha256(str(uid).encode("ascii", "replace")).hexdigest()[:12]


def orientation_of(normal: np.ndarray) -> str:
    """The plane a slice lies in, from its unit normal in patient (LPS) coordinates."""
    n = np.abs(np.asarray(normal, dtype=float))
    axis = int(np.argmax(n))
    if n[axis] < _PLANE_COS:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def is_synthetic_text(*texts: object) -> bool:
    return any(SYNTHETIC_TAG in str(t) for t in texts if t)


def natural_key(path: Path) -> list:
    """Sort key where img2 < img10 (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", str(path).lower())
    return [int(p) if p.isdigit() else p for p in parts]


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 preamble, or a DICOM suffix (for old files written without preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES
