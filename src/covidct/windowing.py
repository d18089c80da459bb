"""Intensity windows and the automatic body crop: defined once, used by training and inference.

A window mismatch between training and inference is the classic failure of COVIDx CT
models (everything predicted Normal), so both methods take their window from here and
saved models record which one they were trained with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .errors import ScanError


@dataclass(frozen=True)
class Window:
    """A linear HU window: values in [low, high] map to the output range, outside clip."""

    name: str
    low: float
    high: float

    @property
    def center(self) -> float:
        return (self.low + self.high) / 2

    @property
    def width(self) -> float:
        return self.high - self.low

    def to_unit(self, hu: np.ndarray) -> np.ndarray:
        """HU -> float32 in [0, 1]."""
        # One new float32 array, the rest in place (the same arithmetic as
        # (hu - low) / width, clipped): this runs over whole scans.
        out = np.subtract(hu, np.float32(self.low), dtype=np.float32)
        np.divide(out, np.float32(self.width), out=out)
        return np.clip(out, 0.0, 1.0, out=out)

    def to_uint8(self, hu: np.ndarray) -> np.ndarray:
        """HU -> uint8 0-255 (rounded), as the COVIDx CT PNGs were made."""
        unit = self.to_unit(hu)
        unit *= np.float32(255.0)
        return np.rint(unit, out=unit).astype(np.uint8)

    def from_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """Approximate HU from a picture made with this window (saturated ends stay at the ends)."""
        return np.asarray(pixels, dtype=np.float32) / 255.0 * self.width + self.low

    def table_from(self, picture: "Window") -> np.ndarray:
        """A 256-entry uint8 table that turns an 8-bit picture made with ``picture`` into this
        window (``table[pixels]``): a picture can be re-windowed only within its own range."""
        return self.to_uint8(picture.from_uint8(np.arange(256)))


#: COVIDx CT lung window: center -600, width 1500, i.e. [-1350, 150] HU -> [0, 255].
COVIDX_LUNG = Window("covidx-lung", -1350.0, 150.0)
#: CovidCTNet's range: HU clipped to [-1000, 400] and scaled to [0, 1].
COVIDCTNET = Window("covidctnet", -1000.0, 400.0)
#: What the slice classifier may read instead (``rewindow``, issue 12): the COVIDx picture narrowed
#: to the lung's own range. Aerated lung (about -850 HU) and ground glass (-600) lie 40-60 grey
#: levels apart in the COVIDx window, 85 here; everything from -250 HU up (vessels,
#: consolidation, chest wall) saturates, since the COVIDx window spends 60% of its range there.
LUNG_DETAIL = Window("lung-detail", -1000.0, -250.0)
#: The same up to -100 HU: ground glass keeps 70 grey levels above lung, and denser ground
#: glass and thin vessels do not saturate (the lead of DEMO.md's "Fifth round: slice classifier").
LUNG_DETAIL_WIDE = Window("lung-detail-wide", -1000.0, -100.0)
#: Display presets for the viewer (not used by any model).
DISPLAY_LUNG = Window("lung", -1350.0, 150.0)
DISPLAY_MEDIASTINUM = Window("mediastinum", -160.0, 240.0)

WINDOWS = {w.name: w for w in (COVIDX_LUNG, COVIDCTNET, LUNG_DETAIL, LUNG_DETAIL_WIDE,
                                DISPLAY_LUNG, DISPLAY_MEDIASTINUM)}


def get_window(name: str) -> Window:
    try:
        return WINDOWS[name]
    except KeyError:
        raise ScanError(f"unknown window {name!r}; known: {', '.join(WINDOWS)}") from None


# Body crop -----------------------------------------------------------------------------

#: Tissue threshold for the body mask, in HU (fat is about -100, lung about -850).
_BODY_HU = -500.0


def body_mask(slice_2d: np.ndarray, units: str = "windowed",
              window: Window = COVIDX_LUNG) -> np.ndarray:
    """Boolean mask of the patient's body on one axial slice, without the scanner table.

    Soft tissue is thresholded, then an opening whose size scales with the image cuts the
    thin connections to the table and to clothing; the largest component is kept and its
    holes (the lungs) filled.
    """
    img = np.asarray(slice_2d, dtype=np.float32)
    if img.ndim != 2:
        raise ScanError(f"body crop needs a 2D slice, got shape {img.shape}")
    hu = img if units == "HU" else window.from_uint8(img)
    tissue = hu > _BODY_HU
    box = _tissue_box(tissue)
    if box is None:
        return tissue
    radius = max(1, round(min(img.shape) / 128))
    mask = np.zeros_like(tissue)
    mask[box] = _body_in(tissue[box], radius)
    return mask


def _tissue_box(tissue: np.ndarray) -> tuple[slice, slice] | None:
    """The tissue's bounding box plus one background pixel each side (within the image).

    Everything outside is background, so the body is found in the box alone, identically and
    several times faster: the opening pads with background as the image edge does; every
    background region reaching the image edge reaches the box's edge (through the ring of
    background round the tissue), so hole filling agrees; taxicab distances in a rectangle
    are the plain ones.
    """
    rows = np.flatnonzero(tissue.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(tissue.any(axis=0))
    h, w = tissue.shape
    return (slice(max(0, rows[0] - 1), min(h, rows[-1] + 2)),
            slice(max(0, cols[0] - 1), min(w, cols[-1] + 2)))


def _body_in(tissue: np.ndarray, radius: int) -> np.ndarray:
    opened = _box_opening(tissue, 2 * radius + 1)
    labels, n = ndimage.label(opened if opened.any() else tissue)
    if n == 0:
        return np.zeros_like(tissue)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    body = _fill_holes(labels == (int(np.argmax(sizes)) + 1))
    # Undo the opening's erosion of the outline (a diamond of the radius, as repeated
    # 4-connected dilation would give), but never grow into the table.
    grown = ndimage.distance_transform_cdt(~body, metric="taxicab") <= radius
    return grown & _fill_holes(tissue)


def _box_opening(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary opening by a size x size square, as separable min/max filters: the same
    result as ndimage.binary_opening with that square, about 20x faster at 512 px."""
    as_bytes = mask.view(np.uint8)
    eroded = ndimage.minimum_filter(as_bytes, size=size, mode="constant", cval=0)
    return ndimage.maximum_filter(eroded, size=size, mode="constant", cval=0).astype(bool)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill every background region that does not touch the image border (4-connected,
    as ndimage.binary_fill_holes), by labelling instead of iterated dilation."""
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)   # a lookup table: much faster than np.isin
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        outside[edge] = True
    outside[0] = False
    return ~outside[labels]


def body_box(slice_2d: np.ndarray, units: str = "windowed",
             window: Window = COVIDX_LUNG, margin: int = 2) -> tuple[int, int, int, int]:
    """COVIDx-style body crop box (xmin, ymin, xmax, ymax), inclusive pixel coordinates.

    Falls back to the whole image when no body is found (e.g. an empty slice).
    """
    mask = body_mask(slice_2d, units, window)
    h, w = mask.shape
    if not mask.any():
        return 0, 0, w - 1, h - 1
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return (max(0, int(xs[0]) - margin), max(0, int(ys[0]) - margin),
            min(w - 1, int(xs[-1]) + margin), min(h - 1, int(ys[-1]) + margin))


#: Aerated lung for :func:`lung_box`: below -600 HU, i.e. lung and airways, not ground glass
#: (about -600 to -400) or anything denser, which a lesion box must hold but not define.
_LUNG_AIR_HU = -600.0
#: :func:`lung_box`'s margin round the aerated lung, as a share of its extent (plus 4 pixels):
#: room for consolidation or ground glass against the chest wall, and for the training crop's
#: few pixels of shift.
_LUNG_BOX_MARGIN = 0.08


def _lung_box_pad(shape: tuple[int, ...]) -> int:
    """The lung box's fixed margin: 4 pixels of a 512-pixel COVIDx picture, as many of the
    same picture at any other size (a scan's 128-pixel slice gets 1), so that the box frames
    the lungs alike whatever the matrix: a fixed 4 pixels framed a 128-pixel slice 10-20%
    wider than its 512-pixel COVIDx picture, which the classifier was trained on."""
    return max(1, int(round(4 * max(shape[:2]) / 512)))


def lung_box(pixels: np.ndarray, box: tuple[int, int, int, int],
             window: Window = COVIDX_LUNG) -> tuple[int, int, int, int]:
    """The box of the aerated lungs inside a body ``box`` of an 8-bit ``window`` picture
    (xmin, ymin, xmax, ymax, inclusive; within ``box``): what a slice classifier may read
    instead of the whole body. Air that reaches the box's edge is outside the body; of the
    enclosed air, pockets under a tenth of the largest (bowel gas) are left out. Found at about
    128 px, so it costs a few milliseconds at 512. The body box itself when no lung is found."""
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = pixels[y0:y1 + 1, x0:x1 + 1]
    stride = max(1, min(crop.shape) // 128)
    air = crop[::stride, ::stride] < window.to_uint8(np.array([_LUNG_AIR_HU]))[0]
    labels, n = ndimage.label(air)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = 0
    if sizes.max() == 0:
        return x0, y0, x1, y1
    lung = (sizes >= 0.1 * sizes.max())[labels]
    rows, cols = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
    top, bottom = rows[0] * stride, rows[-1] * stride + stride - 1
    left, right = cols[0] * stride, cols[-1] * stride + stride - 1
    pad = _lung_box_pad(pixels.shape)
    mx = int(_LUNG_BOX_MARGIN * (right - left)) + pad
    my = int(_LUNG_BOX_MARGIN * (bottom - top)) + pad
    h, w = crop.shape
    return (x0 + max(0, left - mx), y0 + max(0, top - my),
            x0 + min(w - 1, right + mx), y0 + min(h - 1, bottom + my))
