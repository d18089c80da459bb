"""A healthy chest CT phantom in Hounsfield units.

The patient is drawn in millimetres: an axial body outline (skin, subcutaneous fat, muscle,
a ring of ribs and intercostal muscle) that is the same on every slice, a thoracic cavity
holding two lungs, the mediastinum (fat, heart, great vessels, trachea), the spine and the
upper abdomen (liver, spleen/stomach) under the domes of the diaphragm, and a curved scanner
table below the back. The lungs taper to their apices and stop on the diaphragm domes, so a
scan runs from upper-abdomen slices without lung, through the lungs, to the thoracic inlet.

Speed comes from describing the lungs and diaphragm by 2D maps: a voxel (z, y, x) is lung
when ``dome(y, x) < z < apex(y, x)``, so the 3D volume costs a few comparisons per voxel.
Vessels and airways are branching trees rasterised as tapered tubes (:mod:`.trees`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from .raster import Grid, Sparse, smooth_field, tubes

# Tissue codes of the label volume the phantom is built on, and their mean HU.
AIR, FAT, MUSCLE, LUNG_R, LUNG_L, MED_FAT, HEART, BLOOD, CORTEX, MARROW, DISC, CANAL, \
    LIVER, SPLEEN, GAS, TABLE, CARTILAGE, INLET, FOAM = range(19)
TISSUE_HU = np.array([
    -1000, -100, 45, -850, -850, -95, 40, 42, 750, 260, 85, 15,
    58, 45, -1000, 350, 120, 35, -960,
], dtype=np.float32)
LUNGS = (LUNG_R, LUNG_L)
#: Tissues thin structures (vessels, airways) may be drawn into.
SOFT_INSIDE = (LUNG_R, LUNG_L, MED_FAT, INLET)


@dataclass(frozen=True)
class Body:
    """One patient's build, in mm (x to image right = patient's left, y to the back)."""

    fov: float                 # in-plane field of view (square)
    a: float                   # body half-width
    b: float                   # body half-depth (front to back)
    exponent: float            # superellipse exponent of the outline (2 = ellipse)
    cx: float                  # body centre, x
    cy: float                  # body centre, y
    fat: float                 # subcutaneous fat thickness
    muscle: float              # chest-wall muscle thickness
    table_y: float             # top of the table at the midline
    z_base: float              # lowest point of the lungs (posterior costophrenic recess)
    lung_height: float         # costophrenic recess to apex
    dome_r: float              # height of the right diaphragm dome above z_base
    dome_l: float              # same, left (lower: the heart sits on it)
    apex_taper: float          # height over which the lungs narrow to their apex
    z_top: float               # top of the scan
    vertebra: float            # vertebral body radius
    vertebra_pitch: float      # height of a vertebra + disc (and the rib spacing)
    rib_drop: float            # how much lower a rib is at the front than at the back
    heart: tuple[float, float, float]  # heart semi-axes (x, y, z)
    stomach_gas: bool
    stomach_high: bool = False  # a large gas bubble right under the left dome (variant)

    @property
    def cavity(self) -> tuple[float, float]:
        """Half-axes of the thoracic cavity (inside the ribs)."""
        ring = self.fat + self.muscle + _RIB_RING
        return self.a - ring, self.b - ring

    @property
    def apex(self) -> float:
        return self.z_base + self.lung_height


_RIB_RING = 10.0  # ribs + intercostal muscle, mm


def sample_body(rng: np.random.Generator) -> Body:
    """Draw a patient build: size, fat, position on the table, lung height, bone layout."""
    a = rng.uniform(135, 180)
    b = a * rng.uniform(0.64, 0.76)
    # The display field of view follows the patient, as at a real console: 0.6-1 mm pixels
    # at 512, with room beside the body.
    fov = float(np.clip(2 * a + rng.uniform(50, 160), 0.6 * 512, 1.0 * 512))
    table_y = fov / 2 - rng.uniform(28, 55)
    gap = rng.uniform(10, 22)  # a radiolucent pad and air between back and table
    z_base = rng.uniform(25, 55)
    lung_height = rng.uniform(190, 245)
    dome_r = rng.uniform(45, 70)
    return Body(
        fov=fov, a=a, b=b, exponent=rng.uniform(2.2, 2.8), cx=rng.uniform(-15, 15),
        cy=table_y - gap - b, fat=rng.uniform(4, 20), muscle=rng.uniform(6, 11),
        table_y=table_y, z_base=z_base, lung_height=lung_height, dome_r=dome_r,
        dome_l=dome_r - rng.uniform(5, 18), apex_taper=rng.uniform(70, 100),
        z_top=z_base + lung_height + rng.uniform(12, 35), vertebra=rng.uniform(15, 19),
        vertebra_pitch=lung_height / rng.uniform(9.0, 10.5), rib_drop=rng.uniform(55, 85),
        heart=(a * rng.uniform(0.28, 0.33), b * rng.uniform(0.26, 0.32), rng.uniform(45, 55)),
        stomach_gas=bool(rng.random() < 0.6),
    )


#: Harder-than-default anatomy, for testing lung masks and slice selection (see :func:`vary`).
VARIANTS = ("thin-wall", "off-centre", "fov-edge", "stomach-gas", "table-close")


def vary(body: Body, variants: tuple[str, ...] | list[str]) -> Body:
    """``body`` with the named harder variants (default phantoms are easier than real
    anatomy here): a thin chest wall (1.5 mm fat, 2.5 mm muscle outside the ribs), the body
    off-centre (half-way to the edge) or crossing the field of view's right edge by 4 mm, a
    large stomach gas bubble right under the left diaphragm dome, the table touching the
    back (1 mm gap at the midline, the curved table meets the body at the sides)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown anatomy variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    changes: dict = {}
    if "thin-wall" in variants:
        changes.update(fat=1.5, muscle=2.5)
    if "off-centre" in variants:
        changes["cx"] = 0.5 * (body.fov / 2 - body.a)
    if "fov-edge" in variants:
        changes["cx"] = body.fov / 2 - body.a + 4.0
    if "stomach-gas" in variants:
        changes.update(stomach_gas=True, stomach_high=True)
    if "table-close" in variants:
        changes["cy"] = body.table_y - 1.0 - body.b
    return replace(body, **changes)


