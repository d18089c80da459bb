"""Lungs first: a left/right lung mask from Hounsfield units, shared by both methods.

``lung_mask(scan) -> LungMask`` labels every voxel of the scan's own grid 0 (not lung),
1 (the patient's right lung) or 2 (the left lung), as lungmask does. ``involvement(scan,
mask)`` measures how much of that lung has infection-like density (a research
measurement, see :func:`involvement`).

How the HU mask is found (``backend="hu"``), on a working copy of about 2 mm pixels
in-plane (every ``stride``-th pixel, stride = round(2 mm / pixel): 3 for 0.6-0.75 mm pixels,
2 for 0.8-1.2 mm; pictures without geometry matrix // 256; every slice is kept, so 0.6-5 mm
slices are treated alike):

1. Air is every voxel below ``AIR_HU`` (-400 HU). Per slice, air connected to the image
   border is outside the patient (room air, the air under and inside the table, the dark
   corners of a circular field of view); eroding the air by a 3 x 3 cross before that test
   stops a one-pixel leak through a thin chest wall from joining a lung to the room. Nothing
   needs the body outline, so a thin chest wall, a body touching the edge of the field of
   view or lying off-centre change nothing.
2. The air left is enclosed by tissue: lungs, trachea and bronchi, stomach and bowel gas,
   air trapped in clothing or the table. Per slice, a region of it is *gas* (not lung)
   when more than ``GAS_SHARE`` (30%) of it is below ``GAS_HU`` (-950 HU): lung parenchyma
   with its vessels sits around -850 HU, the lumen of airways and bowel near -1000 HU. This
   drops the trachea and main bronchi (while they run outside the lung), stomach and bowel
   gas and air outside the lungs alike. Severe emphysema (LAA-950 above 30%) would be
   dropped too: a known limit of this rule.
3. The main bronchi, where they run into a lung's region, are removed: air below -950 HU
   grown in 3D from the airway gas between the lungs, at most ``AIRWAY_REACH_MM`` (30 mm).
   The rest is joined in 3D; components under ``MIN_COMPONENT_SHARE`` (3%) of the largest
   are dropped (gas bubbles in bowel content, noise).
4. Right and left: per slice the lungs are cut at the column with least lung within 20% of
   the lungs' 3D midline, so touching lungs are separated and a slice with one lung keeps
   it whole. Array x runs to the patient's left unless the scan's direction says otherwise
   (pictures without geometry are taken in the radiological convention).
5. Pathology stays inside: per slice and lung, holes are filled (vessels, airway walls,
   central lesions), then a closing with an octagon of ``CLOSING_MM`` (30 mm) radius on a
   grid of 3-4 mm pixels adds the bites that dense tissue took out of the lung outline:
   juxta-pleural consolidation (0-50 HU) and dense ground glass touching the pleura. Only
   tissue voxels of -400-150 HU within ``PLEURA_REACH_MM`` (30 mm) of bone (ribs, spine,
   sternum: the chest wall) are added, so the hilum and the heart's border are not; no
   bone, and no air the steps above left out. A consolidation filling much of a lobe is
   left to step 6.
6. Consolidated lung (a lobe or segment without air): tissue of -400-150 HU is added to a
   lung where it lies on a straight run, sideways (away from the midline), backwards or
   forwards, from that lung's air to its ribs (bone > 200 HU in a slice within 15 mm: ribs are about 25 mm
   apart) of at least ``FILL_MIN_RUN_MM`` (10 mm), and inside the other lung mirrored across
   the midline (the median column of the bone) and grown by ``FILL_MIRROR_MM`` (6 mm): that
   is where a lung should be. The heart and mediastinum lie medial to the lung's air: tissue
   with this lung's air beside it (laterally, in its row) counts on a backward run only
   within 30 mm of the ribs (a paravertebral consolidation), on a forward run (an upper
   lobe) never. Bone within ``SPINE_HALF_MM``
   of the midline (the vertebral body) is no chest wall. What is added must be more than
   about 2 ``FILL_THICK_MM`` (and 4 working pixels) thick and denser than fat on average
   (``FILL_MIN_HU``, -80 HU): the chest wall that stands off a healthy lung near the apex is
   a thin sheet of fat and muscle. Limits: a consolidation in both lungs at the same place
   (no mirror image) is not recovered; the back of the heart next to a lower-lobe
   consolidation can come with it. Windowed 8-bit pictures clip at 150 HU, so they show no
   bone and this step (like step 5's bone test) adds nothing there.
7. Slices with no air left in a lung (the base of a consolidated lower lobe) have no air
   for step 6 to walk from: what step 6 found is followed from slice to slice, from that
   lung's largest slice towards both of its ends, into tissue (-400-150 HU) straight above
   or below it (no sideways growth, so a seed cannot creep through the liver) and inside
   the other lung's mirror image (as in step 6: below a lung lie liver, spleen and stomach,
   as dense as a consolidation); the same thickness test. Only step 6's finds seed it, not
   the lung's other dense voxels: a heart or liver dome filled as a hole of the lung would
   be followed through the organ. Normal lungs (nothing found by step 6) are unchanged.
   Limits: the front of an airless slice under a consolidation step 6 found only at the
   back stays out; an asymmetric apex (the other lung's mirror image smaller) is cut to it.
8. The labels are copied back (nearest neighbour) to the scan's grid.

Windowed pictures (8-bit PNG/JPG stacks): gray values are mapped back to approximate HU
with the COVIDx lung window ([-1350, 150] HU -> 0-255, :data:`covidct.windowing.COVIDX_LUNG`),
which is how COVIDx CT pictures were made; the rule above works on those approximate HU
(the thresholds lie well inside the window). Pictures made with another window get a wrong
mask; ``LungMask.warnings`` says that the window was assumed.

``backend="lungmask"`` runs the lungmask package's U-Net (Hofmanninger et al. 2020) from a
weights file on disk (``weights=``); nothing is downloaded.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import ModelError, ScanError
from .scan import Scan, evenly_spaced
from .windowing import COVIDX_LUNG

#: Lung labels, lungmask's convention.
RIGHT, LEFT = 1, 2
LABEL_NAMES = {RIGHT: "right", LEFT: "left"}
BACKENDS = ("hu", "lungmask")
#: Version of the HU rule: part of every cache key of a mask or of what it masks. Raise it
#: whenever a change to the rule changes a mask.
RULE_VERSION = "hu-v3"

AIR_HU = -400.0
GAS_HU = -950.0
#: Share of a region below GAS_HU above which it is gas rather than lung (the emphysema
#: index LAA-950 of normal lungs is a few percent, 30% is severe emphysema).
GAS_SHARE = 0.3
MIN_COMPONENT_SHARE = 0.03
CLOSING_MM = 30.0
#: Densest tissue the pleural closing may add (consolidation, not bone).
CLOSING_MAX_HU = 150.0
#: How far the main bronchi are followed into a lung's region from the airway gas outside it.
AIRWAY_REACH_MM = 30.0
#: Pixel size the pleural closing works at (mm).
CLOSING_PIXEL_MM = 3.5
#: Bone, and how far from it (in-plane) the closing may add tissue to the lung.
BONE_HU = 200.0
PLEURA_REACH_MM = 30.0
#: Consolidated lung (step 6): tissue on a straight run of at least FILL_MIN_RUN_MM from a
#: lung out to its ribs (sideways, backwards or forwards), inside the other lung's mirror image grown
#: by FILL_MIRROR_MM, in pieces over 2 FILL_THICK_MM thick and FILL_MIN_ML large. Bone within
#: SPINE_HALF_MM of the midline is the vertebral body, not a chest wall; a piece's mean HU
#: must reach FILL_MIN_HU (denser than fat). Chosen on SYNTHETIC
#: cohorts (lungs_eval) and checked on the real JPG series (nothing added there).
FILL_MIN_RUN_MM = 10.0
FILL_MIRROR_MM = 6.0
FILL_THICK_MM = 4.0
FILL_MIN_ML = 1.0
FILL_MIN_HU = -80.0
SPINE_HALF_MM = 12.0
#: Working pixel size (mm): the mask is found on every round(WORK_MM / pixel)-th pixel;
#: pictures without geometry on every (matrix // WORK_PX)-th.
WORK_MM = 2.0
WORK_PX = 256
#: A scan "has lungs" when its largest lung cross-section reaches this area.
MIN_LUNG_AREA_MM2 = 2000.0
#: A slice is a lung slice when its lung area reaches this (2 cm^2: a basal crescent that
#: can hold a lesion counts; a slice under the diaphragm does not).
LUNG_SLICE_MM2 = 200.0

_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


@dataclass
class LungMask:
    """Lung labels on the scan's own grid (0 none, 1 right lung, 2 left lung)."""

    labels: np.ndarray
    spacing: tuple[float, float, float]
    backend: str = "hu"
    geometry_known: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def lung(self) -> np.ndarray:
        return self.labels > 0

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @cached_property
    def _per_slice(self) -> np.ndarray:
        """Right and left lung voxels per slice, (z, 2): counted once (the labels stay put)."""
        return np.stack([(self.labels == k).sum(axis=(1, 2)) for k in (RIGHT, LEFT)], axis=1)

    def slice_areas_mm2(self) -> np.ndarray:
        """Lung area of every slice, in mm^2."""
        return self._per_slice.sum(axis=1) * float(self.spacing[1] * self.spacing[2])

    @property
    def found(self) -> bool:
        """Whether the scan shows lungs (largest cross-section >= MIN_LUNG_AREA_MM2)."""
        areas = self.slice_areas_mm2()
        return bool(areas.size and areas.max() >= MIN_LUNG_AREA_MM2)

    def lung_slices(self, min_area_mm2: float = LUNG_SLICE_MM2) -> np.ndarray:
        """Indices of the slices with at least ``min_area_mm2`` of lung (none if not found)."""
        if not self.found:
            return np.zeros(0, dtype=int)
        return np.flatnonzero(self.slice_areas_mm2() >= min_area_mm2)

    def volumes_ml(self) -> dict[str, float]:
        right, left = (float(n) * self.voxel_ml for n in self._per_slice.sum(axis=0))
        return {"right": round(right, 1), "left": round(left, 1), "total": round(right + left, 1)}

    def summary(self) -> dict[str, Any]:
        """JSON-able facts (no arrays) for outputs, checks and DICOM SR."""
        return {"backend": self.backend, "found": self.found, "volumes_ml": self.volumes_ml(),
                "geometry_known": self.geometry_known, "n_lung_slices": int(len(self.lung_slices())),
                "labels": {"1": "right lung", "2": "left lung"}, "details": self.details,
                "warnings": list(self.warnings)}


