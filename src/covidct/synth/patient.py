"""One synthetic patient: anatomy + class findings + trees + scanner blur and noise."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..constants import SLICE_CLASSES, SYNTHETIC_TAG, VOLUME_CLASSES
from ..errors import CovidctError
from ..scan import Scan
from . import anatomy, findings, trees
from .raster import Grid
from .settings import MIN_SLICES

#: Slice spacings scanners commonly reconstruct at (mm); drawn from those within the range.
COMMON_SLICE_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
#: A slice "shows a lesion" when infection covers at least this area (a 5 mm spot).
LESION_SLICE_MM2 = 20.0
#: COVIDx keeps slices whose infection a reader sees: at least 2 cm2 (a 16 mm patch; at the
#: 20 mm2 spot rule a quarter of the CP/NCP slices showed a pixel or two of lesion and looked
#: like Normal slices, labels a classifier can only memorise, see covidct.synth.cohort).
VISIBLE_LESION_MM2 = 200.0
#: A slice "contains lung" when its lung area is at least this share of the largest one.
LUNG_SLICE_SHARE = 0.05


@dataclass
class Patient:
    """A SYNTHETIC phantom: the CT scan (HU), its lesion labels and lung mask, the truth."""

    scan: Scan
    lesions: np.ndarray          # uint8 labels (see covidct.synth.findings), same grid
    lung: np.ndarray             # bool lung mask, same grid
    tissue: np.ndarray           # uint8 tissue codes of the healthy anatomy (anatomy.TISSUE_HU)
    label: str                   # "Normal", "CP" or "NCP"
    difficulty: float
    findings: list[findings.Finding] = field(default_factory=list)

    @property
    def volume_label(self) -> str:
        return VOLUME_CLASSES[SLICE_CLASSES.index(self.label)]

    @property
    def infection(self) -> np.ndarray:
        return np.isin(self.lesions, findings.INFECTION)

    @property
    def lesion_fraction(self) -> float:
        """Share of the lung volume taken by infection (labels 1-4)."""
        lung = int(self.lung.sum())
        return float((self.infection & self.lung).sum()) / lung if lung else 0.0

    def lesion_slices(self, min_area_mm2: float = LESION_SLICE_MM2) -> np.ndarray:
        """Indices of slices showing infection over at least ``min_area_mm2``."""
        pixel = self.scan.spacing[1] * self.scan.spacing[2]
        area = self.infection.sum(axis=(1, 2)) * pixel
        return np.flatnonzero((area >= min_area_mm2) & (area > 0))

    def lung_slices(self) -> np.ndarray:
        """Indices of slices with a meaningful amount of lung."""
        area = self.lung.sum(axis=(1, 2))
        return np.flatnonzero(area >= max(1, LUNG_SLICE_SHARE * area.max()))

    def describe_findings(self) -> str:
        if not self.findings:
            return "none"
        counts: dict[str, int] = {}
        for f in self.findings:
            key = f"{f.name} ({f.where})"
            counts[key] = counts.get(key, 0) + 1
        return "; ".join(f"{n} x {key}" for key, n in counts.items())


def make_patient(label: str, *, seed: int | np.random.SeedSequence = 0, difficulty: float = 0.3,
                 matrix: int = 512, slice_mm: float | tuple[float, float] = (1.0, 5.0),
                 max_slices: int | None = None, variants: tuple[str, ...] = ()) -> Patient:
    """Generate one SYNTHETIC chest CT of class ``label`` ("Normal", "CP" or "NCP").

    The anatomy depends only on ``seed`` (not on the class or difficulty), so one seed gives
    the same "person" healthy or ill. ``matrix`` is the in-plane size: the field of view
    (0.6-1.0 mm pixels at 512) stays, the pixels grow. Slice spacing is drawn from the common
    reconstruction spacings within ``slice_mm`` (or taken as given); when the scan, from the
    upper abdomen to the thoracic inlet, would exceed ``max_slices`` slices, the spacing is
    widened so that it still covers the same range. See :mod:`covidct.synth.findings` for
    what ``difficulty`` does. ``variants`` (:data:`covidct.synth.anatomy.VARIANTS`) make
    the anatomy harder for lung masks: thin chest wall, off-centre, at the field of view's
    edge, stomach gas under the diaphragm, table touching the back.
    """
    _check(label, difficulty, matrix, slice_mm, max_slices)
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    # Explicit child keys rather than seq.spawn(), which depends on earlier spawns.
    body_rng, finding_rng, noise_rng = (
        np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, k)))
        for k in range(3))
    body = anatomy.sample_body(body_rng)
    if variants:
        try:
            body = anatomy.vary(body, tuple(variants))
        except ValueError as exc:
            raise CovidctError(str(exc)) from None
    grid = _grid(body, matrix, slice_mm, max_slices, body_rng)
    built = anatomy.build(body, grid, body_rng)
    trees.add_trees(built, body_rng)
    hu = built.hu
    lesions, found = findings.add_findings(hu, built, label, difficulty, finding_rng)
    trees.draw_trees(hu, built)
    _scanner(hu, grid, body, noise_rng)
    scan = Scan(
        voxels=hu, spacing=grid.spacing, units="HU",
        origin=(float(grid.axis(2)[0]), float(grid.axis(1)[0]), -float(grid.z()[-1])),
        source="synthetic phantom",
        metadata={"modality": "CT", "synthetic": True, "series_description": SYNTHETIC_TAG,
                  "orientation": "axial"},
    )
    return Patient(scan=scan, lesions=lesions, lung=built.lung, tissue=built.tissue, label=label,
                   difficulty=float(difficulty), findings=found)


def _check(label: str, difficulty: float, matrix: int, slice_mm, max_slices: int | None) -> None:
    if label not in SLICE_CLASSES:
        raise CovidctError(f"unknown class {label!r}; expected one of {', '.join(SLICE_CLASSES)}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise CovidctError(f"difficulty must be between 0 and 1, got {difficulty}")
    if not 32 <= int(matrix) <= 1024:
        raise CovidctError(f"matrix must be between 32 and 1024 pixels, got {matrix}")
    lo, hi = _range(slice_mm)
    if not 0.3 <= lo <= hi <= 10.0:
        raise CovidctError(f"slice spacing must lie within 0.3-10 mm (min <= max), got {lo}-{hi}")
    if max_slices is not None and max_slices < MIN_SLICES:
        raise CovidctError(f"max slices must be at least {MIN_SLICES}, got {max_slices}")


def _range(slice_mm: float | tuple[float, float]) -> tuple[float, float]:
    if np.isscalar(slice_mm):
        return float(slice_mm), float(slice_mm)  # type: ignore[arg-type]
    lo, hi = slice_mm  # type: ignore[misc]
    return float(lo), float(hi)


def _grid(body: anatomy.Body, matrix: int, slice_mm, max_slices: int | None,
          rng: np.random.Generator) -> Grid:
    lo, hi = _range(slice_mm)
    common = [s for s in COMMON_SLICE_MM if lo <= s <= hi]
    spacing_z = float(rng.choice(common)) if common else float(rng.uniform(lo, hi))
    extent = body.z_top
    n = int(np.floor(extent / spacing_z)) + 1
    if max_slices is not None and n > max_slices:
        spacing_z = extent / (max_slices - 1)
        n = max_slices
    pixel = body.fov / matrix
    return Grid((n, int(matrix), int(matrix)), (spacing_z, pixel, pixel))


def _scanner(hu: np.ndarray, grid: Grid, body: anatomy.Body, rng: np.random.Generator) -> None:
    """Reconstruction blur and correlated noise (10-20 HU sd, more in larger patients), in place;
    then whole HU, clipped to the 12-bit range scanners store."""
    sd = float(np.clip(10 + 10 * (body.a - 135) / 45 + rng.uniform(-2, 2), 10, 20))
    sigma = rng.uniform(0.35, 0.6) / grid.spacing[1]
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    if sigma >= 0.3:
        kernel = np.exp(-0.5 * (np.arange(-4 * sigma, 4 * sigma + 1) / sigma) ** 2)
        kernel /= kernel.sum()
        gain = float((kernel ** 2).sum())  # sd kept by a 2D blur, per axis: sqrt(gain) each
        noise *= np.float32(sd / gain)
        hu += noise
        del noise
        ndimage.gaussian_filter(hu, sigma=(0, sigma, sigma), output=hu, truncate=4.0)
    else:
        noise *= np.float32(sd)
        hu += noise
        del noise
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
