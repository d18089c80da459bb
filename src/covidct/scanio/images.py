"""Pictures (PNG/JPG/TIFF): already-windowed 8-bit slices, one file each or a multi-page TIFF.

Pictures carry no geometry and no Hounsfield units, only the window someone applied, so
they load as ``units="windowed"`` with unit spacing and ``geometry_known=False``.
16-bit pictures are refused rather than converted: they may hold raw HU plus an offset or a
rescaled window, and guessing wrong silently feeds the model a different window than the
one it was trained with.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, PngImagePlugin, UnidentifiedImageError

from ..atomic import atomic_path
from ..constants import SYNTHETIC_TAG
from ..errors import ScanError
from ..scan import Scan
from ..windowing import COVIDX_LUNG, Window
from ..privacy import member_label
from .common import MAX_SLICE_PIXELS, Notes, check_pixel_count, is_synthetic_text

#: Pillow modes holding 8-bit samples we can reduce to one grayscale channel.
_GRAY_MODES = {"L", "LA", "RGB", "RGBA", "RGBX", "P", "PA"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F", "I;32"}


def read_pictures(paths: list[Path], source: Path) -> Scan:
    """Stack the pictures (in the order given) into a windowed Scan."""
    notes = Notes(source)
    slices: list[tuple[str, np.ndarray]] = []
    synthetic = False
    root = source if source.is_dir() else None
    labels = [member_label(p, k, len(paths), root) if root else "" for k, p in enumerate(paths)]
    sizes = [_header_size(path, label, source) for path, label in zip(paths, labels)]
    check_pixel_count(max(h for h, _ in sizes), max(w for _, w in sizes), len(paths), source)
    for path, label in zip(paths, labels):
        pages, tagged = _read_picture(path, label, source)
        synthetic |= tagged
        slices += [(label, page) for page in pages]
    _check_one_size(slices, source)
    fmt = paths[0].suffix.lower().lstrip(".").replace("jpeg", "jpg").replace("tiff", "tif")
    metadata = {
        "modality": "CT",
        "n_slices": len(slices),
        "orientation": "unknown",
        "synthetic": synthetic,
        "source_format": {"jpg": "jpeg", "tif": "tiff"}.get(fmt, fmt),
        "warnings": notes.items,
    }
    # Pictures say nothing about their plane; "unknown" lets axial-only methods proceed.
    return Scan(voxels=np.stack([page for _, page in slices]), spacing=(1.0, 1.0, 1.0),
                units="windowed", orientation="unknown", geometry_known=False,
                source=str(source), metadata=metadata)


def _check_one_size(slices: list[tuple[str, np.ndarray]], source: Path) -> None:
    """Name the first picture whose size differs from most others'."""
    h, w = Counter(page.shape for _, page in slices).most_common(1)[0][0]
    for label, page in slices:
        if page.shape != (h, w):
            raise ScanError(f"{label}: picture size {page.shape[1]}x{page.shape[0]} differs "
                            f"from the {w}x{h} of the other slices; all slices must have one "
                            "size", source)


def _header_size(path: Path, label: str, source: Path) -> tuple[int, int]:
    """(height, width) from the picture's header, before any pixel is decoded; pages of a
    multi-page TIFF count as slices of that size."""
    prefix = f"{label}: " if label else ""
    try:
        with warnings.catch_warnings():  # covidct's own limits apply, checked just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            w, h = image.size
            pages = getattr(image, "n_frames", 1) or 1
    except Image.DecompressionBombError:
        raise ScanError(f"{prefix}picture is larger than the {MAX_SLICE_PIXELS:,} pixels "
                        "accepted per slice", source) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ScanError(f"{prefix}not a readable picture ({_first_line(exc)})", source) from None
    check_pixel_count(h, w, pages, source, label)
    return h, w


def _read_picture(path: Path, label: str, source: Path) -> tuple[list[np.ndarray], bool]:
    prefix = f"{label}: " if label else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            tagged = is_synthetic_text(*image.info.values())
            pages = [_gray(page, prefix, source) for page in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise ScanError(f"{prefix}not a readable picture ({_first_line(exc)})", source) from None
    return pages, tagged


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _gray(image: Image.Image, prefix: str, source: Path) -> np.ndarray:
    mode = image.mode
    if mode in _WIDE_MODES:
        raise ScanError(f"{prefix}{mode} picture with more than 8 bits per sample: covidct "
                        "expects 8-bit windowed slices (e.g. the COVIDx lung window); give the "
                        "DICOM or NIfTI scan to use Hounsfield units", source)
    if mode not in _GRAY_MODES:
        raise ScanError(f"{prefix}unsupported picture mode {mode}; expected 8-bit grayscale",
                        source)
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
        mode = image.mode
    pixels = np.asarray(image)
    if mode in ("L", "LA"):
        return np.ascontiguousarray(pixels if mode == "L" else pixels[..., 0], dtype=np.uint8)
    rgb = pixels[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise ScanError(f"{prefix}colour picture (red, green and blue differ); CT slices are "
                        "grayscale", source)
    return np.ascontiguousarray(rgb[..., 0], dtype=np.uint8)


def write_png_slices(scan: Scan, folder: str | os.PathLike, *, window: Window = COVIDX_LUNG,
                     prefix: str = "slice", indices=None) -> list[Path]:
    """8-bit PNGs named ``{prefix}-{k:04d}.png`` (k = slice index), each written atomically.

    HU scans are windowed with ``window``; windowed scans are written as they are. The folder
    may hold other files (several patients share a COVIDx image folder), so files are
    replaced one by one rather than the folder as a whole.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = range(scan.n_slices) if indices is None else [int(k) for k in indices]
    paths = []
    for k in chosen:
        if not 0 <= k < scan.n_slices:
            raise ScanError(f"slice index {k} outside 0..{scan.n_slices - 1}", scan.source or None)
        pixels = window.to_uint8(scan.voxels[k]) if scan.is_hu else scan.voxels[k].astype(np.uint8)
        paths.append(write_png(folder / f"{prefix}-{k:04d}.png", pixels, synthetic=scan.synthetic))
    return paths


def write_png(path: str | os.PathLike, pixels: np.ndarray, *, synthetic: bool = False) -> Path:
    """One 8-bit grayscale slice as a PNG, written atomically (as write_png_slices writes each;
    a synthetic one says so in its Comment)."""
    info = PngImagePlugin.PngInfo()
    if synthetic:
        info.add_text("Comment", SYNTHETIC_TAG)
    with atomic_path(path) as tmp:
        # Level 1: about 4x faster to write than the default 6, files about 25% larger.
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info, compress_level=1)
    return Path(path)
