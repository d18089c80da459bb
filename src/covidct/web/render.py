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
from ..explain.infection_pictures import CMAP, FLOOR, normalised_map
from ..explain.plotting import blend_heat, resize_to
from ..covidctnet.mapback import map_on_scan_slices
from ..windowing import get_window
from .storage import write_private

#: Display presets of the viewer (covidct.windowing), for HU scans.
DISPLAY_WINDOWS = ("lung", "mediastinum")
OVERLAYS = ("none", "gradcam", "infection")


class RenderError(CovidctError):
    """A slice picture that cannot be drawn (unknown slice, overlay or window)."""

    def __init__(self, message: str, status: int = 404):
        self.status = status
        super().__init__(message)


class ViewerData:
    """One finished job's arrays (see jobs.save_viewer_arrays), the voxels memory-mapped.

    ``infection`` is CovidCTNet's infection map per scan slice, in the scan's orientation
    (:meth:`covidct.models.Model.viewer_arrays`), or None.
    """

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
        infection = stored / "infection.npy"
        self.infection = (np.load(infection, allow_pickle=False).astype(np.float32)
                          if infection.is_file() else None)
        if self.infection is not None and "overlays_on_scan" not in note:
            self.infection = _legacy_map(self.infection, self.n_slices, note["direction"],
                                         note["volume_depth"])

    def _load_archive(self, path: Path) -> None:
        """Jobs finished by covidct versions that kept one compressed viewer.npz."""
        if not path.is_file():
            raise RenderError("no slices stored for this scan")
        with np.load(path, allow_pickle=False) as data:
            self.voxels = data["voxels"]
            self.units = str(data["units"])
            self.infection = None
            if "infection" in data:
                depth = int(data["volume_depth"]) if "volume_depth" in data else 0
                self.infection = _legacy_map(data["infection"].astype(np.float32), self.n_slices,
                                             data["direction"], depth)

    @property
    def n_slices(self) -> int:
        return int(self.voxels.shape[0])

    def display(self, k: int, window: str) -> np.ndarray:
        """Slice ``k`` as 8-bit gray in the display window (pictures are shown as they are)."""
        if self.units != "HU":
            return np.asarray(self.voxels[k], dtype=np.uint8)
        return get_window(window).to_uint8(np.asarray(self.voxels[k]))

    def infection_heat(self, k: int) -> np.ndarray:
        """The infection map over slice ``k`` in [0, 1], at the slice's size."""

        heat = normalised_map(self.infection[k])
        return np.clip(resize_to(np.ascontiguousarray(heat), self.voxels.shape[1:]), 0, 1)


def _legacy_map(infection: np.ndarray, n_slices: int, direction, volume_depth: int) -> np.ndarray:
    """Jobs stored before covidct kept the map per scan slice held it on CovidCTNet's own
    (D, S, S) grid: mapped back once, by CovidCTNet's own geometry (the only method detail
    the web reads, and only for those jobs)."""
    return map_on_scan_slices(infection, n_slices, np.asarray(direction, dtype=np.float64),
                              int(volume_depth))


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
        write_private(cached, png)
        return png

    def _draw(self, data: ViewerData, k: int, result: dict[str, Any], overlay: str,
              window: str) -> np.ndarray:
        gray = data.display(k, window if window != "picture" else "lung")
        if overlay == "none":
            return np.repeat(gray[..., None], 3, axis=-1)
        if overlay == "infection":
            if data.infection is None:
                raise RenderError("no CovidCTNet infection map for this scan", 404)
            return blend_heat(gray, data.infection_heat(k), cmap=CMAP, max_alpha=0.8, floor=FLOOR)
        return blend_heat(gray, self._gradcam(data, k, result), cmap="jet", max_alpha=0.55)

    def _gradcam(self, data: ViewerData, k: int, result: dict[str, Any]) -> np.ndarray:
        """Grad-CAM of the scan-level call's class on slice ``k``, on the full slice: the
        served model's own :meth:`slice_heat` (its pre-processing, not a copy of it)."""
        model = self.models.with_overlay("gradcam")
        called = None if model is None else (result.get("methods") or {}).get(model.method)
        if called is None:
            raise RenderError("no slice classifier result for this scan (Grad-CAM needs it)", 404)
        class_index = list(called["probabilities"]).index(called["label"])
        with self.models.locks[model.method]:
            return model.slice_heat(np.asarray(data.voxels[k]), data.units == "HU", class_index)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
