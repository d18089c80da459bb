"""Class-specific lung findings, painted into a phantom with a lesion label mask.

Labels (uint8, same grid as the CT): 0 none, 1 ground-glass opacity (GGO), 2 consolidation,
3 crazy paving, 4 nodules, 5 atelectasis. Labels 1-4 are the infection; 5 is a normal
variant that may appear in any class (and does not count as a visible lesion).

What each class gets, at ``difficulty`` d in [0, 1]:

* **NCP (COVID-19)**: between max(1, 4-3d) and max(that, 10-5d) rounded, patchy GGOs
  (core -620 HU up to -320-260d HU: fainter as d grows), elongated along the pleura,
  placed by weighted sampling that strongly favours the lung periphery (subpleural), the
  back and the lower zones, spread over both lungs. Disease stage per patient: early (45%,
  GGO only), progressive (30%, half the lesions crazy paving: GGO crossed by thickened septal
  lines) or peak (25%, half the lesions with a consolidated core inside a GGO halo).
* **CP (common pneumonia)**: one dense consolidation (-60 to +40 HU, GGO halo at its edge),
  lobar (a lower or upper lobe cut by an oblique fissure; probability 0.45-0.3d) or
  segmental (a wedge from near the hilum to the pleura), in one lung (the right in 60%), with
  air bronchograms (branching airways kept air-filled inside it). With probability 0.35,
  clusters of 2-4 mm centrilobular nodules.
* **Normal**: no infection.
* **Any class**: dependent atelectasis (a thin dense band along the back of the lung bases)
  with probability 0.15+0.5d, and a dependent density gradient of up to 60d HU.

Difficulty also shrinks lesions (sizes times 1-0.55d) and, with probability 0.6d, makes a
patient atypical: NCP unilateral or central (perihilar) instead of bilateral peripheral; CP
bilateral (a second focus in the other lung) and/or GGO-like (density -600 to -350 HU instead
of consolidation). At d=0 the classes are easy to tell apart; at d=1 many NCP and CP slices
show only small, faint or atypical lesions and Normal patients show look-alike variants.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import LUNGS, Anatomy
from .trees import grow_tree
from .raster import smooth_field, smoothstep, tubes, unit

GGO, CONSOLIDATION, CRAZY_PAVING, NODULES, ATELECTASIS = 1, 2, 3, 4, 5
LESION_NAMES = {GGO: "GGO", CONSOLIDATION: "consolidation", CRAZY_PAVING: "crazy paving",
                NODULES: "nodules", ATELECTASIS: "atelectasis"}
#: Labels that make an infection visible (the COVIDx slice selection keeps slices with these).
INFECTION = (GGO, CONSOLIDATION, CRAZY_PAVING, NODULES)


@dataclass(frozen=True)
class Finding:
    """One painted finding, for the record (labels.csv, the cohort README)."""

    kind: int          # a label above
    side: int          # -1 patient's right lung, +1 left, 0 both
    where: str         # "peripheral", "central", "lobar", "segmental", "dependent", ...
    size_mm: float

    @property
    def name(self) -> str:
        return LESION_NAMES[self.kind]


@dataclass
class Painter:
    """Paints lesions into the HU volume and the label mask, inside the lungs only."""

    anatomy: Anatomy
    hu: np.ndarray
    labels: np.ndarray
    rng: np.random.Generator

    def blob(self, centre: np.ndarray, semi: np.ndarray, axes: np.ndarray, target: float,
             kind: int, *, irregular: float = 1.0, patchy: float = 0.0) -> bool:
        """An irregular ellipsoidal lesion (semi-axes in mm along the columns of ``axes``)."""
        grid = self.anatomy.grid
        reach = float(np.max(semi)) * 1.35
        box = grid.box(centre - reach, centre + reach)
        if box is None:
            return False
        z, y, x = grid.box_coords(box)
        rel = [z - centre[0], y - centre[1], x - centre[2]]
        rho2 = sum(((rel[0] * axes[0, k] + rel[1] * axes[1, k] + rel[2] * axes[2, k]) / semi[k]) ** 2
                   for k in range(3))
        shape = rho2.shape
        field = smooth_field(shape, grid.spacing, max(4.0, 0.45 * float(np.min(semi))), self.rng)
        alpha = smoothstep((1.0 - np.sqrt(rho2) + 0.22 * irregular * field) / 0.25)
        if patchy:  # uneven density inside the lesion, down to 1 - 0.35 * patchy
            texture = smooth_field(shape, grid.spacing, 5.0, self.rng)
            alpha *= 1.0 - 0.35 * patchy * np.clip(0.5 * (1 + texture), 0.0, 1.0)
        return self.composite(box, alpha, target, kind)

    def composite(self, box, alpha: np.ndarray, target: float, kind: int) -> bool:
        """Blend ``target`` HU in with weight alpha; label where the lesion dominates.

        Consolidation keeps a GGO halo: its faint rim (alpha 0.2-0.6) is labelled GGO.
        """
        lung = np.isin(self.anatomy.tissue[box], LUNGS)
        alpha = np.where(lung, alpha, np.float32(0)).astype(np.float32)
        hu = self.hu[box]
        hu += alpha * (np.float32(target) - hu)
        labels = self.labels[box]
        if kind == CONSOLIDATION:
            labels[(alpha >= 0.2) & (alpha < 0.6) & (labels == 0)] = GGO
            core = alpha >= 0.6
        else:
            core = alpha >= 0.5
        labels[core] = kind
        return bool(core.any())


# ----------------------------------------------------------------------------------------


def add_findings(hu: np.ndarray, anatomy: Anatomy, label: str, difficulty: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[Finding]]:
    """Paint the findings of class ``label`` ("Normal", "CP", "NCP") into ``hu``.

    Returns the lesion label mask and the list of findings painted.
    """
    d = float(np.clip(difficulty, 0.0, 1.0))
    labels = np.zeros(hu.shape, np.uint8)
    painter = Painter(anatomy, hu, labels, rng)
    findings: list[Finding] = []
    _dependent_gradient(hu, anatomy, d, rng)
    if label == "NCP":
        findings += _covid(painter, d)
    elif label == "CP":
        findings += _pneumonia(painter, d)
    if label != "Normal" and not np.isin(labels, INFECTION).any():
        findings += _fallback(painter, label)
    if rng.random() < 0.15 + 0.5 * d:
        findings += _atelectasis(painter, rng)
    return labels, findings


def _fallback(painter: Painter, label: str) -> list[Finding]:
    """A diseased phantom always shows its disease: when every planned lesion fell outside
    the lungs (possible for tiny, atypical ones), paint one mid-sized typical lesion."""
    anatomy, rng = painter.anatomy, painter.rng
    for _ in range(20):
        centre = anatomy.sample_lung(rng, 1)
        if len(centre) == 0:
            return []
        centre = centre[0]
        if label == "NCP":
            kind, target = GGO, rng.uniform(-600, -400)
        else:
            kind, target = CONSOLIDATION, rng.uniform(-60, 40)
        if painter.blob(centre, np.full(3, 15.0), _lesion_frame(anatomy, centre), target, kind):
            side = 1 if centre[2] > anatomy.body.cx else -1
            return [Finding(kind, side, "fallback", 30.0)]
    return []


def _lesion_frame(anatomy: Anatomy, centre: np.ndarray) -> np.ndarray:
    """Columns: outward (towards the chest wall, in-plane), along the wall, along z."""
    body = anatomy.body
    outward = np.array([0.0, centre[1] - (body.cy - 4.0), centre[2] - body.cx])
    outward = unit(outward) if np.linalg.norm(outward) > 1e-6 else np.array([0.0, 0.0, 1.0])
    along = np.array([0.0, -outward[2], outward[1]])
    return np.stack([outward, along, np.array([1.0, 0.0, 0.0])], axis=1)


def _periphery(anatomy: Anatomy, points: np.ndarray) -> np.ndarray:
    idx = np.rint(anatomy.grid.to_index(points)).astype(int)
    iy = np.clip(idx[:, 1], 0, anatomy.grid.shape[1] - 1)
    ix = np.clip(idx[:, 2], 0, anatomy.grid.shape[2] - 1)
    return anatomy.periphery[iy, ix]


def _place(anatomy: Anatomy, rng: np.random.Generator, side: int, mode: str) -> np.ndarray | None:
    """A lesion centre by weighted sampling of lung points."""
    candidates = anatomy.sample_lung(rng, 300, side)
    if len(candidates) == 0:
        return None
    body = anatomy.body
    per = _periphery(anatomy, candidates)
    back = np.clip((candidates[:, 1] - (body.cy - 4.0)) / body.cavity[1], -1, 1)
    low = np.clip(1 - (candidates[:, 0] - body.z_base) / body.lung_height, 0, 1)
    if mode == "peripheral":
        weight = per ** 6 * (1.2 + back) ** 2 * (0.5 + low)
    elif mode == "central":
        weight = (1 - per) ** 3 + 1e-3
    else:
        weight = np.ones(len(candidates))
    weight = weight / weight.sum()
    return candidates[rng.choice(len(candidates), p=weight)]


def _sides(rng: np.random.Generator, n: int, bilateral: bool) -> list[int]:
    if not bilateral or n == 1:
        one = int(rng.choice([-1, 1]))
        return [one] * n
    sides = [-1, 1] + [int(s) for s in rng.choice([-1, 1], size=n - 2)]
    rng.shuffle(sides)
    return sides


def _covid(painter: Painter, d: float) -> list[Finding]:
    rng, anatomy = painter.rng, painter.anatomy
    lo = max(1, round(4 - 3 * d))
    hi = max(lo, round(10 - 5 * d))
    n = int(rng.integers(lo, hi + 1))
    atypical = rng.random() < 0.6 * d
    kind = rng.choice(["unilateral", "central"]) if atypical else "typical"
    mode = "central" if kind == "central" else "peripheral"
    stage = rng.choice(["early", "progressive", "peak"], p=[0.45, 0.30, 0.25])
    size = 1.0 - 0.55 * d
    out = []
    for side in _sides(rng, n, bilateral=kind != "unilateral"):
        centre = _place(anatomy, rng, side, mode)
        if centre is None:
            continue
        r = rng.uniform(20, 45) * size
        semi = np.array([r * rng.uniform(0.55, 0.85), r, r * rng.uniform(0.7, 1.1)])
        if mode == "peripheral":
            # Pull the centre near the pleura so that the opacity is subpleural.
            centre = _towards_wall(anatomy, centre, side, 0.75 * semi[0])
        axes = _lesion_frame(anatomy, centre)
        target = rng.uniform(-620, -320 - 260 * d)
        lesion = GGO
        if stage == "progressive" and rng.random() < 0.5:
            lesion = CRAZY_PAVING
        elif stage == "peak" and rng.random() < 0.5:
            lesion = CONSOLIDATION
        if lesion == CONSOLIDATION:
            painter.blob(centre, semi, axes, rng.uniform(-600, -450), GGO, patchy=0.5)
            ok = painter.blob(centre, semi * 0.6, axes, rng.uniform(-80, 30), CONSOLIDATION)
        else:
            ok = painter.blob(centre, semi, axes, target, GGO if lesion == GGO else CRAZY_PAVING,
                              patchy=0.6)
            if lesion == CRAZY_PAVING:
                _septal_lines(painter, centre, semi, axes)
        if ok:
            out.append(Finding(lesion, side, mode, float(2 * r)))
    return out


def _towards_wall(anatomy: Anatomy, centre: np.ndarray, side: int, margin: float) -> np.ndarray:
    """Move a point outwards in-plane to ``margin`` mm inside the lung's outer edge."""
    outward = _lesion_frame(anatomy, centre)[:, 0]
    steps = np.arange(0.0, 80.0, 1.0)
    ray = centre[None] + steps[:, None] * outward[None]
    inside = anatomy.in_lung(ray, side)
    outside = np.flatnonzero(~inside)
    last = steps[outside[0] - 1] if outside.size and outside[0] > 0 else 0.0
    return centre + max(0.0, last - margin) * outward


