"""Pictures of one prediction's infection map, written next to its JSON.

The overlays and projections themselves come from :mod:`covidct.explain.infection_pictures` (one
drawing of infection maps for the whole project); this module lays them out as two PNGs:

* ``covidctnet-infection-slices.png``: the most affected slices (by the map inside the lung
  mask), each pre-processed slice with the lung outline
  above the same slice with the infection map over it;
* ``covidctnet-infection-mip.png``: axial and coronal maximum-intensity projections.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_path
from ..explain.infection_pictures import (CMAP, FLOOR, map_scale, normalised_map, projections, slice_overlay,
                                 top_slices, volume_index)
from ..explain.plotting import blend_heat, draw_outline
from ..prediction import Prediction
from .settings import INPUT_INFECTION

log = logging.getLogger(__name__)

N_SLICES = 4
#: Each picture tile is drawn at least this many pixels wide (nearest-neighbour zoom).
TILE = 256


def _tile(rgb: np.ndarray, width: int = TILE) -> Image.Image:
    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    height = max(1, round(image.height * width / image.width))
    return image.resize((width, height), Image.NEAREST)


def _gray(unit: np.ndarray) -> np.ndarray:
    return np.repeat((np.clip(unit, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _sheet(rows: list[list[Image.Image]], title: str) -> Image.Image:
    """Tiles in rows under a two-line title band."""
    band = 34
    width = sum(t.width for t in rows[0])
    heights = [max(t.height for t in row) for row in rows]
    sheet = Image.new("RGB", (max(width, 2 * TILE), band + sum(heights)), "black")
    y = band
    for row, height in zip(rows, heights):
        x = 0
        for tile in row:
            sheet.paste(tile, (x, y))
            x += tile.width
        y += height
    draw = ImageDraw.Draw(sheet)
    for line, text in enumerate(title.splitlines()[:2]):
        draw.text((4, 2 + 15 * line), text, fill="white")
    return sheet


def _save(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def write_pictures(prediction: Prediction, volume: np.ndarray, out_dir: Path,
                   fov_mm: float | None = None, lungs: np.ndarray | None = None) -> list[Path]:
    """Write the slice sheet and the projections of ``prediction``'s infection map (inside
    the lungs); ``fov_mm`` (the scan's in-plane field of view) gives the coronal view its
    proportions; ``lungs`` (the lung mask on the volume's grid) is outlined on the slices."""
    infection = prediction.maps.get(INPUT_INFECTION)
    if infection is None:
        log.info("this CovidCTNet reads plain volumes (no BCDU-Net): no infection map to draw")
        return []
    scale = map_scale(infection)
    tag = " [SYNTHETIC]" if prediction.synthetic else ""
    head = f"CovidCTNet: {prediction.label} {prediction.confidence:.0%}{tag}"
    out_dir = Path(out_dir)

    chosen = top_slices(infection, k=N_SLICES)
    under = [volume_index(d, len(infection), len(volume)) for d in chosen]
    plain = [_gray(volume[k]) for k in under]
    overlaid = [slice_overlay(volume, infection, d, scale) for d in chosen]
    if lungs is not None:
        plain = [draw_outline(rgb, lungs[k] > 0) for rgb, k in zip(plain, under)]
        overlaid = [draw_outline(rgb, lungs[k] > 0) for rgb, k in zip(overlaid, under)]
    plain, overlaid = [_tile(t) for t in plain], [_tile(t) for t in overlaid]
    title = (f"{head}. Slices {', '.join(str(d + 1) for d in chosen)} of {len(infection)}\n"
             f"top: pre-processed, lung outline; bottom: infection map inside the lungs")
    paths = [_save(_sheet([plain, overlaid], title), out_dir / f"{prediction.method}-infection-slices.png")]

    views = projections(volume, infection, scale, fov_mm=fov_mm)
    title = f"{head}\nmaximum-intensity projections: axial | coronal. Research use only."
    tiles = [_tile(views["axial"]), _tile(views["coronal"])]
    paths.append(_save(_sheet([tiles], title), out_dir / f"{prediction.method}-infection-mip.png"))
    return paths


def key_slice_pictures(scan, infection: np.ndarray, n: int) -> list[tuple[int, np.ndarray]]:
    """(scan slice, RGB) of the ``n`` slices with the most infection (``infection`` on the
    scan's voxel grid): the lung-window slice beside the same slice with the map over it."""
    # lazy: imports scipy, which this module does not need on import
    from ..windowing import COVIDX_LUNG

    pictures = []
    for k in top_slices(infection, k=n, min_gap=1):
        gray = COVIDX_LUNG.to_uint8(scan.voxels[k]) if scan.is_hu else scan.voxels[k].astype(np.uint8)
        plain = blend_heat(gray, np.zeros(gray.shape))
        overlay = blend_heat(gray, normalised_map(infection[k]), cmap=CMAP, max_alpha=0.8, floor=FLOOR)
        gap = np.zeros((gray.shape[0], 4, 3), np.uint8)
        pictures.append((int(k), np.concatenate([plain, gap, overlay], axis=1)))
    return pictures