def lung_mask(scan: Scan, backend: str = "hu", weights: str | os.PathLike | None = None) -> LungMask:
    """The scan's lungs, left and right labelled (see the module doc)."""
    if backend not in BACKENDS:
        raise ScanError(f"unknown lung mask backend {backend!r}; choose from {', '.join(BACKENDS)}")
    scan.require_axial("the lung mask")
    warnings = []
    if not scan.is_hu:
        warnings.append("8-bit picture: HU approximated with the COVIDx lung window [-1350, 150] HU")
    if not scan.geometry_known:
        warnings.append("no voxel spacing: 1 x 1 x 1 mm assumed, volumes are not in real mL")
    if backend == "lungmask":
        labels, details = _lungmask_labels(scan, weights)
    else:
        labels, details = _hu_labels(scan)
    return LungMask(labels=labels, spacing=tuple(scan.spacing), backend=backend,
                    geometry_known=scan.geometry_known, details=details, warnings=warnings)


# The HU rule ------------------------------------------------------------------------------

def working_stride(shape: tuple[int, ...], pixel_mm: float | None = None) -> int:
    """Every how many pixels the mask is found: about WORK_MM pixels where the pixel size is
    known (stride 3 at 0.6-0.75 mm, 2 at 0.8-1.2 mm), else matrix // WORK_PX."""
    if pixel_mm:
        return max(1, int(round(WORK_MM / pixel_mm)))
    return max(1, min(shape[-2:]) // WORK_PX)


def _stride(scan: Scan) -> int:
    return working_stride(scan.shape, min(scan.spacing[1:]) if scan.geometry_known else None)


def _hu_copy(scan: Scan, stride: int) -> np.ndarray:
    small = scan.voxels[:, ::stride, ::stride]
    if scan.is_hu:
        return np.array(small, dtype=np.float32)  # a copy: callers write into it
    return COVIDX_LUNG.from_uint8(small)


def _hu_labels(scan: Scan) -> tuple[np.ndarray, dict[str, Any]]:
    stride = _stride(scan)
    hu = _hu_copy(scan, stride)
    pixel = (scan.spacing[1] * stride, scan.spacing[2] * stride)
    np.fmax(hu, -1024.0, out=hu)  # NaN (missing data) -> -1024, in one pass
    air = hu < AIR_HU
    outside = _outside_air(air)
    enclosed = air & ~outside
    labels = np.zeros(hu.shape, np.uint8)
    airway_at_start = False
    if enclosed.any():
        # Everything after this works inside the box of the enclosed air (plus the closing's reach).
        box = _box(enclosed, margin=int(np.ceil(CLOSING_MM / min(pixel))) + 2)
        lungs, gas = _lung_regions(hu[box], enclosed[box])
        lungs = _drop_airways(lungs, gas, hu[box], pixel)
        labels[box] = _split_sides(lungs, _x_to_left(scan))
        airway_at_start = _airway_at_start(lungs, gas)
        _close_pleura(labels[box], hu[box], outside[box], pixel, scan.spacing[0])
        _fill_lobes(labels[box], hu[box], outside[box], pixel, scan.spacing[0], _y_to_back(scan))
    details = {"working_stride": stride, "working_pixel_mm": [round(p, 3) for p in pixel],
               "air_hu": AIR_HU, "gas_hu": GAS_HU, "closing_mm": CLOSING_MM,
               "airway_at_start": airway_at_start}
    return _to_full(labels, scan.shape, stride), details


def _label_2d(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-slice 4-connected components of a (z, y, x) mask, numbered across the stack."""
    return ndimage.label(mask, structure=_IN_PLANE)


def _outside_air(air: np.ndarray) -> np.ndarray:
    """Air connected to the in-plane image border, per slice (after a 3x3 opening)."""
    labels, n = _label_2d(_cross(air, np.logical_and))
    edge = np.zeros(n + 1, bool)
    for face in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        edge[np.unique(face)] = True
    edge[0] = False
    # Give back what the erosion took from the room air, so its thin rims do not count as inside.
    return _cross(edge[labels], np.logical_or) & air


def _cross(mask: np.ndarray, op) -> np.ndarray:
    """In-plane erosion (op=logical_and) or dilation (logical_or) by a 3x3 cross, by shifts
    (several times faster than scipy's filters on a whole stack); the border stays as it is."""
    out = mask.copy()
    op(out[:, 1:], mask[:, :-1], out=out[:, 1:])
    op(out[:, :-1], mask[:, 1:], out=out[:, :-1])
    op(out[:, :, 1:], mask[:, :, :-1], out=out[:, :, 1:])
    op(out[:, :, :-1], mask[:, :, 1:], out=out[:, :, :-1])
    return out


def _lung_regions(hu: np.ndarray, enclosed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enclosed air that is not gas, in 3D components of a useful size; and the gas."""
    labels, n = _label_2d(enclosed)
    if n == 0:
        return enclosed, enclosed
    area = np.bincount(labels.ravel(), minlength=n + 1)
    gas = np.bincount(labels[hu < GAS_HU], minlength=n + 1)
    lung_like = gas <= GAS_SHARE * np.maximum(area, 1)
    lung_like[0] = False
    candidate = lung_like[labels]
    gas_regions = enclosed & ~candidate
    parts, m = ndimage.label(candidate)
    if m == 0:
        return candidate, gas_regions
    sizes = np.bincount(parts.ravel(), minlength=m + 1)
    sizes[0] = 0
    keep = sizes >= MIN_COMPONENT_SHARE * sizes.max()
    keep[0] = False
    return keep[parts], gas_regions


def _drop_airways(lungs: np.ndarray, gas: np.ndarray, hu: np.ndarray,
                  pixel: tuple[float, float]) -> np.ndarray:
    """The lungs without the main bronchi where they run into a lung's 2D region: air below
    GAS_HU connected (in 3D) to the airway gas between the lungs (trachea, bronchi outside the
    lung), up to AIRWAY_REACH_MM from it. Grown in a box around that gas only."""
    if not lungs.any() or not gas.any():
        return lungs
    xs = np.flatnonzero(lungs.any(axis=(0, 1)))
    mid, reach = 0.5 * (xs[0] + xs[-1]), max(1, int(0.15 * (xs[-1] - xs[0])))
    seeds = np.zeros_like(gas)
    lo, hi = max(0, int(mid) - reach), int(mid) + reach + 1
    seeds[:, :, lo:hi] = gas[:, :, lo:hi]
    if not seeds.any():
        return lungs
    steps = max(1, int(round(AIRWAY_REACH_MM / min(pixel))))
    box = _box(seeds, margin=steps)
    box = (slice(max(0, box[0].start - steps), min(lungs.shape[0], box[0].stop + steps)),) + box[1:]
    allowed = lungs[box] & (hu[box] < GAS_HU)
    front, grown = seeds[box], np.zeros(allowed.shape, bool)
    for _ in range(steps):
        step = _cross(front, np.logical_or)
        step[1:] |= front[:-1]
        step[:-1] |= front[1:]
        step &= allowed & ~grown
        if not step.any():
            break
        grown |= step
        front = step
    out = lungs.copy()
    out[box] &= ~grown
    return out


def _airway_at_start(lungs: np.ndarray, gas: np.ndarray) -> bool:
    """Whether the airway gas between the lungs lies in the first half of the lung slices
    (then slice 0 is the head end): the trachea runs above the lungs' middle, the stomach
    and bowel below it and to the side."""
    rows = np.flatnonzero(lungs.any(axis=(1, 2)))
    if rows.size < 4:
        return False
    xs = np.flatnonzero(lungs.any(axis=(0, 1)))
    mid, reach = 0.5 * (xs[0] + xs[-1]), max(1, int(0.1 * (xs[-1] - xs[0])))
    central = gas[rows, :, max(0, int(mid) - reach):int(mid) + reach + 1].sum(axis=(1, 2))
    half = rows.size // 2
    return bool(central[:half].sum() > central[half:].sum())


def _x_to_left(scan: Scan) -> bool:
    """Whether array x runs towards the patient's left (LPS +x), as in a radiological view."""
    axis = np.asarray(scan.direction, dtype=float).reshape(3, 3)[:, 0]
    return bool(axis[int(np.argmax(np.abs(axis)))] >= 0)


def _y_to_back(scan: Scan) -> bool:
    """Whether array y runs towards the patient's back (LPS +y); pictures: assumed so."""
    axis = np.asarray(scan.direction, dtype=float).reshape(3, 3)[:, 1]
    return bool(axis[int(np.argmax(np.abs(axis)))] >= 0)


def _split_sides(lungs: np.ndarray, x_to_left: bool) -> np.ndarray:
    """Label 1 (right) / 2 (left) by a per-slice cut near the lungs' midline."""
    labels = np.zeros(lungs.shape, np.uint8)
    if not lungs.any():
        return labels
    columns = lungs.sum(axis=1)                       # (z, x) lung pixels per column
    xs = np.flatnonzero(columns.any(axis=0))
    mid = 0.5 * (xs[0] + xs[-1])
    reach = max(2, int(round(0.2 * (xs[-1] - xs[0] + 1))))
    lo, hi = max(0, int(mid) - reach), min(lungs.shape[2], int(mid) + reach + 1)
    window = columns[:, lo:hi]
    # Least lung in the window; among ties the column nearest the midline.
    distance = np.abs(np.arange(lo, hi) - mid)
    cut = lo + np.argmin(window * (hi - lo + 1) * 2 + distance[None, :], axis=1)  # (z,)
    x = np.arange(lungs.shape[2])
    first = (x[None, :] <= cut[:, None])[:, None, :]  # image-left part of each slice
    near, far = (RIGHT, LEFT) if x_to_left else (LEFT, RIGHT)
    labels[lungs & first] = near
    labels[lungs & ~first] = far
    return labels


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    labels, n = _label_2d(~mask)
    edge = np.zeros(n + 1, bool)
    for face in (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        edge[np.unique(face)] = True
    edge[0] = True  # label 0 is the mask itself
    return mask | ~edge[labels]


def _close_pleura(labels: np.ndarray, hu: np.ndarray, outside: np.ndarray,
                  pixel: tuple[float, float], slice_mm: float) -> None:
    """In place: per lung, fill holes per slice and close the outline (see the module doc)."""
    # Tissue only: air left out on purpose (gas, room air) stays out.
    addable = (hu >= AIR_HU) & (hu <= CLOSING_MAX_HU) & ~outside
    step = max(1, int(round(CLOSING_PIXEL_MM / min(pixel))))
    for side in (RIGHT, LEFT):
        own = labels == side
        if not own.any():
            continue
        box = _box(own, margin=int(np.ceil(CLOSING_MM / min(pixel))) + 2)
        region = own[box]
        # Bites in the outline count as lung only near the chest wall (ribs, spine): the
        # closing would otherwise also take the hilum and the mediastinum's concavities.
        coarse_pixel = (pixel[0] * step, pixel[1] * step)
        near_wall = _near(hu[box][:, ::step, ::step] > BONE_HU, PLEURA_REACH_MM, coarse_pixel, slice_mm)
        closed = _closing(region[:, ::step, ::step], coarse_pixel) & near_wall
        closed = _fill_holes_2d(_upsample(closed, region.shape, step) | region)
        add = closed & ~region & addable[box] & (labels[box] == 0)
        labels[box][add] = side


def _first_hit(code: np.ndarray, passable: np.ndarray, axis: int,
               forward: bool) -> tuple[np.ndarray, np.ndarray]:
    """For every voxel, ``code`` (0-3) of the first non-passable voxel met walking along
    ``axis`` (towards higher indices if ``forward``) from the next voxel on, and how many
    steps away it is; code 0 where the walk leaves the array. One running maximum of
    index * 4 + code (no loop, no gather)."""
    if forward:
        code, passable = np.flip(code, axis), np.flip(passable, axis)
    n = code.shape[axis]
    shape = [1] * code.ndim
    shape[axis] = n
    steps = np.arange(n, dtype=np.int32).reshape(shape)
    last = np.where(passable, np.int32(-4), steps * 4 + code)
    np.maximum.accumulate(last, axis=axis, out=last)
    prev = np.full_like(last, -4)  # the last stop strictly before each voxel
    head = [slice(None)] * code.ndim
    tail = [slice(None)] * code.ndim
    head[axis], tail[axis] = slice(0, n - 1), slice(1, n)
    prev[tuple(tail)] = last[tuple(head)]
    hit = np.where(prev < 0, 0, prev & 3)
    dist = steps - (prev >> 2)
    if forward:
        hit, dist = np.flip(hit, axis), np.flip(dist, axis)
    return hit, dist


def _fill_lobes(labels: np.ndarray, hu: np.ndarray, outside: np.ndarray,
                pixel: tuple[float, float], slice_mm: float, y_to_back: bool) -> None:
    """In place: consolidated lung between a lung and its ribs (step 6 of the module doc),
    then followed into the slices where its lung has no air left (step 7)."""
    xs = np.arange(labels.shape[2])
    seen = labels.any(axis=(0, 1))
    centre = {}
    for side in (RIGHT, LEFT):
        cols = (labels == side).any(axis=(0, 1)) & seen
        if not cols.any():
            return  # one lung only: no mirror image to say where the other should be
        centre[side] = float(xs[cols].mean())
    bone = hu > BONE_HU
    # Ribs are about 25 mm apart: a rib of a nearby slice stands for the wall between ribs.
    size = 2 * int(round(0.5 * PLEURA_REACH_MM / slice_mm)) + 1
    bone = ndimage.maximum_filter1d(bone.view(np.uint8), size=size, axis=0).view(bool)
    tissue = (hu >= AIR_HU) & (hu <= CLOSING_MAX_HU) & ~outside & ~bone & (labels == 0)
    # Air bronchograms and gas inside a consolidation do not stop a walk (nor are they added).
    passable = tissue | ((hu < AIR_HU) & ~outside & (labels == 0))
    # The midline from the bone of the lungs' rows (ribs come in pairs; the table lies
    # below them), robust to a lung that lost its air. Around it the vertebral body, which
    # is not a chest wall: the mediastinum lies in front of it.
    rows = np.flatnonzero((labels > 0).any(axis=(0, 2)))
    bx = np.nonzero(bone[:, rows[0]:rows[-1] + 1])[2]
    mid = float(np.median(bx)) if bx.size else 0.5 * (centre[RIGHT] + centre[LEFT])
    wall = bone & (np.abs(xs - mid) > SPINE_HALF_MM / pixel[1])[None, None, :]
    grow = max(1, int(round(FILL_MIRROR_MM / pixel[1])))
    adds, halves = {}, {}
    for side in (RIGHT, LEFT):
        # Work on this lung's half of the chest, in the slices that hold this lung.
        outwards = centre[side] > centre[3 - side]  # the lateral side is towards higher x
        cut = int(np.clip(round(mid), 0, xs.size))
        cols = halves[side] = slice(cut, xs.size) if outwards else slice(0, cut)
        own = labels[:, :, cols] == side
        zs = np.flatnonzero(own.any(axis=(1, 2)))
        if zs.size == 0 or cols.start == cols.stop:
            continue
        z = slice(zs[0], zs[-1] + 1)
        crop = (z, slice(None), cols)
        own = own[z]
        candidate = tissue[crop] & _mirrored(labels[z], side, mid, cols, grow)
        # Only slices where the candidate is thick enough to pass _thick_parts need the
        # walks below (a healthy lung's candidate is its partial-volume rim: none).
        r = _thick_steps(pixel[1])
        core = candidate
        for k in range(r):
            core = _square(core, np.logical_and) if k % 2 else _cross(core, np.logical_and)
        zs = np.flatnonzero(core.any(axis=(1, 2)))
        if zs.size == 0:
            continue
        keep = slice(zs[0], zs[-1] + 1)
        crop = (slice(z.start + zs[0], z.start + zs[-1] + 1), slice(None), cols)
        own, candidate = own[keep], candidate[keep]
        code = np.where(own, 1, np.where(wall[crop], 2, 0)).astype(np.int32)
        # Tissue medial to this lung's air in its own row is mediastinum (the heart) unless
        # it lies close to the ribs behind it (a paravertebral consolidation).
        if outwards:
            lateral_air = np.flip(np.logical_or.accumulate(np.flip(own, 2), axis=2), 2)
        else:
            lateral_air = np.logical_or.accumulate(own, axis=2)
        run = np.zeros(own.shape, np.float32)  # longest lung-to-rib run through the voxel
        for axis, forward, mm in ((2, outwards, pixel[1]), (1, y_to_back, pixel[0]),
                                  (1, not y_to_back, pixel[0])):
            to_wall, d_wall = _first_hit(code, passable[crop], axis, forward)
            to_lung, d_lung = _first_hit(code, passable[crop], axis, not forward)
            ok = candidate & (to_wall == 2) & (to_lung == 1)
            if axis == 1 and forward == y_to_back:
                ok &= ~lateral_air | (d_wall * mm <= PLEURA_REACH_MM)
            elif axis == 1:  # forwards (an upper lobe): never beside this lung's air
                ok &= ~lateral_air
            np.maximum(run, np.where(ok, (d_wall + d_lung - 1) * mm, 0), out=run)
        add = run >= FILL_MIN_RUN_MM
        if add.any():
            adds[side] = (crop, _thick_parts(add, hu[crop], pixel[1], slice_mm))
    found = np.zeros(labels.shape, bool)
    for side, (crop, add) in adds.items():
        part = labels[crop]
        add &= part == 0
        part[add] = side
        found[crop] |= add
    for side in adds:
        _follow_consolidation(labels, hu, tissue, found & (labels == side), side, halves[side],
                              mid, grow, pixel[1], slice_mm)


def _mirrored(labels: np.ndarray, side: int, mid: float, cols: slice, grow: int) -> np.ndarray:
    """Where the other lung, mirrored across the midline ``mid`` and grown by ``grow``
    pixels, says this lung should be, in the columns ``cols`` of this lung's half."""
    xs = np.arange(labels.shape[2])
    src = np.round(2 * mid - xs[cols]).astype(int)
    inside = (src >= 0) & (src < xs.size)
    mirrored = np.zeros((labels.shape[0], labels.shape[1], xs[cols].size), bool)
    mirrored[:, :, inside] = labels[:, :, src[inside]] == 3 - side
    for k in range(grow):
        mirrored = _square(mirrored, np.logical_or) if k % 2 else _cross(mirrored, np.logical_or)
    return mirrored


def _follow_consolidation(labels: np.ndarray, hu: np.ndarray, tissue: np.ndarray,
                          found: np.ndarray, side: int, cols: slice, mid: float, grow: int,
                          pixel: float, slice_mm: float) -> None:
    """In place (step 7 of the module doc): a consolidation followed from slice to slice into
    slices where its lung has little or no air left (the base of a consolidated lower lobe):
    tissue straight above or below what step 6 ``found`` in this lung (or what this step added
    next to it), inside the other lung's mirror image, going from this lung's largest slice
    towards both of its ends, in ``cols``, this lung's half of the chest (as step 6)."""
    part = labels[:, :, cols]
    own = part == side
    if not own.any() or cols.start == cols.stop:
        return
    candidate = tissue[:, :, cols] & _mirrored(labels, side, mid, cols, grow) & (part == 0)
    # Seeds: what step 6 found (between air and ribs). Not the lung's other dense voxels: a
    # heart or a liver dome filled as a hole of the lung would be followed through the organ.
    seeds = found[:, :, cols]
    add = np.zeros(own.shape, bool)
    start = int(np.argmax(own.sum(axis=(1, 2))))
    for step in (1, -1):
        prev = seeds[start]
        for z in range(start + step, own.shape[0] if step > 0 else -1, step):
            # Straight on only, no sideways growth: a lung narrows towards its ends, and a
            # seed that could widen by a pixel a slice would creep through the liver.
            add[z] = candidate[z] & prev
            prev = seeds[z] | add[z]
    if add.any():
        part[_thick_parts(add, hu[:, :, cols], pixel, slice_mm)] = side  # candidates: unlabelled


def _thick_steps(pixel: float) -> int:
    """Erosion steps of the thickness test: at least two, since at coarse pixels (2.5-3 mm)
    one step leaves a sheet of chest wall 3 pixels thick."""
    return max(2, int(round(FILL_THICK_MM / pixel)))


def _thick_parts(add: np.ndarray, hu: np.ndarray, pixel: float, slice_mm: float) -> np.ndarray:
    """The parts of ``add`` more than about 2 FILL_THICK_MM (and 4 pixels) thick in-plane,
    in 3D pieces of at least FILL_MIN_ML whose mean is at least FILL_MIN_HU, with the rest
    of ``add`` within twice the erosion of them: a sheet of chest wall inside the ribs
    (thicker near the apex) is not a consolidation."""
    r = _thick_steps(pixel)
    box = _box(add, margin=2 * r + 1)
    core = add[box]
    for k in range(r):
        core = _square(core, np.logical_and) if k % 2 else _cross(core, np.logical_and)
    out = np.zeros(add.shape, bool)
    if not core.any():
        return out
    parts, n = ndimage.label(core)
    ml = np.bincount(parts.ravel(), minlength=n + 1) * (pixel * pixel * slice_mm / 1000.0)
    # A piece must also be denser than fat on average: fat between a healthy lung and its
    # ribs (extrapleural fat, thicker near the apex) is a long sheet of about -100 HU.
    mean_hu = np.bincount(parts.ravel(), weights=hu[box].ravel(), minlength=n + 1) \
        / np.maximum(np.bincount(parts.ravel(), minlength=n + 1), 1)
    keep = (ml >= FILL_MIN_ML) & (mean_hu >= FILL_MIN_HU)
    keep[0] = False
    core = keep[parts]
    for k in range(2 * r):
        core = _square(core, np.logical_or) if k % 2 else _cross(core, np.logical_or)
    out[box] = core & add[box]
    return out


def _upsample(mask: np.ndarray, shape: tuple[int, ...], step: int) -> np.ndarray:
    if step == 1:
        return mask
    full = np.repeat(np.repeat(mask, step, axis=1), step, axis=2)
    return full[:, :shape[1], :shape[2]]


def _near(mask: np.ndarray, reach_mm: float, pixel: tuple[float, float],
          slice_mm: float) -> np.ndarray:
    """Voxels within ``reach_mm`` in-plane (a square's half side) and half that in z of
    ``mask``: the z reach spans the gaps between ribs (about 25 mm apart)."""
    size = (2 * int(round(0.5 * reach_mm / slice_mm)) + 1,
            2 * int(round(reach_mm / pixel[0])) + 1, 2 * int(round(reach_mm / pixel[1])) + 1)
    return ndimage.maximum_filter(mask.view(np.uint8), size=size).astype(bool)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        pad = 0 if axis == 0 else margin
        out.append(slice(max(0, idx[0] - pad), min(mask.shape[axis], idx[-1] + pad + 1)))
    return tuple(out)  # type: ignore[return-value]


def _closing(mask: np.ndarray, pixel: tuple[float, float]) -> np.ndarray:
    """Per-slice closing with an octagon of radius CLOSING_MM (alternating 3x3 cross and
    square steps, each a few shifted copies: far faster than scipy with a large disk)."""
    r = max(1, int(round(CLOSING_MM / min(pixel))))
    # Pad so that the closing does not stop at the crop's edge.
    padded = np.pad(mask, ((0, 0), (r + 1, r + 1), (r + 1, r + 1)))
    for op in (np.logical_or, np.logical_and):
        for k in range(r):
            padded = _cross(padded, op) if k % 2 == 0 else _square(padded, op)
    return padded[:, r + 1:-r - 1, r + 1:-r - 1] | mask


def _square(mask: np.ndarray, op) -> np.ndarray:
    """In-plane erosion/dilation by a 3x3 square (a cross along y, then along x)."""
    out = mask.copy()
    op(out[:, 1:], mask[:, :-1], out=out[:, 1:])
    op(out[:, :-1], mask[:, 1:], out=out[:, :-1])
    rows = out.copy()
    op(out[:, :, 1:], rows[:, :, :-1], out=out[:, :, 1:])
    op(out[:, :, :-1], rows[:, :, 1:], out=out[:, :, :-1])
    return out


def _to_full(labels: np.ndarray, shape: tuple[int, int, int], stride: int) -> np.ndarray:
    """Nearest-neighbour copy of the working labels onto the scan grid. Only the lungs' box is
    written (the rest of a fresh zero array costs nothing), through a (z, h, s, w, s) view of
    it, so each voxel is written once."""
    if stride == 1:
        return labels
    out = np.zeros(shape, np.uint8)
    if not labels.any():
        return out
    zs, ys, xs = _box(labels > 0, margin=0)
    part = labels[zs, ys, xs]
    y0, x0 = ys.start * stride, xs.start * stride
    # Whole stride blocks through the view; a last partial block at the image edge, if any,
    # takes its block's value row by row below.
    h = min(part.shape[1], (shape[1] - y0) // stride)
    w = min(part.shape[2], (shape[2] - x0) // stride)
    view = out[zs, y0:y0 + h * stride, x0:x0 + w * stride]
    view.reshape(view.shape[0], h, stride, w, stride)[...] = part[:, :h, None, :w, None]
    if h < part.shape[1] or w < part.shape[2]:
        rows = np.minimum((np.arange(y0, shape[1]) - y0) // stride, part.shape[1] - 1)
        cols = np.minimum((np.arange(x0, shape[2]) - x0) // stride, part.shape[2] - 1)
        edge = part[:, rows][:, :, cols]
        region = out[zs, y0:, x0:]
        region[:, h * stride:, :] = edge[:, h * stride:, :]
        region[:, :, w * stride:] = edge[:, :, w * stride:]
    return out


# The lungmask backend --------------------------------------------------------------------

def check_lungmask_weights(weights: str | os.PathLike | None) -> str:
    """The weights path for the lungmask backend, refused early when missing."""
    if weights is None:
        raise ModelError("--lungs lungmask needs the lungmask weights file on disk "
                         "(--lung-weights PATH, e.g. unet_r231-d5d2fc3d.pth); covidct never downloads it")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ModelError("lungmask weights file not found", path)
    return path


def _lungmask_labels(scan: Scan, weights: str | os.PathLike | None) -> tuple[np.ndarray, dict]:
    """lungmask's U-Net from a local weights file (its labels: 1 right, 2 left)."""
    path = check_lungmask_weights(weights)
    try:
        from lungmask import LMInferer
    except ImportError:
        raise ModelError("--lungs lungmask needs the lungmask package (pip install lungmask)") from None
    hu = scan.voxels if scan.is_hu else COVIDX_LUNG.from_uint8(scan.voxels)
    try:
        inferer = LMInferer(modelpath=path, force_cpu=True, tqdm_disable=True)
    except Exception as exc:  # a wrong or damaged file: torch/lungmask raise many kinds
        raise ModelError(f"could not load lungmask weights ({type(exc).__name__})", path) from None
    labels = inferer.apply(np.asarray(hu, dtype=np.float32)).astype(np.uint8)
    labels[labels > LEFT] = 0
    if not _x_to_left(scan):  # lungmask assumes LPS arrays; its "right" is image-left
        labels = np.where(labels > 0, 3 - labels, 0).astype(np.uint8)
    return labels, {"weights": os.path.basename(path), "model": "lungmask U-Net (R231 layout)"}


# Involvement --------------------------------------------------------------------------------

#: Infection-like density inside the lung mask (HU): ground glass, then consolidation above.
GGO_HU = (-750.0, -300.0)
#: Dense structures narrower than twice this (vessels, airway walls, fissures, partial volume
#: at the pleura) are removed by an in-plane opening before counting.
VESSEL_RADIUS_MM = 3.0
#: A voxel of a CovidCTNet infection map counts as "infected" above this value: the map is
#: the pre-processed slice minus the denoiser's normal lung, in [0, 1] units of the
#: [-1000, 400] HU window, so 0.1 is 140 HU denser than the model's normal lung.
MAP_THRESHOLD = 0.1
#: Per-zone extent score: 0 below 1% (noise), 1 up to 25%, 2 up to 50%, 3 up to 75%, 4 above.
ZONE_BINS = (1.0, 25.0, 50.0, 75.0)
ZONES = ("upper", "middle", "lower")
SEVERITY_SCALE = (
    "six-zone CT severity score: each lung split into upper/middle/lower thirds of its "
    "height; per zone 0 (<1% involved), 1 (1-25%), 2 (25-50%), 3 (50-75%), 4 (>75%), "
    "total 0-24 (the per-zone extent bins of Chung et al., Radiology 2020, applied to six "
    "geometric zones rather than five lobes)")
RESEARCH_NOTE = ("research measurement, not validated for clinical use: share of the lung "
                 "mask with infection-like density by a fixed HU rule")


def superior_first(scan: Scan, mask: LungMask) -> bool:
    """Whether slice 0 is the head end: from the scan's direction, or for pictures without
    geometry from where the airway gas lies (the trachea is above the lungs' middle)."""
    if scan.geometry_known:
        axis = np.asarray(scan.direction, dtype=float).reshape(3, 3)[:, 2]
        return bool(axis[int(np.argmax(np.abs(axis)))] < 0)
    return bool(mask.details.get("airway_at_start", False))


def involvement(scan: Scan, mask: LungMask, infection_map: np.ndarray | None = None,
                map_threshold: float = MAP_THRESHOLD) -> dict[str, Any]:
    """The share of lung with infection-like density, per lung and per zone (JSON-able).

    ``infection_map``: optional map (any shape) covering the scan's extent in the scan's
    array orientation (e.g. CovidCTNet's, flipped back); its share of lung above
    ``map_threshold`` is reported as ``map_share_percent``.
    """
    stride = _stride(scan)
    labels = mask.labels[:, ::stride, ::stride]
    pixel = min(scan.spacing[1], scan.spacing[2]) * stride
    reach = max(1, int(round(VESSEL_RADIUS_MM / pixel)))
    if labels.any():  # only the lungs' box is read and measured
        box = _box(labels > 0, margin=reach + 1)
        labels = labels[box]
        full = tuple(slice(b.start * (stride if i else 1), b.stop * (stride if i else 1))
                     for i, b in enumerate(box))
        hu = _hu_copy(scan.with_voxels(scan.voxels[full]), stride)
    else:
        hu = _hu_copy(scan, stride)
    np.fmax(hu, -1024.0, out=hu)
    dense = (hu >= GGO_HU[0]) & (labels > 0)
    for _ in range(reach):
        dense = _cross(dense, np.logical_and)
    for _ in range(reach):
        dense = _cross(dense, np.logical_or)
    dense &= (hu >= GGO_HU[0]) & (labels > 0)
    consolidation = dense & (hu >= GGO_HU[1])
    voxel_ml = float(np.prod(scan.spacing)) * stride * stride / 1000.0
    out: dict[str, Any] = {
        "research_measurement": True, "note": RESEARCH_NOTE,
        "rule": {"ground_glass_hu": list(GGO_HU), "consolidation_hu": f">= {GGO_HU[1]:.0f}",
                 "vessels": f"dense structures narrower than about {2 * VESSEL_RADIUS_MM:.0f} mm "
                            "removed by an in-plane opening",
                 "working_pixel_mm": round(pixel, 3)},
        "lung_volume_ml": mask.volumes_ml(), "geometry_known": mask.geometry_known,
    }
    lung_n = int((labels > 0).sum())
    out["involved_ml"] = round(int(dense.sum()) * voxel_ml, 1)
    out["involved_percent"] = _percent(dense.sum(), lung_n)
    out["ground_glass_percent"] = _percent((dense & ~consolidation).sum(), lung_n)
    out["consolidation_percent"] = _percent(consolidation.sum(), lung_n)
    out["by_lung"] = {name: {"involved_percent": _percent((dense & (labels == side)).sum(),
                                                          (labels == side).sum())}
                      for side, name in LABEL_NAMES.items()}
    out["zones"] = _zones(labels, dense, superior_first(scan, mask))
    out["severity_score"] = int(sum(z["score"] for z in out["zones"]))
    out["severity_scale"] = SEVERITY_SCALE
    if infection_map is not None:
        out["map_threshold"] = map_threshold
        out["map_share_percent"] = map_share(mask.labels, infection_map, map_threshold)
    return out


def _percent(part, whole) -> float:
    return round(100.0 * float(part) / float(whole), 2) if whole else 0.0


def _zones(labels: np.ndarray, dense: np.ndarray, head_first: bool) -> list[dict[str, Any]]:
    zones = []
    for side, name in LABEL_NAMES.items():
        own = labels == side
        per_slice = own.sum(axis=(1, 2))
        hit = (dense & own).sum(axis=(1, 2))
        rows = np.flatnonzero(per_slice)
        thirds = (np.array_split(rows, 3) if rows.size >= 3 else [rows, rows[:0], rows[:0]])
        if not head_first:
            thirds = thirds[::-1]
        for zone, idx in zip(ZONES, thirds):
            pct = _percent(hit[idx].sum(), per_slice[idx].sum())
            zones.append({"zone": f"{name} {zone}", "involved_percent": pct,
                          "score": int(np.searchsorted(ZONE_BINS, pct, side="right"))})
    return zones


def resample_nearest(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resampling by voxel centres (both arrays span the same extent)."""
    idx = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1)
           for n, m in zip(shape, array.shape)]
    return array[np.ix_(*idx)]


def map_share(labels: np.ndarray, infection_map: np.ndarray, threshold: float = MAP_THRESHOLD) -> float:
    """Percent of the lung (labels resampled onto the map's grid) where the map exceeds
    ``threshold``."""
    lung = resample_nearest(labels, infection_map.shape) > 0
    return _percent((lung & (infection_map > threshold)).sum(), lung.sum())


# One mask per scan, shared by both methods --------------------------------------------------

#: The lung mask backend predictions use (see :func:`use_backend`).
_BACKEND: dict[str, Any] = {"backend": "hu", "weights": None}
#: Recently masked scans: id(voxels) -> (weak reference to the voxels, mask, HU involvement).
_RECENT: dict[int, tuple[Any, LungMask, dict | None]] = {}
_RECENT_MAX = 2
_LOCK = threading.Lock()  # the web app predicts in worker threads
#: Held while a mask or its HU involvement is computed: methods predicting at once (covidct.predict)
#: ask for the same scan's, and the second must wait for the first one's, not compute it again.
_COMPUTE_LOCK = threading.RLock()


def use_backend(backend: str = "hu", weights: str | os.PathLike | None = None) -> None:
    """Choose the backend that :func:`scan_lungs` (and so both methods) use."""
    if backend not in BACKENDS:
        raise ScanError(f"unknown lung mask backend {backend!r}; choose from {', '.join(BACKENDS)}")
    with _LOCK:
        _BACKEND.update(backend=backend, weights=weights)
        _RECENT.clear()


def mask_rule() -> str:
    """What masks predictions are made with now (see :func:`use_backend`), for cache keys:
    the HU rule's version, or the lungmask backend and its weights file."""
    if _BACKEND["backend"] == "hu":
        return RULE_VERSION
    path = check_lungmask_weights(_BACKEND["weights"])
    stat = os.stat(path)
    return f"lungmask:{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def scan_lungs(scan: Scan) -> LungMask:
    """The lung mask of ``scan``, computed once however many methods ask for it."""
    import weakref

    key = id(scan.voxels)
    with _COMPUTE_LOCK:  # a second caller of the same scan waits for the first one's mask
        with _LOCK:
            hit = _RECENT.get(key)
            if hit is not None and hit[0]() is scan.voxels:
                return hit[1]
        mask = lung_mask(scan, _BACKEND["backend"], _BACKEND["weights"])
        with _LOCK:
            while len(_RECENT) >= _RECENT_MAX:
                _RECENT.pop(next(iter(_RECENT)))
            _RECENT[key] = (weakref.ref(scan.voxels), mask, None)
    return mask


def lung_report(scan: Scan) -> dict[str, Any]:
    """What predictions carry about the lungs: the mask's summary and the HU involvement."""
    mask = scan_lungs(scan)
    key = id(scan.voxels)
    # One measurement however many methods ask at once (predict runs them in threads).
    with _COMPUTE_LOCK:
        with _LOCK:
            hit = _RECENT.get(key)
        measured = hit[2] if hit is not None and hit[1] is mask else None
        if measured is None:
            measured = involvement(scan, mask) if mask.found else None
            with _LOCK:
                if key in _RECENT and _RECENT[key][1] is mask:
                    _RECENT[key] = (_RECENT[key][0], mask, measured)
    return {"mask": mask.summary(), "involvement": measured}


def lung_picture(scan: Scan, mask: LungMask, n_slices: int = 4) -> np.ndarray:
    """RGB uint8: ``n_slices`` evenly spaced lung slices (lung window), the right lung
    outlined in cyan and the left in yellow, side by side."""
    from .explain.plotting import OUTLINE_RGB, draw_outline

    rows = mask.lung_slices()
    if rows.size == 0:
        rows = np.array([scan.n_slices // 2])
    picks = rows[evenly_spaced(rows.size, n_slices)]
    tiles = []
    for k in picks:
        pixels = COVIDX_LUNG.to_uint8(scan.voxels[k]) if scan.is_hu else np.asarray(scan.voxels[k], np.uint8)
        rgb = np.repeat(pixels[..., None], 3, axis=-1)
        rgb = draw_outline(rgb, mask.labels[k] == RIGHT, OUTLINE_RGB)
        tiles.append(draw_outline(rgb, mask.labels[k] == LEFT, (255, 255, 0)))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