@dataclass
class Anatomy:
    """A built phantom before findings: tissue codes, clean HU and the thin structures."""

    grid: Grid
    body: Body
    tissue: np.ndarray                  # uint8 codes (z, y, x)
    hu: np.ndarray                      # float32 HU without vessels, airways or noise
    side: np.ndarray                    # (y, x) int8: +1 patient's left lung, -1 right, 0 neither
    depth: np.ndarray                   # (y, x) 0 at the lung's outer edge .. 1 at its core
    periphery: np.ndarray               # (y, x) 1 at the chest wall .. 0 at the hilum
    hilum: dict[int, np.ndarray]        # side -> hilum point (z, y, x) mm
    carina: np.ndarray
    vessels: Sparse = field(default_factory=Sparse.empty)
    airway_wall: Sparse = field(default_factory=Sparse.empty)
    airway_lumen: Sparse = field(default_factory=Sparse.empty)

    @property
    def lung(self) -> np.ndarray:
        return (self.tissue == LUNG_R) | (self.tissue == LUNG_L)

    def in_lung(self, points: np.ndarray, side: int = 0) -> np.ndarray:
        """Whether points (n, 3) in mm fall in a lung (either, or the one on ``side``)."""
        idx = np.rint(self.grid.to_index(np.atleast_2d(points))).astype(int)
        ok = np.all((idx >= 0) & (idx < np.asarray(self.grid.shape)), axis=1)
        out = np.zeros(len(idx), bool)
        codes = self.tissue.reshape(-1)[np.ravel_multi_index(tuple(idx[ok].T), self.grid.shape)]
        wanted = LUNGS if side == 0 else ((LUNG_L,) if side > 0 else (LUNG_R,))
        out[ok] = np.isin(codes, wanted)
        return out

    def sample_lung(self, rng: np.random.Generator, n: int, side: int = 0) -> np.ndarray:
        """n random points (mm) uniformly inside the lungs (or one lung), by rejection."""
        ys, xs = np.nonzero(self.side != 0 if side == 0 else self.side == side)
        if ys.size == 0 or n == 0:
            return np.zeros((0, 3))
        lo = self.grid.to_mm(np.array([[0, ys.min(), xs.min()]]))[0]
        hi = self.grid.to_mm(np.array([[self.grid.shape[0] - 1, ys.max(), xs.max()]]))[0]
        found: list[np.ndarray] = []
        count = 0
        for _ in range(50):
            cand = rng.uniform(lo, hi, size=(4 * (n - count) + 64, 3))
            cand = cand[self.in_lung(cand, side)][: n - count]
            found.append(cand)
            count += len(cand)
            if count >= n:
                break
        return np.concatenate(found)