def _septal_lines(painter: Painter, centre: np.ndarray, semi: np.ndarray, axes: np.ndarray) -> None:
    """Crazy paving: a polygonal network of thickened interlobular septa over the GGO."""
    anatomy, rng = painter.anatomy, painter.rng
    grid = anatomy.grid
    reach = float(np.max(semi))
    box = grid.box(centre - reach, centre + reach)
    if box is None:
        return
    z, y, x = grid.box_coords(box)
    n_cells = int(np.clip((2 * reach / 8.0) ** 2 * 4, 8, 400))
    seeds = centre + rng.uniform(-reach, reach, size=(n_cells, 3))
    shape = np.broadcast_shapes(z.shape, y.shape, x.shape)
    best = np.full(shape, np.inf, np.float32)
    second = np.full(shape, np.inf, np.float32)
    for sz, sy, sx in seeds:  # loops over cells (tens), each a vectorised pass over the box
        dist = np.sqrt((z - sz) ** 2 + (y - sy) ** 2 + (x - sx) ** 2)
        second = np.minimum(second, np.maximum(best, dist))
        best = np.minimum(best, dist)
    width = max(0.8, 0.6 * grid.spacing[1])
    line = np.clip(1.0 - (second - best) / width, 0, 1)
    inside = painter.labels[box] == CRAZY_PAVING
    alpha = np.where(inside, 0.7 * line, 0).astype(np.float32)
    hu = painter.hu[box]
    hu += alpha * (np.float32(rng.uniform(-150, -50)) - hu)


