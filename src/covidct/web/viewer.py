"""The arrays the slice viewer draws from once the upload is gone (read by render.ViewerData).

Plain ``.npy`` files under ``results/<id>/viewer/``: the scan's voxels at display resolution
and each model's :meth:`~covidct.models.Model.viewer_arrays` (one row per scan slice),
written and memory-mapped in a fraction of a second (a compressed archive of the full
volume took half the upload-to-result time).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..explain.plotting import resize_to
from .storage import FILE_MODE, write_private

#: Longest side of the slices kept for the viewer (the page shows them at most ~560 px wide).
DISPLAY_SIZE = 512

def save_viewer_arrays(folder: Path, scan, predictions: dict[str, Any], models: Any) -> Path:
    """What the slice viewer needs once the upload is gone, as ``.npy`` files and a JSON note.

    The voxels are kept at display resolution (longer side at most DISPLAY_SIZE): int16 HU,
    or the pictures' uint8 gray. Uncompressed, so writing them costs a file copy and reading
    one slice later is a memory-mapped page or two, not the whole volume's decompression.
    Each model's :meth:`~covidct.models.Model.viewer_arrays` (one row per scan slice, e.g.
    CovidCTNet's infection map) go beside them as float16, named by the model's overlay.
    """
    voxels = display_voxels(scan.voxels, scan.is_hu)
    arrays = {"voxels": voxels}
    note = {"units": scan.units, "direction": np.asarray(scan.direction).tolist(),
            "spacing": list(scan.spacing), "scan_shape": list(scan.shape),
            "overlays_on_scan": []}
    for method, prediction in predictions.items():
        for name, array in models.get(method).viewer_arrays(prediction).items():
            arrays[name] = np.asarray(array, dtype=np.float16)
            note["overlays_on_scan"].append(name)
    target = folder / "viewer"
    for name, array in arrays.items():
        _save_npy(target / f"{name}.npy", array)
    # Written last: a viewer folder without it is incomplete.
    write_private(target / "viewer.json", json.dumps(note).encode())
    return target


def display_voxels(voxels: np.ndarray, is_hu: bool) -> np.ndarray:
    """The volume with each slice shrunk to a longer side of at most DISPLAY_SIZE."""
    n, rows, cols = voxels.shape
    scale = DISPLAY_SIZE / max(rows, cols)
    dtype = np.int16 if is_hu else np.uint8
    low, high = (-32768, 32767) if is_hu else (0, 255)
    shape = (rows, cols) if scale >= 1 else (max(1, round(rows * scale)), max(1, round(cols * scale)))
    out = np.empty((n, *shape), dtype=dtype)
    # Slice by slice: whole-volume temporaries (three float32 copies of a 150-slice 512^2
    # scan) cost more in fresh memory pages than the rounding itself.
    plane = np.empty(shape, dtype=np.float32)
    for k in range(n):
        np.rint(voxels[k] if scale >= 1 else resize_to(voxels[k], shape), out=plane)
        out[k] = np.clip(plane, low, high, out=plane)
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_path(path) as tmp:
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