# ----------------------------------------------------------------------------------------
# In-plane maps


def _superellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, a: float, b: float,
                  p: float) -> np.ndarray:
    """Homogeneous norm: 1 on the outline, scaling linearly with distance from the centre."""
    return ((np.abs((x - cx) / a) ** p + np.abs((y - cy) / b) ** p) ** (1.0 / p)).astype(np.float32)


def _body_maps(body: Body, grid: Grid) -> dict[str, np.ndarray]:
    y, x = grid.yx()
    ac, bc = body.cavity
    p = body.exponent
    # The back is flatter than the front; use a larger exponent behind the centre.
    back = (y > body.cy)

    def outline(shrink: float) -> np.ndarray:
        front = _superellipse(y, x, body.cy, body.cx, body.a - shrink, body.b - shrink, p)
        rear = _superellipse(y, x, body.cy, body.cx, body.a - shrink, body.b - shrink, p + 1.2)
        return np.where(back, rear, front)

    maps = {
        "body": outline(0.0) < 1,
        "muscle": outline(body.fat) < 1,
        "ring": outline(body.fat + body.muscle) < 1,
    }
    cav_cy = body.cy - 4.0
    cav = _superellipse(y, x, cav_cy, body.cx, ac, bc, 2.3)
    maps["cavity_norm"] = cav
    maps["cavity"] = cav < 1
    maps["u"] = ((x - body.cx) / ac).astype(np.float32) * np.ones_like(cav)
    maps["v"] = ((y - cav_cy) / bc).astype(np.float32) * np.ones_like(cav)
    maps["cav_cy"] = np.float32(cav_cy)
    return maps


def _spine_centre(body: Body) -> tuple[float, float]:
    ac, bc = body.cavity
    return body.cy - 4.0 + bc - 1.5 * body.vertebra, body.cx


def _aorta_centre(body: Body) -> tuple[float, float]:
    yv, xv = _spine_centre(body)
    r = body.vertebra
    return yv - 1.0 * r, xv + 1.05 * r


def _lung_footprints(body: Body, grid: Grid, maps: dict) -> tuple[np.ndarray, np.ndarray]:
    """The largest axial outline of each lung: the cavity minus the mediastinum, rounded."""
    y, x = grid.yx()
    ac, bc = body.cavity
    u, v = maps["u"], maps["v"]
    r_vb = body.vertebra
    # Mediastinal half-width (mm) from front (v=-1) to back (v=+1): narrow anterior junction,
    # wide at the trachea and great vessels, the vertebral body behind.
    knots_v = [-1.2, -0.75, -0.35, 0.1, 0.45, 1.2]
    knots_w = [10.0, 14.0, 32.0, 30.0, r_vb + 6.0, r_vb + 6.0]
    half = np.interp(v, knots_v, knots_w).astype(np.float32)
    inside = maps["cavity"] & (np.abs(u * ac) > half)
    ya, xa = _aorta_centre(body)
    inside &= np.hypot(y - ya, x - xa) > 16.0
    # Round the corners the cut left (a lung has no sharp medial edges).
    sigma = 6.0 / grid.spacing[1]
    soft = ndimage.gaussian_filter(inside.astype(np.float32), sigma)
    lungs = (soft > 0.5) & maps["cavity"]
    side = np.where(lungs, np.where(x > body.cx, 1, -1), 0).astype(np.int8)
    depth = np.zeros(side.shape, np.float32)
    for s in (-1, 1):
        dist = ndimage.distance_transform_edt(side == s, sampling=grid.spacing[1:])
        if dist.max() > 0:
            depth = np.where(side == s, dist / dist.max(), depth).astype(np.float32)
    return side, depth


