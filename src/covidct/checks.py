"""Plausibility checks a scan passes before any model sees it, and what each method needs.

A model gives a confident-looking label for anything it is fed, garbage included, so
:func:`check_scan` refuses (``ScanError``: one line, exit 2) what cannot be a chest CT:

* **finite values**: more than ``MAX_NONFINITE`` (1%) of the voxels NaN/Inf is refused;
  fewer are set to -1000 HU (air) with a warning that says how many;
* **a CT-like histogram**: at least ``MIN_AIR`` (1%) of the voxels air (below -900 HU) and
  ``MIN_TISSUE`` (1%) soft tissue (-200 to 150 HU; 8-bit pictures are read back through the
  COVIDx lung window, which saturates at 150 HU);
* **a body**: on some slice the body (:func:`covidct.windowing.body_mask`) covers at least
  ``MIN_BODY_FRACTION`` (2%) of the picture;
* **lungs**: some slice is a lung slice (see :func:`air_lung_slices`, replaceable through
  ``lung_finder``).

:func:`check_scan` is all the slice classifier needs (one lung slice); a method that reads
the lungs as a volume (CovidCTNet) then calls :func:`require_lung_extent`: at least
``MIN_LUNG_MM`` (30 mm) of lung along z, with a warning below ``PARTIAL_LUNG_MM`` (150 mm;
whole adult lungs span about 200-300 mm), or, when the slice spacing is unknown,
``MIN_LUNG_SLICES`` (3) lung slices and a warning.

What is doubtful but usable (unknown spacing, filled voxels, partial coverage) becomes a
warning in ``scan.metadata["warnings"]``, which every output carries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import ScanError
from .scan import Scan
from .windowing import COVIDX_LUNG, body_mask

MAX_NONFINITE = 0.01
FILL_HU = -1000.0
AIR_HU = -900.0
TISSUE_HU = (-200.0, 150.0)
MIN_AIR = 0.01
MIN_TISSUE = 0.01
#: A lung slice: at least LUNG_FRACTION of the body below LUNG_HU, the body at least
#: MIN_BODY_FRACTION of the picture (the slice classifier's slice rule, Zhao et al. style).
LUNG_FRACTION = 0.10
LUNG_HU = -400.0
MIN_BODY_FRACTION = 0.02
#: CovidCTNet's patient-level call needs this much lung along z (mm); without a known slice
#: spacing (pictures, NIfTI without voxel size) the extent cannot be measured, and at least
#: MIN_LUNG_SLICES lung slices are required instead, with a warning.
MIN_LUNG_MM = 30.0
PARTIAL_LUNG_MM = 150.0
MIN_LUNG_SLICES = 3
#: Slices are checked at about this many pixels a side (the checks need shapes, not detail).
_CHECK_PX = 128

LungFinder = Callable[[Scan], np.ndarray]


@dataclass
class Plausibility:
    lung_slices: np.ndarray                  # bool per slice
    lung_extent_mm: float                    # z extent spanned by the lung slices
    warnings: list[str] = field(default_factory=list)

    @property
    def lung_indices(self) -> np.ndarray:
        return np.flatnonzero(self.lung_slices)


def _hu_of(pixels: np.ndarray, units: str) -> np.ndarray:
    return pixels if units == "HU" else COVIDX_LUNG.from_uint8(pixels)


def _small(scan: Scan, k: int) -> np.ndarray:
    stride = max(1, min(scan.shape[1:]) // _CHECK_PX)
    return scan.voxels[k, ::stride, ::stride]


def slice_lung_fraction(pixels: np.ndarray, units: str = "windowed") -> float:
    """Share of the body's pixels at lung density on one slice (0 when the body is too small)."""
    small = np.asarray(pixels)
    stride = max(1, min(small.shape) // _CHECK_PX)
    small = small[::stride, ::stride]
    hu = _hu_of(small.astype(np.float32), units)
    body = body_mask(hu, "HU")
    n_body = int(body.sum())
    if n_body < MIN_BODY_FRACTION * small.size:
        return 0.0
    return float(((hu < LUNG_HU) & body).sum()) / n_body


def air_lung_slices(scan: Scan) -> np.ndarray:
    """The cheap lung finder: slices where air-density regions enclosed by the body make up
    at least LUNG_FRACTION of it. Swap in a real lung mask through ``lung_finder``
    (e.g. ``lambda s: covidct.lungs.lung_mask(s).any(axis=(1, 2))``)."""
    return np.array([slice_lung_fraction(_small(scan, k), scan.units) >= LUNG_FRACTION
                     for k in range(scan.n_slices)], dtype=bool)


def from_lung_mask(lung_mask: Callable[[Scan], np.ndarray],
                   min_fraction: float = 0.005) -> LungFinder:
    """A lung finder from a function giving a (z, y, x) lung mask or label image (such as
    ``covidct.lungs.lung_mask``): a lung slice has lung on at least ``min_fraction`` of it."""
    def finder(scan: Scan) -> np.ndarray:
        mask = np.asarray(lung_mask(scan)) > 0
        return mask.reshape(mask.shape[0], -1).mean(axis=1) >= min_fraction
    return finder


#: The lung finder check_scan uses when none is given; a real lung segmentation plugs in as
#: ``DEFAULT_LUNG_FINDER = from_lung_mask(covidct.lungs.lung_mask)``.
DEFAULT_LUNG_FINDER: LungFinder = air_lung_slices


def check_scan(scan: Scan, lung_finder: LungFinder | None = None) -> Plausibility:
    """Refuse an implausible scan; fill a few non-finite voxels; note what is doubtful.

    The result is kept on the scan, so every method checks a scan once.
    """
    done = getattr(scan, "_plausibility", None)
    if done is not None and lung_finder is None:
        return done
    warnings: list[str] = []
    _check_finite(scan, warnings)
    _check_histogram(scan)
    _check_body(scan)
    lungs = np.asarray((lung_finder or DEFAULT_LUNG_FINDER)(scan), dtype=bool)
    if lungs.shape != (scan.n_slices,) or not lungs.any():
        raise ScanError("no lungs found: no slice has air-density regions enclosed by the body "
                        "(a chest CT is needed)", scan.source or None)
    indices = np.flatnonzero(lungs)
    extent = float((indices[-1] - indices[0] + 1) * scan.spacing[0])
    result = Plausibility(lungs, extent, warnings)
    _add_warnings(scan, warnings)
    scan._plausibility = result  # type: ignore[attr-defined]
    return result


def _add_warnings(scan: Scan, warnings: list[str]) -> None:
    existing = scan.metadata.setdefault("warnings", [])
    existing.extend(w for w in warnings if w not in existing)


def _check_finite(scan: Scan, warnings: list[str]) -> None:
    voxels = scan.voxels
    if voxels.dtype.kind != "f":
        return
    # A finite sum means no NaN or infinity, found in one pass without a scan-sized boolean
    # copy (a sum that overflows only sends a finite scan through the count below).
    if np.isfinite(voxels.sum()):
        return
    bad = ~np.isfinite(voxels)
    n_bad = int(bad.sum())
    if not n_bad:
        return
    share = n_bad / voxels.size
    if share > MAX_NONFINITE:
        raise ScanError(f"{share:.1%} of the voxels are not finite numbers (NaN or infinite; "
                        f"at most {MAX_NONFINITE:.0%} are filled): damaged or not a CT",
                        scan.source or None)
    if not voxels.flags.writeable:  # e.g. a memory-mapped file
        scan.voxels = voxels = voxels.copy()
    voxels[bad] = FILL_HU
    warnings.append(f"{n_bad} voxels ({share:.3%}) were not finite (NaN/Inf) and were set to "
                    f"{FILL_HU:.0f} HU (air)")


def _check_histogram(scan: Scan) -> None:
    stride = max(1, min(scan.shape[1:]) // _CHECK_PX)
    zstride = max(1, scan.n_slices // 64)
    hu = _hu_of(scan.voxels[::zstride, ::stride, ::stride].astype(np.float32), scan.units)
    air = float((hu < AIR_HU).mean())
    tissue = float(((hu >= TISSUE_HU[0]) & (hu <= TISSUE_HU[1])).mean())
    what = "values" if scan.is_hu else "gray values (read as the COVIDx lung window)"
    if air < MIN_AIR or tissue < MIN_TISSUE:
        raise ScanError(
            f"not CT-like: {air:.1%} air (below {AIR_HU:.0f} HU) and {tissue:.1%} soft tissue "
            f"({TISSUE_HU[0]:.0f} to {TISSUE_HU[1]:.0f} HU) among the {what}; a chest CT has "
            f"at least {MIN_AIR:.0%} of each", scan.source or None)


def _check_body(scan: Scan) -> None:
    for k in range(scan.n_slices):
        small = _small(scan, k)
        if body_mask(_hu_of(small.astype(np.float32), scan.units), "HU").mean() >= MIN_BODY_FRACTION:
            return
    raise ScanError(f"no body found: on no slice does tissue cover {MIN_BODY_FRACTION:.0%} of "
                    "the picture", scan.source or None)


def require_lung_extent(scan: Scan, who: str, min_mm: float = MIN_LUNG_MM,
                        partial_mm: float = PARTIAL_LUNG_MM,
                        min_slices: int = MIN_LUNG_SLICES) -> Plausibility:
    """Refuse, for a method (``who``, as messages name it) that reads the lungs as a volume, a
    scan with under ``min_mm`` of lung along z (``min_slices`` lung slices when the spacing is
    unknown); warn below ``partial_mm``. A method that reads single slices needs no more than
    :func:`check_scan` (one lung slice)."""
    checked = check_scan(scan)
    extent = checked.lung_extent_mm
    n_lung = int(checked.lung_slices.sum())
    if not scan.geometry_known:
        if n_lung < min_slices:
            raise ScanError(f"{who} needs a volume: at least {min_slices} lung "
                            f"slices when the slice spacing is unknown; this scan has "
                            f"{n_lung}", scan.source or None)
        _add_warnings(scan, ["slice spacing unknown: how much of the lungs the scan covers "
                             "cannot be measured"])
    elif extent < min_mm:
        raise ScanError(
            f"{who} needs at least {min_mm:.0f} mm of lung along z for a "
            f"patient-level call; this scan shows {extent:.0f} mm "
            f"({n_lung} lung slice(s))", scan.source or None)
    elif extent < partial_mm:
        _add_warnings(scan, [f"only {extent:.0f} mm of lung along z (whole lungs span about "
                             "200-300 mm): disease outside the scanned part is not seen"])
    return checked
