"""Slice pictures for the viewer: a display window, and optionally a heat map over it.

Overlays come from :mod:`covidct.explain`: Grad-CAM of the slice classifier (on the slice
pre-processed exactly as the classifier saw it: lung window, automatic body box) and
CovidCTNet's infection map (its map slice under the scan slice, drawn on the shared scale).
Pictures are drawn once per (slice, window, overlay) and kept next to the job's result.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CovidctError
from ..windowing import COVIDX_LUNG, get_window

#: Display presets of the viewer (covidct.windowing), for HU scans.
DISPLAY_WINDOWS = ("lung", "mediastinum")
OVERLAYS = ("none", "gradcam", "infection")


class RenderError(CovidctError):
    """A slice picture that cannot be drawn (unknown slice, overlay or window)."""

    def __init__(self, message: str, status: int = 404):
        self.status = status
        super().__init__(message)


def map_slice_of(k: int, n_slices: int, direction: np.ndarray, volume_depth: int,
                 map_depth: int) -> int:
    """The infection-map slice over scan slice ``k``.

    CovidCTNet turns the scan to canonical orientation (z towards the head), resamples z to
    ``volume_depth`` 1-mm slices with aligned corners, then resizes to ``map_depth`` with
    pixel centres aligned; this retraces those steps.
    """
    from ..volumes.preprocess import canonical_flips

    if canonical_flips(direction)[0]:
        k = n_slices - 1 - k
    v = k * (volume_depth - 1) / max(1, n_slices - 1)
    d = (v + 0.5) * map_depth / max(1, volume_depth) - 0.5
    return int(np.clip(round(d), 0, map_depth - 1))


class ViewerData:
    """One finished job's arrays (see jobs.save_viewer_arrays), the voxels memory-mapped."""

    def __init__(self, folder: Path):
        import json

        stored = folder / "viewer"
        self.folder = folder
        if not (stored / "viewer.json").is_file():
            self._load_archive(folder / "viewer.npz")
            return
        note = json.loads((stored / "viewer.json").read_text())
        self.voxels = np.load(stored / "voxels.npy", mmap_mode="r", allow_pickle=False)
        self.units = note["units"]
        self.direction = np.asarray(note["direction"], dtype=np.float64)
        infection = stored / "infection.npy"
        self.infection = (np.load(infection, allow_pickle=False).astype(np.float32)
                          if infection.is_file() else None)
        self.volume_depth = int(note["volume_depth"])

    def _load_archive(self, path: Path) -> None:
        """Jobs finished by covidct versions that kept one compressed viewer.npz."""
        if not path.is_file():
            raise RenderError("no slices stored for this scan")
        with np.load(path, allow_pickle=False) as data:
            self.voxels = data["voxels"]
            self.units = str(data["units"])
            self.direction = data["direction"]
            self.infection = data["infection"].astype(np.float32) if "infection" in data else None
            self.volume_depth = int(data["volume_depth"]) if "volume_depth" in data else 0

    @property
    def n_slices(self) -> int:
        return int(self.voxels.shape[0])

    def display(self, k: int, window: str) -> np.ndarray:
        """Slice ``k`` as 8-bit gray in the display window (pictures are shown as they are)."""
        if self.units != "HU":
            return np.asarray(self.voxels[k], dtype=np.uint8)
        return get_window(window).to_uint8(np.asarray(self.voxels[k]))

    def model_pixels(self, k: int) -> np.ndarray:
        """Slice ``k`` as the slice classifier reads it (COVIDx lung window)."""
        if self.units != "HU":
            return np.asarray(self.voxels[k], dtype=np.uint8)
        return COVIDX_LUNG.to_uint8(np.asarray(self.voxels[k]))

    def infection_heat(self, k: int) -> np.ndarray:
        """The infection map over slice ``k`` in [0, 1], in the scan's own orientation and size."""
        from ..explain.infection import normalised_map
        from ..explain.plotting import resize_to
        from ..volumes.preprocess import canonical_flips

        d = map_slice_of(k, self.n_slices, self.direction, self.volume_depth, len(self.infection))
        heat = normalised_map(self.infection[d])
        _, flip_y, flip_x = canonical_flips(self.direction)
        heat = heat[::-1] if flip_y else heat
        heat = heat[:, ::-1] if flip_x else heat
        return np.clip(resize_to(np.ascontiguousarray(heat), self.voxels.shape[1:]), 0, 1)


class Renderer:
    """Draws and caches slice pictures; ``models`` is the server's jobs.ModelSet."""

    def __init__(self, results_dir: Path, models: Any, keep: int = 4):
        self.results_dir = results_dir
        self.models = models
        self._data: OrderedDict[str, ViewerData] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def viewer(self, job_id: str) -> ViewerData:
        with self._lock:
            data = self._data.pop(job_id, None) or ViewerData(self.results_dir / job_id)
            self._data[job_id] = data
            while len(self._data) > self._keep:  # a few scans in memory, not every scan
                self._data.popitem(last=False)
            return data

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._data.pop(job_id, None)

    def slice_png(self, job_id: str, k: int, result: dict[str, Any], overlay: str = "none",
                  window: str = "lung") -> bytes:
        if overlay not in OVERLAYS:
            raise RenderError(f"unknown overlay {overlay!r}; choose from {', '.join(OVERLAYS)}", 422)
        if window not in DISPLAY_WINDOWS:
            raise RenderError(f"unknown window {window!r}; choose from "
                              f"{', '.join(DISPLAY_WINDOWS)}", 422)
        data = self.viewer(job_id)
        if not 0 <= k < data.n_slices:
            raise RenderError(f"slice {k} does not exist; this scan has slices 0-{data.n_slices - 1}")
        if data.units != "HU":
            window = "picture"
        cached = data.folder / "render" / f"{k:05d}-{window}-{overlay}.png"
        if cached.is_file():
            return cached.read_bytes()
        png = _png(self._draw(data, k, result, overlay, window))
        from .storage import write_private

        write_private(cached, png)
        return png

    def _draw(self, data: ViewerData, k: int, result: dict[str, Any], overlay: str,
              window: str) -> np.ndarray:
        from ..explain.plotting import blend_heat

        gray = data.display(k, window if window != "picture" else "lung")
        if overlay == "none":
            return np.repeat(gray[..., None], 3, axis=-1)
        if overlay == "infection":
            if data.infection is None:
                raise RenderError("no CovidCTNet infection map for this scan", 404)
            from ..explain.infection import CMAP, FLOOR

            return blend_heat(gray, data.infection_heat(k), cmap=CMAP, max_alpha=0.8, floor=FLOOR)
        return blend_heat(gray, self._gradcam(data, k, result), cmap="jet", max_alpha=0.55)

    def _gradcam(self, data: ViewerData, k: int, result: dict[str, Any]) -> np.ndarray:
        """Grad-CAM of the scan-level call's class on slice ``k``, pasted into the full slice."""
        from ..explain.gradcam import slice_gradcam
        from ..slices.model import scan_body_box

        model = self.models.get("bit")
        bit = (result.get("methods") or {}).get("bit")
        if model is None or bit is None:
            raise RenderError("no slice classifier result for this scan (Grad-CAM needs it)", 404)
        pixels = data.model_pixels(k)
        box = scan_body_box(pixels)
        class_index = list(bit["probabilities"]).index(bit["label"])
        with self.models.locks["bit"]:
            cam = slice_gradcam(model, pixels, box, class_index=class_index)["cam"]
        x0, y0, x1, y1 = box
        full = np.zeros(pixels.shape, dtype=np.float32)
        full[y0:y1 + 1, x0:x1 + 1] = cam
        return full


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