def _z_maps(body: Body, side: np.ndarray, depth: np.ndarray, maps: dict) -> tuple[np.ndarray, np.ndarray]:
    """Height of the diaphragm and of the lung apex above each in-plane point (mm).

    The domes are highest near the mediastinum and slope down to the chest wall, deepest in
    the posterior and lateral costophrenic recesses (the front of the base sits higher), so a
    slice just above the lung base shows a crescent of lung behind and beside the liver. The
    apex narrows to the core of each lung.
    """
    v = maps["v"]
    wall = np.clip((maps["cavity_norm"] - 0.3) / 0.7, 0, 1)   # 0 medially .. 1 at the ribs
    dome = np.where(side > 0, body.dome_l, body.dome_r).astype(np.float32)
    front = np.clip(-v, 0, 1) ** 2
    dia = body.z_base + dome * (1 - wall ** 2) + 0.45 * dome * front
    mid_dome = 0.5 * (body.dome_l + body.dome_r)
    dia = np.where(side != 0, dia, body.z_base + mid_dome).astype(np.float32)
    # Cone-like apex over the back part of each lung: 0 at the core, larger at the edges and
    # towards the front, so the top slices show small round lungs behind the great vessels.
    n = (1.0 - depth) + 0.35 * front
    apex = np.where(side != 0, body.apex - body.apex_taper * n, -np.inf).astype(np.float32)
    return dia, apex


def _table(body: Body, grid: Grid) -> np.ndarray:
    """Curved table: thin high-density shells around a foam core (code map, 0 = none)."""
    y, x = grid.yx()
    top = body.table_y - 22.0 * (x / 210.0) ** 2
    depth = y - top
    width = np.abs(x) < 215
    out = np.zeros(np.broadcast_shapes(y.shape, x.shape), np.uint8)
    # Shells at least a pixel thick, so coarse matrices still show them (as partial volume would).
    shell = max(2.5, 1.05 * grid.spacing[1])
    out[(depth >= 0) & (depth < 27 + shell) & width] = FOAM
    for lo in (0.0, 27.0):
        out[(depth >= lo) & (depth < lo + shell) & width] = TABLE
    rail = (depth >= 40) & (depth < 40 + max(4.0, 1.05 * grid.spacing[1])) & (np.abs(x) < 150)
    out[rail] = TABLE
    return out


def _template(body: Body, grid: Grid, maps: dict) -> np.ndarray:
    """The slice every axial level starts from: outline layers, cavity filler, table, spine."""
    t = np.zeros(grid.shape[1:], np.uint8)
    table = _table(body, grid)
    t[table > 0] = table[table > 0]
    t[maps["body"]] = FAT
    t[maps["muscle"]] = MUSCLE
    t[maps["cavity"]] = MED_FAT
    return t


def _spine_template(body: Body, grid: Grid) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Vertebra cross-section in a small box: codes for bone, plus the body (disc-able) mask."""
    yv, xv = _spine_centre(body)
    r = body.vertebra
    lo = np.array([0.0, yv - r - 2, xv - 3.2 * r])
    hi = np.array([0.0, yv + r + 2 + 14 + 30, xv + 3.2 * r])
    box = grid.box(lo, hi)
    assert box is not None
    _, yy, xx = grid.box_coords(box)
    yy, xx = yy[0], xx[0]
    codes = np.zeros((yy.shape[0], xx.shape[1]), np.uint8)
    d_body = np.hypot((yy - yv) / 1.0, (xx - xv) / 1.08)
    y_canal = yv + r + 8.0
    d_canal = np.hypot(yy - y_canal, xx - xv)
    arch = (d_canal < 13.0) & (yy > y_canal - 6.0)
    spinous = (np.abs(xx - xv) < 3.5) & (yy > y_canal) & (yy < y_canal + 32.0)
    transverse = (np.abs(yy - y_canal + 2.0) < 4.0) & (np.abs(xx - xv) < 2.6 * r)
    pedicle = (np.abs(np.abs(xx - xv) - 9.0) < 3.0) & (yy > yv) & (yy < y_canal)
    posterior = arch | spinous | transverse | pedicle
    codes[posterior] = CORTEX
    codes[posterior & ndimage.binary_erosion(posterior, iterations=2)] = MARROW
    vb = d_body < r
    codes[vb] = CORTEX
    codes[d_body < r - max(1.8, grid.spacing[1])] = MARROW  # a cortical rim of >= 1 pixel
    codes[d_canal < 7.0] = CANAL
    return box[1:], codes, vb


# ----------------------------------------------------------------------------------------
# 3D assembly


def build(body: Body, grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Build the healthy phantom on ``grid``: tissue codes and HU (the vessel and airway trees
    are grown into it by :func:`covidct.synth.trees.add_trees`)."""
    maps = _body_maps(body, grid)
    side, depth = _lung_footprints(body, grid, maps)
    dia, apex = _z_maps(body, side, depth, maps)
    tissue = np.empty(grid.shape, np.uint8)
    tissue[:] = _template(body, grid, maps)[None]
    _fill_cavity(tissue, body, grid, maps, side, dia, apex)
    _add_bones(tissue, body, grid, maps)
    hilum, carina = _add_mediastinum(tissue, body, grid, side)
    _add_abdomen(tissue, body, grid, side)
    hu = TISSUE_HU[tissue]
    _lung_texture(hu, tissue, body, grid, maps, rng)
    periphery = np.clip((maps["cavity_norm"] - 0.35) / 0.65, 0, 1).astype(np.float32)
    return Anatomy(grid=grid, body=body, tissue=tissue, hu=hu, side=side, depth=depth,
                   periphery=periphery, hilum=hilum, carina=carina)


