"""A minimal SYNTHETIC chest phantom with planted lesions, for CovidCTNet's tests and benchmarks.

Not anatomy: an elliptic body of soft tissue, two elliptic lungs that taper towards the
ends of the scan, a spine, a little vessel texture and noise. Lesions are ellipsoids of
ground-glass (COVID-19 pattern: several, peripheral, both lungs) or consolidation (CAP
pattern: one or two larger, one lung). The lesion mask is returned with the HU volume so
tests can check where the infection maps light up. The full synthetic cohort generator
(``covidct synth``) is richer; this one needs nothing but numpy and runs in milliseconds.
"""
from __future__ import annotations

import numpy as np

from ..constants import SYNTHETIC_TAG
from ..scan import Scan

AIR, LUNG, TISSUE, BONE = -1000.0, -860.0, 40.0, 700.0
GGO, CONSOLIDATION = -450.0, -20.0
LESION_HU = {"COVID-19": GGO, "CAP": CONSOLIDATION}


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _lungs(n: int) -> list[tuple[float, float, float, float]]:
    """(cy, cx, ry, rx) of both lungs at full size, in pixels."""
    return [(0.47 * n, 0.32 * n, 0.21 * n, 0.12 * n), (0.47 * n, 0.68 * n, 0.21 * n, 0.12 * n)]


def chest_phantom(label: str = "Control", n_slices: int = 40, size: int = 64,
                  spacing: tuple[float, float, float] = (5.0, 5.0, 5.0), seed: int = 0,
                  noise_hu: float = 15.0) -> tuple[Scan, np.ndarray]:
    """A SYNTHETIC HU scan of class ``label`` (Control / CAP / COVID-19) and its lesion mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    body = _ellipse(yy, xx, 0.5 * size, 0.5 * size, 0.33 * size, 0.44 * size)
    spine = _ellipse(yy, xx, 0.76 * size, 0.5 * size, 0.05 * size, 0.05 * size)
    vessels = rng.random((size, size)) < 0.01
    z = np.linspace(-1.0, 1.0, n_slices)
    hu = np.empty((n_slices, size, size), dtype=np.float32)
    lung_mask = np.zeros((n_slices, size, size), dtype=bool)
    for k, zk in enumerate(z):
        plane = np.full((size, size), AIR, dtype=np.float32)
        plane[body] = TISSUE
        taper = np.sqrt(max(0.0, 1.0 - (zk / 1.1) ** 2))  # lungs shrink towards apex and base
        for cy, cx, ry, rx in _lungs(size):
            lung = _ellipse(yy, xx, cy, cx, ry * taper + 1e-6, rx * taper + 1e-6)
            lung_mask[k] |= lung
        plane[lung_mask[k]] = LUNG
        plane[lung_mask[k] & vessels] = TISSUE
        plane[spine] = BONE
        hu[k] = plane
    lesions = plant_lesions(hu, lung_mask, label, rng)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    scan = Scan(voxels=hu, spacing=spacing, units="HU", orientation="axial",
                source=f"phantom-{label}-{seed}",
                metadata={"modality": "CT", "synthetic": True, "series_description": SYNTHETIC_TAG})
    return scan, lesions


def plant_lesions(hu: np.ndarray, lung_mask: np.ndarray, label: str,
                  rng: np.random.Generator) -> np.ndarray:
    """Write lesions of ``label``'s pattern into ``hu`` (inside the lungs); return their mask."""
    mask = np.zeros(hu.shape, dtype=bool)
    if label not in LESION_HU:
        return mask
    nz, size, _ = hu.shape
    zz, yy, xx = np.ogrid[0:nz, 0:size, 0:size]
    lungs = _lungs(size)
    if label == "COVID-19":   # several peripheral ground-glass patches in both lungs
        count, radius, sides = 6, 0.07 * size, [0, 1] * 3
    else:                     # one or two larger consolidations in one lung
        count, radius, sides = 2, 0.10 * size, [int(rng.integers(2))] * 2
    for side in sides[:count]:
        cy, cx, ry, rx = lungs[side]
        angle = rng.uniform(0, 2 * np.pi)
        edge = 0.6 if label == "COVID-19" else 0.3  # how far out towards the pleura
        by, bx = cy + edge * ry * np.sin(angle), cx + edge * rx * np.cos(angle)
        bz = rng.uniform(0.3, 0.7) * nz
        rz = max(2.0, radius * nz / size * 1.5)
        blob = (((zz - bz) / rz) ** 2 + ((yy - by) / radius) ** 2 + ((xx - bx) / radius) ** 2) <= 1.0
        mask |= blob & lung_mask
    hu[mask] = LESION_HU[label]
    return mask


def benchmark_series(n_slices: int = 300, size: int = 512, pixel_mm: float = 0.625,
                     slice_mm: float = 2.5, seed: int = 0) -> Scan:
    """The issue's timing case: a 300-slice 512 x 512 series, 0.625 mm pixels, 2.5 mm slices,
    as int16-valued HU (what a DICOM series decodes to)."""
    scan, _ = chest_phantom("COVID-19", n_slices, size, (slice_mm, pixel_mm, pixel_mm), seed)
    scan.voxels = np.rint(scan.voxels).astype(np.int16).astype(np.float32)
    return scan