def _pneumonia(painter: Painter, d: float) -> list[Finding]:
    rng, anatomy = painter.rng, painter.anatomy
    atypical = rng.random() < 0.6 * d
    bilateral = atypical and rng.random() < 0.6
    ggo_like = atypical and (not bilateral or rng.random() < 0.5)
    side = -1 if rng.random() < 0.6 else 1
    size = 1.0 - 0.55 * d
    out = []
    sides = [side, -side] if bilateral else [side]
    for k, s in enumerate(sides):
        if s not in anatomy.hilum:
            continue
        scale = size * (1.0 if k == 0 else 0.6)
        target = rng.uniform(-600, -350) if ggo_like else rng.uniform(-60, 40)
        kind = GGO if ggo_like else CONSOLIDATION
        if k == 0 and rng.random() < 0.45 - 0.3 * d:
            ok = _lobar(painter, s, target, kind, scale)
            where = "lobar"
        else:
            ok = _segmental(painter, s, target, kind, scale)
            where = "segmental"
        if ok:
            out.append(Finding(kind, s, where, float(120 * scale)))
    if rng.random() < 0.35:
        out += _nodule_cluster(painter, side if rng.random() < 0.7 else -side, size)
    return out


def _lobar(painter: Painter, side: int, target: float, kind: int, scale: float) -> bool:
    """A lobe (cut from the lung by an oblique fissure through the hilum), nearly all of it."""
    anatomy, rng = painter.anatomy, painter.rng
    grid = anatomy.grid
    lower = rng.random() < 0.65
    hilum = anatomy.hilum[side]
    ys, xs = np.nonzero(anatomy.side == side)
    lo = grid.to_mm(np.array([[0, ys.min(), xs.min()]]))[0]
    hi = grid.to_mm(np.array([[grid.shape[0] - 1, ys.max(), xs.max()]]))[0]
    box = grid.box(lo, hi)
    if box is None:
        return False
    z, y, x = grid.box_coords(box)
    # Oblique fissure: rises from front-low to back-high (normal points up and forwards).
    tilt = np.deg2rad(rng.uniform(35, 55))
    signed = (z - hilum[0]) * np.float32(np.cos(tilt)) - (y - hilum[1]) * np.float32(np.sin(tilt))
    if not lower:
        signed = -signed
    field = smooth_field(np.broadcast_shapes(z.shape, y.shape, x.shape), grid.spacing, 12.0, rng)
    # Spare a random part of the lobe when the lesion is scaled down (harder cases).
    spare = (1.0 - scale) * 60.0
    alpha = smoothstep((-signed - spare + 6.0 * field) / 8.0)
    ok = painter.composite(box, alpha.astype(np.float32), target, kind)
    if ok and kind == CONSOLIDATION:
        root = hilum + np.array([-20.0 if lower else 20.0, 8.0 if lower else -5.0, side * 20.0])
        _air_bronchograms(painter, root, np.array([-1.0 if lower else 1.0, 0.3, 0.4 * side]))
    return ok