def _cavity_box(maps: dict) -> tuple[slice, slice]:
    rows = np.flatnonzero(maps["cavity"].any(axis=1))
    cols = np.flatnonzero(maps["cavity"].any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _fill_cavity(tissue: np.ndarray, body: Body, grid: Grid, maps: dict, side: np.ndarray,
                 dia: np.ndarray, apex: np.ndarray) -> None:
    """Lungs between diaphragm and apex; abdomen below the domes; inlet tissue above."""
    ys, xs = _cavity_box(maps)
    z = grid.z()[:, None, None]
    cav = maps["cavity"][ys, xs]
    lung_code = np.where(side[ys, xs] > 0, LUNG_L, LUNG_R).astype(np.uint8)
    # The liver fills the right upper abdomen and reaches across the midline.
    abdomen = np.where(maps["u"][ys, xs] < 0.25, LIVER, SPLEEN).astype(np.uint8)
    inlet_from = body.apex - 0.55 * body.apex_taper
    filler = np.where(z > inlet_from, INLET, MED_FAT).astype(np.uint8)
    inner = np.where(z < apex[ys, xs], lung_code, filler)
    inner = np.where(z <= dia[ys, xs], abdomen, inner)
    box = tissue[:, ys, xs]
    box[:] = np.where(cav, inner, box)


def _add_bones(tissue: np.ndarray, body: Body, grid: Grid, maps: dict) -> None:
    _add_spine(tissue, body, grid)
    _add_ribs(tissue, body, grid, maps)
    _add_sternum(tissue, body, grid, maps)


def _add_spine(tissue: np.ndarray, body: Body, grid: Grid) -> None:
    (ys, xs), codes, vb = _spine_template(body, grid)
    z = grid.z()
    phase = np.mod(z - body.z_base, body.vertebra_pitch)
    disc = phase < 0.22 * body.vertebra_pitch
    box = tissue[:, ys, xs]
    bone = codes > 0
    box[:, bone] = codes[bone]
    box[disc[:, None, None] & vb[None]] = DISC


def _add_ribs(tissue: np.ndarray, body: Body, grid: Grid, maps: dict) -> None:
    """Twelve pairs of ribs in the ring outside the cavity, descending towards the front."""
    y, x = grid.yx()
    ring = maps["ring"] & ~maps["cavity"]
    iy, ix = np.nonzero(ring)
    ac, bc = body.cavity
    dy = y[iy, 0] - maps["cav_cy"]
    dx = x[0, ix] - body.cx
    norm = maps["cavity_norm"][iy, ix]
    outward = np.hypot(dx, dy) * (1 - 1 / np.maximum(norm, 1e-3))   # mm outside the cavity
    phi = np.arccos(np.clip(dy / np.maximum(np.hypot(dx, dy), 1e-6), -1, 1))  # 0 back, pi front
    z = grid.z()[:, None]
    top = body.apex + 8.0
    pitch = body.vertebra_pitch
    drop = body.rib_drop * (1 - np.cos(phi)) / 2
    q = (top - drop[None, :] - z) / pitch
    k = np.rint(q)
    dz = (q - k) * pitch
    dr = outward[None, :] - 0.5 * _RIB_RING
    e = (dr / 3.8) ** 2 + (dz / 6.5) ** 2
    n_ribs = 12
    reach = np.where(k >= 9, np.deg2rad(100), np.deg2rad(150))  # floating ribs stop short
    bone = (e < 1) & (k >= 0) & (k < n_ribs) & (phi[None, :] > np.deg2rad(16)) & (phi[None, :] < reach)
    cartilage = (e < 1) & (k >= 0) & (k < 9) & (phi[None, :] >= np.deg2rad(150)) & \
        (phi[None, :] < np.deg2rad(172))
    codes = np.where(bone, np.where(e > 0.45, CORTEX, MARROW), np.where(cartilage, CARTILAGE, 0))
    zz, jj = np.nonzero(codes)
    tissue[zz, iy[jj], ix[jj]] = codes[zz, jj]


def _add_sternum(tissue: np.ndarray, body: Body, grid: Grid, maps: dict) -> None:
    ac, bc = body.cavity
    front = maps["cav_cy"] - bc
    lo = np.array([body.z_base + 0.5 * body.dome_r, front - 13.0, body.cx - 14.0])
    hi = np.array([body.apex - 35.0, front - 1.0, body.cx + 14.0])
    box = grid.box(lo, hi)
    if box is None:
        return
    _, yy, xx = grid.box_coords(box)
    e = ((yy - (front - 7.0)) / 6.0) ** 2 + ((xx - body.cx) / 14.0) ** 4
    view = tissue[box]
    view[:] = np.where(e < 1, np.where(e > 0.5, CORTEX, MARROW), view)


def _paint(tissue: np.ndarray, cover: Sparse, code: int, allowed: tuple[int, ...]) -> None:
    flat = tissue.reshape(-1)
    idx = cover.index[cover.coverage >= 0.5]
    ok = np.isin(flat[idx], allowed)
    flat[idx[ok]] = code


def _ellipsoid(tissue: np.ndarray, grid: Grid, centre, semi, code: int,
               allowed: tuple[int, ...], grow: float = 1.0, turn: float = 0.0) -> None:
    """Paint an ellipsoid (semi-axes z, y, x; turned by ``turn`` radians about z)."""
    c, s = np.asarray(centre, float), np.asarray(semi, float) * grow
    reach = max(s[1], s[2])
    box = grid.box(c - [s[0], reach, reach], c + [s[0], reach, reach])
    if box is None:
        return
    z, y, x = grid.box_coords(box)
    cos, sin = np.float32(np.cos(turn)), np.float32(np.sin(turn))
    dy, dx = y - c[1], x - c[2]
    along_y = cos * dy - sin * dx
    along_x = sin * dy + cos * dx
    inside = ((z - c[0]) / s[0]) ** 2 + (along_y / s[1]) ** 2 + (along_x / s[2]) ** 2 < 1
    view = tissue[box]
    view[:] = np.where(inside & np.isin(view, allowed), code, view)


def _add_mediastinum(tissue: np.ndarray, body: Body, grid: Grid, side: np.ndarray
                     ) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Heart, aorta, pulmonary trunk, vena cava, trachea and main bronchi; returns hila."""
    ac, bc = body.cavity
    cav_cy = body.cy - 4.0
    hx, hy, hz = body.heart
    dome = body.z_base + 0.5 * (body.dome_l + body.dome_r)
    heart_c = (dome + 0.75 * hz, cav_cy - bc + 0.9 * hy + 6.0, body.cx + 0.2 * ac)
    soft = (*LUNGS, MED_FAT, INLET, LIVER, SPLEEN)
    turn = np.deg2rad(-35.0)  # the long axis points forwards and to the patient's left
    _ellipsoid(tissue, grid, heart_c, (hz, hy, hx), MED_FAT, soft, grow=1.12, turn=turn)  # pericardial fat
    _ellipsoid(tissue, grid, heart_c, (hz, hy, hx), HEART, soft + (MED_FAT,), turn=turn)
    heart_top = heart_c[0] + 0.8 * hz
    z_hilum = body.z_base + 0.55 * body.lung_height
    carina = np.array([z_hilum + 22.0, _spine_centre(body)[0] - body.vertebra - 22.0, body.cx])
    ya, xa = _aorta_centre(body)
    arch_z = carina[0] + 28.0
    asc = np.array([cav_cy - 0.28 * bc, body.cx - 0.08 * ac])
    bend = [np.array([arch_z, asc[0], asc[1]]),
            np.array([arch_z + 12, carina[1] - 14, body.cx - 0.02 * ac]),
            np.array([arch_z + 10, carina[1] + 4, body.cx + 0.10 * ac]),
            np.array([arch_z, ya, xa])]
    segs = [(np.array([heart_top - 20, *asc]), bend[0], 15.0),
            (bend[0], bend[1], 14.0), (bend[1], bend[2], 13.0), (bend[2], bend[3], 12.5),
            (bend[3], np.array([-20.0, ya, xa]), 12.0),
            (np.array([heart_top - 10, cav_cy - 0.34 * bc, body.cx + 0.12 * ac]),
             np.array([z_hilum + 4, carina[1] - 6, body.cx + 0.14 * ac]), 13.0),  # pulmonary trunk
            (np.array([heart_top - 10, asc[0] + 6, asc[1] - 24]),
             np.array([body.z_top + 10, asc[0] + 2, asc[1] - 26]), 9.0)]  # superior vena cava
    start, end, radius = (np.array(v) for v in zip(*segs))
    _paint(tissue, tubes(grid, start, end, radius), BLOOD, soft)
    hilum = {}
    y_h = carina[1] + 6.0
    row = side[int(np.clip(np.rint(grid.to_index(np.array([[0.0, y_h, 0.0]]))[0, 1]), 0, grid.shape[1] - 1))]
    for s in (-1, 1):
        cols = np.flatnonzero(row == s)
        if cols.size == 0:
            continue
        medial = cols[0] if s > 0 else cols[-1]
        hilum[s] = np.array([z_hilum, y_h, grid.axis(2)[medial] - s * 4.0])
    return hilum, carina


def _add_abdomen(tissue: np.ndarray, body: Body, grid: Grid, side: np.ndarray) -> None:
    if not body.stomach_gas:
        return
    ac, bc = body.cavity
    cav_cy = body.cy - 4.0
    if body.stomach_high:
        # The fundus under the dome: its top a few mm below the lowest lung above it.
        centre = (body.z_base + body.dome_l - 18.0, cav_cy - 0.15 * bc, body.cx + 0.4 * ac)
        _ellipsoid(tissue, grid, centre, (15.0, 0.3 * bc, 0.27 * ac), GAS, (SPLEEN,))
        _keep_diaphragm(tissue, grid)
        return
    centre = (body.z_base + body.dome_l - 22.0, cav_cy - 0.2 * bc, body.cx + 0.45 * ac)
    _ellipsoid(tissue, grid, centre, (14.0, 0.22 * bc, 0.2 * ac), GAS, (SPLEEN,))


def _keep_diaphragm(tissue: np.ndarray, grid: Grid, thickness_mm: float = 4.0) -> None:
    """Gas never touches the lung: a diaphragm (spleen tissue) of ``thickness_mm`` stays."""
    gas = tissue == GAS
    lung = np.isin(tissue, LUNGS)
    box = tuple(slice(max(0, i.min() - 4), i.max() + 5) for i in np.nonzero(gas))
    dist = ndimage.distance_transform_edt(~lung[box], sampling=grid.spacing)
    view = tissue[box]
    view[(view == GAS) & (dist < thickness_mm)] = SPLEEN


def _lung_texture(hu: np.ndarray, tissue: np.ndarray, body: Body, grid: Grid, maps: dict,
                  rng: np.random.Generator) -> None:
    """Parenchyma: denser towards the back (gravity) plus a fine random texture."""
    ys, xs = _cavity_box(maps)
    box_hu = hu[:, ys, xs]
    lung = np.isin(tissue[:, ys, xs], LUNGS)
    shape = box_hu.shape
    # Coarser along z: thick slices would average finer structure away anyway.
    texture = smooth_field(shape, grid.spacing, (max(8.0, 2 * grid.spacing[0]), 4.0, 4.0), rng)
    texture *= np.float32(rng.uniform(14, 24))
    texture += (maps["v"][ys, xs] * np.float32(rng.uniform(22, 34)))[None]
    texture += np.float32(rng.uniform(-25, 25))
    box_hu += np.where(lung, texture, np.float32(0))
    hu[:, ys, xs] = box_hu
