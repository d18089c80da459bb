"""From a scan to what the slice classifier reads: which slices, and each as 8 bits in the
lung window cropped to its body box (see :mod:`.model` for the whole prediction)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..checks import check_scan
from ..covidx import LAYOUT, covidx_paths
from ..errors import DatasetError
from ..lungs import LUNG_SLICE_MM2, scan_lungs
from ..scan import Scan
from ..windowing import COVIDX_LUNG, Window, body_box

#: At most this many lung slices are scored per scan (see the module docstring).
MAX_SLICES = 32


def aggregation_rule(max_slices: int = MAX_SLICES, rule: str = "mean", k: int | None = None,
                     found: bool = True) -> str:
    """The patient-level rule, in words, for prediction outputs (``k``: rule "topk"'s)."""
    scored = (f"the scored lung slices (slices whose lung-mask area is >= {LUNG_SLICE_MM2:.0f} "
              f"mm^2; at most {max_slices}, evenly spaced)" if found else
              "all slices (no slice passed the lung-slice rule, so none was excluded)")
    if rule == "topk":
        return (f"mean of per-slice class probabilities over the {k} most abnormal (least "
                f"likely Normal) of {scored}")
    return f"mean of per-slice class probabilities over {scored}"


def lung_slices(scan: Scan, max_slices: int = MAX_SLICES) -> tuple[np.ndarray, bool]:
    """Indices of the slices to score, and whether the lung mask found any (see module doc).
    The scan must first pass :func:`covidct.checks.check_scan` (plausible, lungs found)."""
    check_scan(scan)
    chosen = scan_lungs(scan).lung_slices()
    found = chosen.size > 0
    if not found:
        chosen = np.arange(scan.n_slices)
    if chosen.size > max_slices:
        chosen = chosen[np.round(np.linspace(0, chosen.size - 1, max_slices)).astype(int)]
    return chosen, found


def scan_body_box(pixels: np.ndarray, window: Window = COVIDX_LUNG) -> tuple[int, int, int, int]:
    """:func:`covidct.windowing.body_box` of an 8-bit slice, found at about 256 px for speed.

    The box is scaled back to full resolution (within a pixel or two of the full-size
    result at 512 px, i.e. well under 1% of the field) in a quarter of the time.
    """
    stride = max(1, min(pixels.shape) // 256)
    x0, y0, x1, y1 = body_box(pixels[::stride, ::stride], "windowed", window)
    h, w = pixels.shape
    return (x0 * stride, y0 * stride, min(w - 1, x1 * stride + stride - 1),
            min(h - 1, y1 * stride + stride - 1))


def covidx_split(data: str | Path, split: str, check: bool = False) -> tuple[Path, Path]:
    """(split file, images folder) of a COVIDx-layout folder (:data:`covidct.covidx.LAYOUT`) or
    of one split file; ``check``: a folder without the split file is a DatasetError."""
    split_file, images = covidx_paths(data, split)
    if check and Path(data).is_dir() and not split_file.is_file():
        raise DatasetError(f"no {split_file.name} in the dataset folder (COVIDx layout: {LAYOUT})", data)
    return split_file, images


def slice_pixels(values: np.ndarray, is_hu: bool, window: Window = COVIDX_LUNG) -> np.ndarray:
    """One slice as the slice classifier reads it: HU through its window (the COVIDx lung
    window) to 8 bits; 8-bit pictures as they are."""
    if is_hu:
        return window.to_uint8(values)
    return np.asarray(values, dtype=np.uint8)


def scan_summary(scan: Scan) -> dict[str, Any]:
    """De-identified facts about a scan for prediction outputs (:meth:`Scan.deidentified`)."""
    out = scan.deidentified(metadata=True)
    if not scan.is_hu:
        out["input"] = "8-bit picture used as is (assumed lung-windowed like COVIDx CT)"
    return out
