"""CovidCTNet infection maps as pictures: slice overlays and maximum-intensity projections.

Inputs are the two arrays CovidCTNet computes: the pre-processed volume (z, S, S) in
[0, 1] (1 mm slices) and the infection map (D, S, S) that the 3D CNN reads (D = 50
slices, resized along z from the volume). Only the positive part of the map is drawn:
it is where a slice is denser than the BCDU-Net's "control lung" reconstruction of it,
which is where lesions show. One fixed colour scale (:data:`FULL_SCALE`) is used for every
slice, projection and scan, so pictures compare directly.

Map slice d sits at volume slice (d + 0.5) * z / D - 0.5 (the pixel-centre convention of
the z resize, :mod:`covidct.covidctnet.mapback`), so overlays are aligned to within a millimetre.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .plotting import blend_heat, new_figure, resize_to

#: Map value drawn at full colour, the same for every scan so that pictures compare across
#: scans and a control scan is not stretched until its noise looks like disease: on the
#: [-1000, 400] HU unit scale, ground glass (about -450 HU) over aerated lung (about -850 HU)
#: differs by about 0.3.
FULL_SCALE = 0.3
#: Weak infection faint yellow, strong solid red: visible on both dark lung and bright tissue.
CMAP = "autumn_r"
#: Map values below this fraction of the scale are not drawn (noise).
FLOOR = 0.12


def _check(volume: np.ndarray, infection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    volume, infection = np.asarray(volume, np.float32), np.asarray(infection, np.float32)
    if volume.ndim != 3 or infection.ndim != 3 or volume.shape[1:] != infection.shape[1:]:
        raise ValueError(f"volume {volume.shape} and infection map {infection.shape} must be "
                         "(z, S, S) and (D, S, S) with the same slice size")
    return volume, infection


def map_scale(infection: np.ndarray | None = None) -> float:
    """The map value drawn at full colour (:data:`FULL_SCALE`, the same for every scan)."""
    return FULL_SCALE


def normalised_map(infection: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Positive part of the map divided by the scan's scale, clipped to [0, 1]."""
    scale = map_scale(infection) if scale is None else scale
    return np.clip(np.asarray(infection, np.float32) / scale, 0.0, 1.0)


def volume_index(map_index: int, map_depth: int, volume_depth: int) -> int:
    """The volume slice under infection-map slice ``map_index`` (CovidCTNet's own geometry,
    :func:`covidct.covidctnet.mapback.volume_slice_of`)."""
    # lazy: imports scipy, which this module does not need on import
    from ..covidctnet.mapback import volume_slice_of

    return volume_slice_of(map_index, map_depth, volume_depth)


def top_slices(infection: np.ndarray, k: int = 3, min_gap: int = 3) -> list[int]:
    """The ``k`` map slices with the most positive infection, at least ``min_gap`` apart."""
    mass = np.clip(np.asarray(infection, np.float32), 0, None).sum(axis=(1, 2))
    chosen: list[int] = []
    for index in np.argsort(-mass, kind="stable"):
        if all(abs(int(index) - c) >= min_gap for c in chosen):
            chosen.append(int(index))
        if len(chosen) == k:
            break
    return sorted(chosen)


def slice_overlay(volume: np.ndarray, infection: np.ndarray, map_index: int,
                  scale: float | None = None) -> np.ndarray:
    """RGB uint8 (S, S): the volume slice under map slice ``map_index`` with the map over it."""
    volume, infection = _check(volume, infection)
    heat = normalised_map(infection[map_index], map_scale(infection) if scale is None else scale)
    base = volume[volume_index(map_index, len(infection), len(volume))]
    return blend_heat(np.clip(base, 0, 1), heat, cmap=CMAP, max_alpha=0.8, floor=FLOOR)


def projections(volume: np.ndarray, infection: np.ndarray, scale: float | None = None,
                fov_mm: float | None = None) -> dict[str, np.ndarray]:
    """Maximum-intensity projections of the map over mean projections of the volume.

    ``axial`` (S, S) projects along z; ``coronal`` projects front to back with the head at
    the top. RGB uint8. The coronal view is on the volume's grid, (z, S) with 1 mm rows,
    unless ``fov_mm`` (the scan's in-plane field of view, e.g. columns x x-spacing) is given:
    then its rows are resampled so that it shows the true proportions with square pixels.
    """
    volume, infection = _check(volume, infection)
    scale = map_scale(infection) if scale is None else scale
    heat = normalised_map(infection, scale)
    axial = blend_heat(volume.mean(axis=0), heat.max(axis=0), cmap=CMAP, max_alpha=0.8,
                       floor=FLOOR)
    coronal_heat = resize_to(heat.max(axis=1), (volume.shape[0], volume.shape[2]))
    # Canonical orientation has z increasing towards the head: flip so the head is up.
    coronal = blend_heat(volume.mean(axis=1)[::-1], np.clip(coronal_heat, 0, 1)[::-1],
                         cmap=CMAP, max_alpha=0.8, floor=FLOOR)
    if fov_mm:
        coronal = _true_aspect(coronal, column_mm=fov_mm / volume.shape[2], row_mm=1.0)
    return {"axial": axial, "coronal": coronal}


def _true_aspect(rgb: np.ndarray, column_mm: float, row_mm: float) -> np.ndarray:
    """Resample rows so that a row is as many mm high as a column is wide."""
    from PIL import Image

    rows = max(1, round(rgb.shape[0] * row_mm / column_mm))
    if rows == rgb.shape[0]:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((rgb.shape[1], rows), Image.BILINEAR))


def infection_figure(volume: np.ndarray, infection: np.ndarray, slices: Sequence[int] | None = None,
                     fov_mm: float | None = None, title: str | None = None):
    """A one-row figure: the map over its most affected slices, then the two projections.

    ``fov_mm`` (the scan's in-plane field of view) gives the coronal projection its true
    aspect; without it the volume's z extent in mm is shown against 128 pixels as square.
    """
    volume, infection = _check(volume, infection)
    slices = list(slices) if slices is not None else top_slices(infection)
    scale = map_scale(infection)
    views = [(slice_overlay(volume, infection, d, scale), f"slice {d + 1}/{len(infection)}")
             for d in slices]
    # Without the field of view, show the z extent (mm) against the width as if square.
    mips = projections(volume, infection, scale, fov_mm=fov_mm or float(volume.shape[0]))
    views += [(mips["axial"], "axial MIP"), (mips["coronal"], "coronal MIP")]
    fig = new_figure(1.9 * len(views), 2.3)
    axes = fig.subplots(1, len(views))
    for ax, (image, label) in zip(np.atleast_1d(axes), views):
        ax.imshow(image, aspect="equal", interpolation="bilinear")
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