def _segmental(painter: Painter, side: int, target: float, kind: int, scale: float) -> bool:
    """A wedge from near the hilum widening to the pleura (a segment)."""
    anatomy, rng = painter.anatomy, painter.rng
    grid = anatomy.grid
    hilum = anatomy.hilum[side]
    tip = _place(anatomy, rng, side, "peripheral")
    if tip is None:
        return False
    tip = _towards_wall(anatomy, tip, side, -6.0)
    axis = tip - hilum
    length = float(np.linalg.norm(axis))
    axis = axis / max(length, 1e-6)
    apex = hilum + axis * length * rng.uniform(0.15, 0.35) * (2.0 - scale)
    half_angle = np.deg2rad(rng.uniform(22, 34)) * (0.55 + 0.45 * scale)
    reach = length * 1.05
    box = grid.box(np.minimum(apex, tip) - reach * np.sin(half_angle) - 10,
                   np.maximum(apex, tip) + reach * np.sin(half_angle) + 10)
    if box is None:
        return False
    z, y, x = grid.box_coords(box)
    rel = [z - apex[0], y - apex[1], x - apex[2]]
    along = rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]
    radial = np.sqrt(np.maximum(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2 - along ** 2, 0))
    field = smooth_field(along.shape, grid.spacing, 10.0, rng)
    cone = np.tan(half_angle) * np.maximum(along, 0) + 4.0
    alpha = smoothstep((cone - radial + 5.0 * field) / 6.0) * smoothstep(along / 10.0)
    ok = painter.composite(box, alpha.astype(np.float32), target, kind)
    if ok and kind == CONSOLIDATION:
        _air_bronchograms(painter, apex - 5 * axis, axis)
    return ok


