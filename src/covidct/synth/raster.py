"""Geometry helpers for the phantoms: the voxel grid, smooth random fields, tubes and blobs.

Everything works in millimetres in patient-like coordinates and is vectorised over voxels:
the only Python loops run over a handful of tree generations or size buckets, never voxels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A (z, y, x) voxel grid. x runs to the image's right, y to the patient's back
    (downwards in the image), z upwards (index 0 is the most inferior slice).

    Coordinates in mm: x and y are centred on the image, z starts at 0 on slice 0.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def axis(self, k: int) -> np.ndarray:
        n, s = self.shape[k], self.spacing[k]
        if k == 0:
            return np.arange(n, dtype=np.float32) * np.float32(s)
        return (np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)) * np.float32(s)

    def z(self) -> np.ndarray:
        return self.axis(0)

    def yx(self) -> tuple[np.ndarray, np.ndarray]:
        """In-plane coordinates as broadcastable (ny, 1) and (1, nx) arrays."""
        return self.axis(1)[:, None], self.axis(2)[None, :]

    def to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """Nearest voxel index (float, unclipped) of (n, 3) points in mm."""
        offset = np.array([0.0, (self.shape[1] - 1) / 2, (self.shape[2] - 1) / 2])
        return points_mm / np.asarray(self.spacing) + offset

    def to_mm(self, index: np.ndarray) -> np.ndarray:
        offset = np.array([0.0, (self.shape[1] - 1) / 2, (self.shape[2] - 1) / 2])
        return (np.asarray(index, dtype=float) - offset) * np.asarray(self.spacing)

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in [lo, hi] mm (None if empty)."""
        lo = np.ceil(self.to_index(np.asarray(lo_mm, dtype=float)[None])[0] - 1e-6).astype(int)
        hi = np.floor(self.to_index(np.asarray(hi_mm, dtype=float)[None])[0] + 1e-6).astype(int)
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, np.asarray(self.shape) - 1)
        if np.any(hi < lo):
            return None
        return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))  # type: ignore[return-value]

    def box_coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) mm coordinates of the voxels in ``box``."""
        z = self.axis(0)[box[0]][:, None, None]
        y = self.axis(1)[box[1]][None, :, None]
        x = self.axis(2)[box[2]][None, None, :]
        return z, y, x


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Rows of smooth (cubic B-spline) interpolation weights from n_in knots onto n_out samples."""
    pos = np.linspace(1.0, n_in - 2.0, n_out)[:, None]
    d = np.abs(pos - np.arange(n_in)[None, :])
    w = np.where(d < 1, 2 / 3 - d ** 2 + d ** 3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def smooth_field(shape: tuple[int, ...], spacing: tuple[float, ...], scale_mm,
                 rng: np.random.Generator) -> np.ndarray:
    """Random smooth field (about unit standard deviation) with features about ``scale_mm``
    wide (one value, or one per axis). Works for 2D and 3D shapes.

    Random knots on a coarse lattice are interpolated with separable B-spline matrices: a few
    matrix products (BLAS) instead of a full-volume filter. The axis with the fewest knots is
    expanded last, when the array is largest, so the cost stays near a few passes.
    """
    scales = np.broadcast_to(np.asarray(scale_mm, float), (len(shape),))
    knots = [max(4, int(np.ceil(n * s / c)) + 3) for n, s, c in zip(shape, spacing, scales)]
    field = rng.standard_normal(knots).astype(np.float32)
    gain = 1.0
    for axis in sorted(range(len(shape)), key=lambda a: -knots[a]):
        w = _interp_matrix(shape[axis], knots[axis])
        gain *= float(np.mean((w ** 2).sum(axis=1)))  # variance kept by this axis
        field = _expand(field, w, axis)
    field *= np.float32(1.0 / np.sqrt(gain))
    return field


def _expand(field: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Apply the (n_out, n_in) matrix ``w`` along ``axis``, returning a contiguous array."""
    n_out, n_in = w.shape
    lead, rest = field.shape[:axis], field.shape[axis + 1:]
    if axis == 0:
        return (w @ field.reshape(n_in, -1)).reshape(n_out, *rest)
    if not rest:
        return (field.reshape(-1, n_in) @ w.T).reshape(*lead, n_out)
    moved = np.ascontiguousarray(np.moveaxis(field, axis, -1))
    out = (moved.reshape(-1, n_in) @ w.T).reshape(*moved.shape[:-1], n_out)
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


@dataclass
class Sparse:
    """Per-voxel coverage in [0, 1] of a thin structure, stored only where it is non-zero."""

    index: np.ndarray      # flat voxel indices, unique and sorted
    coverage: np.ndarray   # float32

    @classmethod
    def empty(cls) -> "Sparse":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32))

    def within(self, labels: np.ndarray, allowed: tuple[int, ...]) -> "Sparse":
        """Restrict to voxels whose code in the ``labels`` volume is one of ``allowed``."""
        ok = np.isin(labels.reshape(-1)[self.index], allowed)
        return Sparse(self.index[ok], self.coverage[ok])

    def blend(self, volume: np.ndarray, value: float | np.ndarray) -> None:
        """volume <- volume + coverage * (value - volume), in place."""
        flat = volume.reshape(-1)
        old = flat[self.index]
        flat[self.index] = old + self.coverage * (np.asarray(value, np.float32) - old)


def _reduce_max(index: np.ndarray, coverage: np.ndarray) -> Sparse:
    if index.size == 0:
        return Sparse.empty()
    order = np.argsort(index, kind="stable")
    index, coverage = index[order], coverage[order]
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    return Sparse(index[starts], np.maximum.reduceat(coverage, starts).astype(np.float32))


def tubes(grid: Grid, start: np.ndarray, end: np.ndarray, r_start: np.ndarray,
          r_end: np.ndarray | None = None) -> Sparse:
    """Rasterise tapered tubes (segments with a radius at each end) as anti-aliased coverage.

    Thick tubes (a few of them: aorta, trachea, lobar vessels) are drawn exactly in their
    bounding boxes; the many thin ones are sampled at sub-voxel steps, every sample stamping
    a sphere of its radius, all samples of one stencil size at once.
    """
    start = np.atleast_2d(np.asarray(start, float))
    end = np.atleast_2d(np.asarray(end, float))
    r_start = np.broadcast_to(np.asarray(r_start, float), (len(start),))
    r_end = r_start if r_end is None else np.broadcast_to(np.asarray(r_end, float), (len(start),))
    if len(start) == 0:
        return Sparse.empty()
    spacing = np.asarray(grid.spacing)
    thick = np.maximum(r_start, r_end) > 4 * spacing[1:].min()
    parts = [capsule(grid, *args) for args in zip(start[thick], end[thick], r_start[thick], r_end[thick])]
    start, end, r_start, r_end = start[~thick], end[~thick], r_start[~thick], r_end[~thick]
    if len(start):
        step = np.maximum(0.5 * min(spacing.min(), 2.0), np.minimum(r_start, r_end) / 4)
        length = np.linalg.norm(end - start, axis=1)
        n = np.maximum(1, np.ceil(length / step).astype(int)) + 1
        seg = np.repeat(np.arange(len(start)), n)
        first = np.cumsum(n) - n
        t = (np.arange(seg.size) - first[seg]) / np.maximum(n[seg] - 1, 1)
        points = start[seg] + t[:, None] * (end - start)[seg]
        radius = r_start[seg] + t * (r_end - r_start)[seg]
        parts.append(spheres(grid, points, radius))
    return _reduce_max(np.concatenate([p.index for p in parts]),
                       np.concatenate([p.coverage for p in parts]))


def capsule(grid: Grid, a: np.ndarray, b: np.ndarray, r_a: float, r_b: float) -> Sparse:
    """One tapered tube, exactly, within its bounding box."""
    r = max(r_a, r_b)
    aa = 0.5 * min(grid.spacing[1:])
    pad = r + 2 * aa
    box = grid.box(np.minimum(a, b) - pad, np.maximum(a, b) + pad)
    if box is None:
        return Sparse.empty()
    z, y, x = grid.box_coords(box)
    ab = (b - a).astype(np.float32)
    denom = max(float(ab @ ab), 1e-9)
    t = ((z - a[0]) * ab[0] + (y - a[1]) * ab[1] + (x - a[2]) * ab[2]) / np.float32(denom)
    np.clip(t, 0, 1, out=t)
    d2 = (z - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (x - a[2] - t * ab[2]) ** 2
    radius = np.float32(r_a) + t * np.float32(r_b - r_a)
    cov = np.clip((radius - np.sqrt(d2)) / np.float32(2 * aa) + 0.5, 0, 1)
    local = np.nonzero(cov > 0)
    flat = np.ravel_multi_index(tuple(ix + s.start for ix, s in zip(local, box)), grid.shape)
    return Sparse(flat.astype(np.int64), cov[local].astype(np.float32))


def spheres(grid: Grid, centres: np.ndarray, radius: np.ndarray) -> Sparse:
    """Anti-aliased coverage of balls (centres in mm, radius in mm), max-combined."""
    spacing = np.asarray(grid.spacing)
    aa = 0.5 * spacing[1:].min()  # in-plane anti-aliasing ramp
    shape = np.asarray(grid.shape)
    # The stamp centre is the voxel nearest the sample (at most half a voxel off); the
    # anti-aliasing ramp is in-plane only, so along z the stamp stops at the radius.
    reach = radius[:, None] + np.array([0.0, aa, aa])[None, :]
    half = np.floor(reach / spacing[None, :] + 0.5).astype(int)
    key = half[:, 0] * 1_000_000 + half[:, 1] * 1000 + half[:, 2]
    parts_i, parts_c = [], []
    for k in np.unique(key):
        sel = key == k
        hz, hy, hx = half[sel][0]
        offs = np.stack(np.meshgrid(np.arange(-hz, hz + 1), np.arange(-hy, hy + 1),
                                    np.arange(-hx, hx + 1), indexing="ij"), -1).reshape(-1, 3)
        c_sel, r_sel = centres[sel], radius[sel]
        chunk = max(1, _STAMP_BUDGET // len(offs))  # bounds memory for thick tubes
        for a in range(0, len(c_sel), chunk):
            flat, cov = _stamp(grid, c_sel[a:a + chunk], r_sel[a:a + chunk], offs, aa, shape)
            parts_i.append(flat)
            parts_c.append(cov)
    return _reduce_max(np.concatenate(parts_i), np.concatenate(parts_c))


_STAMP_BUDGET = 2_000_000


def _stamp(grid: Grid, centres: np.ndarray, radius: np.ndarray, offs: np.ndarray, aa: float,
           shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c_idx = np.rint(grid.to_index(centres)).astype(int)
    vox = c_idx[:, None, :] + offs[None, :, :]
    # Offset of each stamped voxel from the sample, in mm (float32 keeps this cheap).
    frac = (grid.to_mm(c_idx) - centres).astype(np.float32)
    delta = frac[:, None, :] + (offs * np.asarray(grid.spacing)).astype(np.float32)[None]
    dist = np.sqrt((delta * delta).sum(-1))
    cov = np.clip((radius[:, None].astype(np.float32) - dist) / np.float32(2 * aa) + 0.5, 0.0, 1.0)
    ok = (cov > 0) & np.all((vox >= 0) & (vox < shape), axis=-1)
    flat = np.ravel_multi_index(tuple(vox[ok].T), grid.shape)
    return flat, cov[ok].astype(np.float32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)
