"""Small figure helpers shared by the explanation pictures and the HTML report.

Figures are built on :class:`matplotlib.figure.Figure` directly (never pyplot), so no GUI
backend and no global figure state are involved: safe in a server and in parallel tests.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..atomic import write_bytes

#: One colour per class index, the same in every figure (Okabe-Ito, colour-blind safe):
#: Normal/Control blue, CP/CAP orange, NCP/COVID-19 vermillion; more classes reuse the rest.
CLASS_COLOURS = ("#0072B2", "#E69F00", "#D55E00", "#009E73", "#CC79A7", "#56B4E9")


def class_colour(index: int) -> str:
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def new_figure(width: float = 6.0, height: float = 4.0):
    """A Figure without pyplot, with the house style (small fonts, no top/right spines)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    fig.set_facecolor("white")
    return fig


def tidy_axes(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)


def figure_bytes(fig, fmt: str = "png", dpi: int = 110) -> bytes:
    """The figure rendered as PNG or SVG bytes (SVG with text as paths: no font needed)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "covidct"}):
        fig.savefig(buf, format=fmt, dpi=dpi, facecolor="white",
                    metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a figure atomically; the format follows the suffix (.png or .svg)."""
    path = Path(path)
    return write_bytes(path, figure_bytes(fig, path.suffix.lstrip(".").lower() or "png", dpi))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def to_gray_unit(image: np.ndarray) -> np.ndarray:
    """A 2D picture as float32 in [0, 1]: uint8 divided by 255, floats min-max scaled."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D picture, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    low, high = float(np.nanmin(image)), float(np.nanmax(image))
    if not high > low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def blend_heat(gray: np.ndarray, heat: np.ndarray, cmap: str = "jet", max_alpha: float = 0.55,
               floor: float = 0.0) -> np.ndarray:
    """Colour ``heat`` (values in [0, 1]) over a grayscale picture, as RGB uint8.

    The opacity of each pixel grows with its heat, so cool regions leave the anatomy
    readable instead of tinting the whole slice; heat at or below ``floor`` is not drawn.
    """
    from matplotlib import colormaps

    base = to_gray_unit(gray)
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if heat.shape != base.shape:
        raise ValueError(f"heat map {heat.shape} and picture {base.shape} differ in shape")
    colours = colormaps[cmap](heat)[..., :3].astype(np.float32)
    alpha = np.where(heat > floor, max_alpha * heat, 0.0)[..., None]
    rgb = (1.0 - alpha) * base[..., None] + alpha * colours
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_to(image: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resize a 2D float array to ``shape`` (rows, cols) with bilinear (or nearest) sampling."""
    from PIL import Image

    image = np.asarray(image, dtype=np.float32)
    if image.shape == tuple(shape):
        return image
    resample = Image.BILINEAR if order else Image.NEAREST
    return np.asarray(Image.fromarray(image, mode="F").resize((shape[1], shape[0]), resample))


def fit_within(rgb: np.ndarray, max_side: int, enlarge: bool = False) -> np.ndarray:
    """Shrink (or, with ``enlarge``, also grow) a uint8 picture to a longer side of ``max_side``."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale == 1 or (scale > 1 and not enlarge):
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))


#: Colour of lung outlines on pictures (cyan: apart from the heat maps' colours).
OUTLINE_RGB = (0, 255, 255)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour=OUTLINE_RGB) -> np.ndarray:
    """``rgb`` with the edge of ``mask`` drawn over it (about 1/200 of the picture thick)."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if mask.shape != rgb.shape[:2]:
        mask = resize_to(mask.astype(np.float32), rgb.shape[:2], order=0) > 0.5
    width = max(1, round(max(mask.shape) / 200))
    edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=1)
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[edge] = colour
    return out
