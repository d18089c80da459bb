"""Perlin gradient noise, CovidCTNet's "pseudo-infection" added to control slices.

The method draws, per slice, a 2D Perlin noise image with 10 octaves, lacunarity 2, a
random scale in [10, 30) pixels (on a 128-pixel slice) and a random persistence in
[-0.5, 0.5), and adds it to the slice; the BCDU-Net learns to return the clean slice.
Negative persistence flips the sign of every other octave, as in the ``noise`` package the
method used; octaves are summed and divided by the sum of their amplitudes as it does.

Whole images are computed at once per octave (lattice hashing, gradients, fade curves as
array operations, no per-pixel loop).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The 8 lattice gradients of 2D improved Perlin noise, as x and y components.
_GRAD_X = np.array([1, -1, 1, -1, 1, -1, 0, 0], dtype=np.float32)
_GRAD_Y = np.array([1, 1, -1, -1, 0, 0, 1, -1], dtype=np.float32)
#: The slice size the method's noise scales refer to.
REFERENCE_SIZE = 128
#: Where pseudo-infection goes: the whole slice (the method's code) or the lungs only.
NOISE_SLICE, NOISE_LUNGS = "slice", "lungs"
NOISE_REGIONS = (NOISE_SLICE, NOISE_LUNGS)
#: How pseudo-infection changes a slice: the method adds the signed noise image
#: ("additive"); "opacity" thresholds it into blobs and blends them towards an opacity's
#: density, as infection replaces aerated lung with denser material (see :meth:`opacity`).
NOISE_ADDITIVE, NOISE_OPACITY = "additive", "opacity"
#: "lobar": half of the noisy slices as "opacity", half with a lobar consolidation (see
#: :meth:`PseudoInfection.lobar`).
NOISE_LOBAR = "lobar"
NOISE_KINDS = (NOISE_ADDITIVE, NOISE_OPACITY, NOISE_LOBAR)
#: The densities an "opacity" pseudo-infection takes, in HU: faint ground glass up to
#: consolidation (radiological ranges: GGO about -750 to -300 HU, consolidation above).
OPACITY_HU = (-700.0, 50.0)
#: Share of the slice's aerated lung an "opacity" pseudo-infection covers, drawn uniformly.
OPACITY_COVER = (0.03, 0.35)
#: Lobar consolidation: its density in HU and the share of one lung's aerated area it fills.
LOBAR_HU = (-80.0, 40.0)
LOBAR_COVER = (0.2, 0.6)

#: Below this value of the CovidCTNet window ([-1000, 400] HU -> [0, 1]), about -580 HU, a
#: voxel is air or aerated lung.
AIR_LEVEL = 0.3


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _octave(x: np.ndarray, y: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """One octave of gradient noise on the grid x (rows) by y (columns); values in [-1, 1].

    x and y are 1D lattice coordinates: everything that depends on one axis only is
    computed on the vectors and broadcast, so only the hashing and the blend are 2D.
    """
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32)[:, None], (y - y0).astype(np.float32)[None, :]
    xi, yi = x0.astype(np.int64) & 255, y0.astype(np.int64) & 255

    def corner(dx: int, dy: int) -> np.ndarray:
        h = perm[perm[xi + dx][:, None] + yi[None, :] + dy] & 7
        return _GRAD_X[h] * (fx - dx) + _GRAD_Y[h] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    c00, c10 = corner(0, 0), corner(1, 0)
    bottom = c00 + u * (c10 - c00)
    c01, c11 = corner(0, 1), corner(1, 1)
    top = c01 + u * (c11 - c01)
    return bottom + v * (top - bottom)


def perlin_noise(shape: tuple[int, int], scale: float, octaves: int = 10,
                 persistence: float = 0.5, lacunarity: float = 2.0, seed: int = 0) -> np.ndarray:
    """A (H, W) float32 Perlin noise image; pixel (i, j) samples the noise at (i, j) / scale."""
    if scale <= 0 or octaves < 1:
        raise ValueError("scale must be positive and octaves >= 1")
    perm = np.random.default_rng(seed).permutation(256)
    perm = np.concatenate([perm, perm, perm[:2]])  # room for the +1 corner lookups
    rows, cols = np.arange(shape[0]) / scale, np.arange(shape[1]) / scale
    total = np.zeros(shape, dtype=np.float32)
    frequency, amplitude, amplitude_sum = 1.0, 1.0, 0.0
    for _ in range(octaves):
        if amplitude != 0.0:
            total += np.float32(amplitude) * _octave(rows * frequency, cols * frequency, perm)
        amplitude_sum += amplitude
        frequency *= lacunarity
        amplitude *= persistence
    return total / np.float32(amplitude_sum)


def amplitude_bound(octaves: int, persistence: float) -> float:
    """An upper bound of |perlin_noise| for these parameters (each octave is within [-1, 1])."""
    amps = persistence ** np.arange(octaves)
    return float(np.abs(amps).sum() / abs(amps.sum()))


@dataclass(frozen=True)
class PseudoInfection:
    """The method's random noise parameters (scales refer to a 128-pixel slice)."""

    scale_range: tuple[int, int] = (10, 30)
    persistence_range: tuple[float, float] = (-0.5, 0.5)
    octaves: int = 10
    lacunarity: float = 2.0

    def draw(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """One noise image with randomly drawn scale, persistence and lattice seed."""
        scale = int(rng.integers(*self.scale_range)) * shape[-1] / REFERENCE_SIZE
        lo, hi = self.persistence_range
        persistence = float(rng.integers(round(lo * 100), round(hi * 100))) / 100
        seed = int(rng.integers(0, 1000))
        return perlin_noise(shape, scale, self.octaves, persistence, self.lacunarity, seed)

    def opacity(self, unit_slice: np.ndarray, where: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
        """``unit_slice`` (CovidCTNet window) with Perlin-shaped opacities blended in.

        The noise image is thresholded at the quantile that leaves a random share
        (OPACITY_COVER) of ``where`` above it; a soft edge turns that into blobs of irregular
        outline (the noise's octaves), blended towards one random density in OPACITY_HU.
        Additive noise, whose negative half makes lung darker than air and whose positive half
        stays below soft-tissue density, teaches a denoiser neither the sign nor the density
        of dense consolidation; the blend covers both.
        """
        from ..windowing import COVIDCTNET

        noise = self.draw(unit_slice.shape, rng)
        inside = noise[where > 0]
        if inside.size == 0:
            return unit_slice.copy()
        spread = float(inside.std()) or 1.0
        level = float(np.quantile(inside, 1.0 - rng.uniform(*OPACITY_COVER)))
        alpha = np.clip((noise - level) / (0.5 * spread), 0.0, 1.0) * where
        target = float(COVIDCTNET.to_unit(np.array([rng.uniform(*OPACITY_HU)]))[0])
        return unit_slice + alpha * (np.float32(target) - unit_slice)

    def lobar(self, unit_slice: np.ndarray, where: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
        """``unit_slice`` with one lung's far part, along a random direction, turned to
        consolidation density: a dense region that fills part of a lobe and meets the chest
        wall, with an irregular (Perlin) border towards the aerated rest.

        Perlin blobs fall inside the lung and rarely reach the pleura over a long stretch; a
        denoiser trained on them only keeps a dense region that merges with the chest wall or
        the mediastinum as if it were wall, and so leaves CAP's lobar consolidation out of the
        infection map.
        """
        from scipy import ndimage

        from ..windowing import COVIDCTNET

        labels, count = ndimage.label(where > 0)
        if count == 0:
            return unit_slice.copy()
        sizes = np.bincount(labels.ravel())[1:].astype(np.float64)
        lung = labels == 1 + int(rng.choice(count, p=sizes / sizes.sum()))
        # vessels and the partial-volume rim at the wall belong to the lobe as well: without
        # them a dark line would part the consolidation from the chest wall
        lung = ndimage.binary_dilation(ndimage.binary_fill_holes(lung), iterations=1)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        rows, cols = np.indices(unit_slice.shape, dtype=np.float32)
        along = rows * np.float32(np.sin(angle)) + cols * np.float32(np.cos(angle))
        inside = along[lung]
        spread = float(inside.std()) or 1.0
        # the border: a straight cut (a fissure) made irregular by the noise
        along = along + self.draw(unit_slice.shape, rng) * np.float32(spread)
        level = float(np.quantile(along[lung], 1.0 - rng.uniform(*LOBAR_COVER)))
        alpha = np.clip((along - level) / (0.1 * spread), 0.0, 1.0) * lung
        target = float(COVIDCTNET.to_unit(np.array([rng.uniform(*LOBAR_HU)]))[0])
        return unit_slice + alpha * (np.float32(target) - unit_slice)

    def apply(self, slices: np.ndarray, rng: np.random.Generator,
              fraction: float = 0.5, region: str = NOISE_SLICE,
              kind: str = NOISE_ADDITIVE) -> tuple[np.ndarray, np.ndarray]:
        """Noisy copies of (N, H, W) ``slices``: a random ``fraction`` of them get noise,
        over the whole slice (``region="slice"``, the method's code) or only where the slice
        shows air inside the body (``"lungs"``, see :func:`air_in_body`); added as it is
        (``kind="additive"``, the method), as blended opacities (``"opacity"``) or half of
        them as opacities and half as lobar consolidations (``"lobar"``).

        Returns (inputs, noisy_flags); the training target stays the clean slices.
        """
        if region not in NOISE_REGIONS:
            raise ValueError(f"unknown noise region {region!r}; choose from {', '.join(NOISE_REGIONS)}")
        if kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise kind {kind!r}; choose from {', '.join(NOISE_KINDS)}")
        slices = np.asarray(slices, dtype=np.float32)
        n = len(slices)
        noisy = np.zeros(n, dtype=bool)
        noisy[rng.permutation(n)[:int(round(fraction * n))]] = True
        inputs = slices.copy()
        for k in np.flatnonzero(noisy):
            where = np.ones(slices.shape[1:], np.float32) if region == NOISE_SLICE \
                else air_in_body(slices[k])
            if kind == NOISE_LOBAR and rng.random() < 0.5:
                inputs[k] = self.lobar(slices[k], where, rng)
            elif kind in (NOISE_OPACITY, NOISE_LOBAR):
                inputs[k] = self.opacity(slices[k], where, rng)
            else:
                inputs[k] += self.draw(slices.shape[1:], rng) * where
        return inputs, noisy


def air_in_body(unit_slice: np.ndarray) -> np.ndarray:
    """Aerated lung, roughly: the air that denser tissue encloses on a pre-processed slice
    (a threshold and hole filling; no segmentation model). The noise is confined to it so
    that the pseudo-infection sits where infection does."""
    from scipy import ndimage

    dense = np.asarray(unit_slice) > AIR_LEVEL
    return (ndimage.binary_fill_holes(dense) & ~dense).astype(np.float32)