def _air_bronchograms(painter: Painter, root: np.ndarray, direction: np.ndarray) -> None:
    """Branching airways that stay dark inside the consolidation around them."""
    anatomy, rng = painter.anatomy, painter.rng
    inside = lambda pts: anatomy.in_lung(pts)  # noqa: E731
    tree = grow_tree(root[None], unit(direction)[None], rng.uniform(2.2, 3.0), inside, rng,
                     max(0.6, 0.35 * anatomy.grid.spacing[1]), root - 30 * unit(direction),
                     max_segments=400)
    lumen = tubes(anatomy.grid, tree.start, tree.end, tree.r_start, tree.r_end)
    lumen.within(painter.labels, (CONSOLIDATION,)).blend(painter.hu, -980.0)


def _nodule_cluster(painter: Painter, side: int, size: float) -> list[Finding]:
    """Centrilobular nodules: a cluster of small, faint-to-solid round opacities."""
    anatomy, rng = painter.anatomy, painter.rng
    centre = _place(anatomy, rng, side, "any")
    if centre is None:
        return []
    n = int(rng.integers(8, 30))
    spread = rng.uniform(20, 40)
    points = centre + rng.normal(0, spread / 2, size=(n, 3))
    points = points[anatomy.in_lung(points, side)]
    painted = 0
    for p in points:
        r = rng.uniform(1.0, 2.0) * (0.7 + 0.3 * size) + 0.4 * anatomy.grid.spacing[1]
        painted += painter.blob(p, np.full(3, r), np.eye(3), rng.uniform(-300, 20), NODULES,
                                irregular=0.2)
    return [Finding(NODULES, side, "centrilobular", float(spread))] if painted else []


def _atelectasis(painter: Painter, rng: np.random.Generator) -> list[Finding]:
    """Dependent (subsegmental) atelectasis: a thin dense band at the back of the bases."""
    anatomy = painter.anatomy
    grid = anatomy.grid
    body = anatomy.body
    thick = rng.uniform(3.0, 7.0)
    # In-plane: lung pixels within ``thick`` mm of the lung's back edge.
    shift = max(1, int(round(thick / grid.spacing[1])))
    footprint = anatomy.side != 0
    behind = np.zeros_like(footprint)
    behind[:-shift] = footprint[shift:]
    band2d = footprint & ~behind
    if not band2d.any():
        return []
    top = body.z_base + body.dome_r * 0.5 + rng.uniform(20, 50)
    rows, cols = np.flatnonzero(band2d.any(axis=1)), np.flatnonzero(band2d.any(axis=0))
    lo = grid.to_mm(np.array([[0, rows[0], cols[0]]]))[0]
    hi = grid.to_mm(np.array([[0, rows[-1], cols[-1]]]))[0]
    box = grid.box(np.array([0.0, lo[1], lo[2]]), np.array([top, hi[1], hi[2]]))
    if box is None:
        return []
    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - box[2].start)
    field = smooth_field(shape, grid.spacing, 8.0, rng)
    alpha = band2d[box[1], box[2]][None].astype(np.float32) * np.clip(0.75 + 0.35 * field, 0, 1)
    if not painter.composite(box, alpha, rng.uniform(-350, -100), ATELECTASIS):
        return []
    return [Finding(ATELECTASIS, 0, "dependent", float(thick))]


def _dependent_gradient(hu: np.ndarray, anatomy: Anatomy, d: float, rng: np.random.Generator) -> None:
    """Extra density at the back of the lungs (poorly aerated dependent lung), up to 60d HU."""
    amp = np.float32(rng.uniform(0, 60) * d)
    if amp < 1:
        return
    body = anatomy.body
    y = anatomy.grid.axis(1)
    v = np.clip((y - (body.cy - 4.0)) / body.cavity[1], 0, 1) ** 2
    rows = np.flatnonzero(v > 0)
    if rows.size == 0:
        return
    sl = slice(rows[0], None)
    lung = np.isin(anatomy.tissue[:, sl], LUNGS)
    hu[:, sl] += lung * (amp * v[sl])[None, :, None]
