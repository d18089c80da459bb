"""Pictures of a CovidCTNet infection map, written next to the prediction JSON.

Two PNGs: a few slices (the pre-processed slice above the same slice with the infection map
overlaid), chosen where the map is strongest, and maximum-intensity projections of the map
(axial and coronal) over the pre-processed volume. Only the positive part of the map is
drawn (density the denoiser removed), on a fixed scale so pictures compare across scans.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_path
from ..prediction import Prediction
from .preprocess import resize_depth
from .settings import INPUT_INFECTION, VolumeSettings

#: Infection-map value drawn at full colour: the unit-scale density difference of ground
#: glass (about -450 HU) over aerated lung (about -850 HU) is about 0.3.
FULL_SCALE = 0.3
N_SLICES = 4
#: Pictures are drawn at least this many pixels per tile (nearest-neighbour zoom).
TILE = 256


def heat(values: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white ramp for values in [0, 1] -> uint8 RGB."""
    t = np.clip(values, 0.0, 1.0)[..., None] * 3.0
    rgb = np.clip(np.concatenate([t, t - 1.0, t - 2.0], axis=-1), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def overlay(gray: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Grey image with the heat colour blended in where ``strength`` (0-1) is positive."""
    base = np.repeat((np.clip(gray, 0, 1) * 255)[..., None], 3, axis=-1)
    alpha = np.clip(strength, 0.0, 1.0)[..., None] ** 0.5
    return (base * (1 - alpha) + heat(strength) * alpha).astype(np.uint8)


def strongest_slices(positive: np.ndarray, n: int = N_SLICES, gap: int = 3) -> list[int]:
    """Up to ``n`` slice indices with the most infection, at least ``gap`` slices apart."""
    mass = positive.reshape(len(positive), -1).sum(axis=1)
    if not mass.any():
        return [int(k) for k in np.linspace(0, len(positive) - 1, n).round()]
    chosen: list[int] = []
    for k in np.argsort(-mass):
        if mass[k] <= 0 or len(chosen) == n:
            break
        if all(abs(int(k) - c) >= gap for c in chosen):
            chosen.append(int(k))
    return sorted(chosen)


def _tile(rgb: np.ndarray) -> Image.Image:
    image = Image.fromarray(rgb)
    zoom = max(1, -(-TILE // max(image.size)))
    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)


def _sheet(tiles: list[list[Image.Image]], title: str) -> Image.Image:
    """Tiles in rows under a title band."""
    w, h = tiles[0][0].size
    band = 34
    sheet = Image.new("RGB", (w * max(len(r) for r in tiles), h * len(tiles) + band), "black")
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * w, band + r * h))
    draw = ImageDraw.Draw(sheet)
    for line, text in enumerate(title.splitlines()[:2]):
        draw.text((4, 2 + 15 * line), text, fill="white")
    return sheet


def _save(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def write_pictures(prediction: Prediction, volume: np.ndarray, settings: VolumeSettings,
                   out_dir: Path) -> list[Path]:
    """Write the slice sheet and the projections; returns their paths."""
    key = settings.input
    if key not in prediction.maps:
        return []
    signal = prediction.maps[key]
    gray = resize_depth(volume, len(signal))
    if key == INPUT_INFECTION:
        strength = np.clip(signal, 0.0, None) / FULL_SCALE
        what = f"infection map (slice minus BCDU-Net output, full colour at {FULL_SCALE})"
    else:  # the ablation model has no infection map: show its input volume plainly
        strength = np.zeros_like(signal)
        what = "pre-processed volume (ablation model: no infection map)"
    tag = " [SYNTHETIC]" if prediction.synthetic else ""
    head = f"CovidCTNet {prediction.label} {prediction.confidence:.0%}{tag}"
    stem = prediction.method
    out_dir.mkdir(parents=True, exist_ok=True)

    chosen = strongest_slices(strength)
    tiles = [[_tile(overlay(gray[k], np.zeros_like(gray[k]))) for k in chosen],
             [_tile(overlay(gray[k], strength[k])) for k in chosen]]
    slices_title = (f"{head}: slices {', '.join(str(k + 1) for k in chosen)} of {len(signal)}\n"
                    f"top: pre-processed, bottom: {what}")
    paths = [_save(_sheet(tiles, slices_title), out_dir / f"{stem}-infection-slices.png")]

    # Coronal views: rows are z, flipped so the head is at the top, stretched to square.
    axial = overlay(gray.mean(axis=0), strength.max(axis=0))
    coronal_gray = resize_depth(gray.mean(axis=1)[::-1, None, :], gray.shape[1])[:, 0]
    coronal_strength = resize_depth(strength.max(axis=1)[::-1, None, :], gray.shape[1])[:, 0]
    coronal = overlay(coronal_gray, coronal_strength)
    mip_title = (f"{head}: maximum-intensity projections, axial | coronal\n"
                 "Research use only, not a diagnosis.")
    paths.append(_save(_sheet([[_tile(axial), _tile(coronal)]], mip_title),
                       out_dir / f"{stem}-infection-mip.png"))
    return paths
