"""Where CovidCTNet's arrays sit over the scan: its infection map mapped back to scan slices.

Pre-processing turns the scan to canonical orientation (:func:`.preprocess.canonical_flips`,
z towards the head), resamples z to ``volume_depth`` 1-mm slices with aligned corners, and the
infection map resizes that to ``map_depth`` slices with pixel centres aligned. The functions
here retrace those steps in one place, so that callers get results in the scan's own
geometry (as lungmask returns its mask on the caller's grid) instead of redoing the
arithmetic: :meth:`CovidCTNet.predict` puts the map per scan slice into its Prediction
(``maps["infection_on_scan"]``), which the web viewer and its slice scores use; DICOM SEG
and key images use the linear resampling :func:`.infection.map_to_scan_grid` (``scan_maps``).
"""
from __future__ import annotations

import numpy as np

from .preprocess import canonical_flips


def volume_slice_of(map_index: int, map_depth: int, volume_depth: int) -> int:
    """The pre-processed volume slice under infection-map slice ``map_index``."""
    position = (map_index + 0.5) * volume_depth / map_depth - 0.5
    return int(np.clip(round(position), 0, volume_depth - 1))


def map_slice_of(k: int, n_slices: int, direction: np.ndarray, volume_depth: int,
                 map_depth: int) -> int:
    """The infection-map slice nearest to scan slice ``k`` (of ``n_slices``)."""
    if canonical_flips(direction)[0]:
        k = n_slices - 1 - k
    v = k * (volume_depth - 1) / max(1, n_slices - 1)
    d = (v + 0.5) * map_depth / max(1, volume_depth) - 0.5
    return int(np.clip(round(d), 0, map_depth - 1))


def map_on_scan_slices(infection: np.ndarray, n_slices: int, direction: np.ndarray,
                       volume_depth: int) -> np.ndarray:
    """(n_slices, S, S): for each scan slice, the map slice over it (nearest), turned back
    into the scan's in-plane orientation. In plane it still spans the whole field at the
    map's S x S, so a viewer only scales it to the slice's size."""
    infection = np.asarray(infection)
    index = [map_slice_of(k, n_slices, direction, volume_depth, len(infection))
             for k in range(n_slices)]
    planes = infection[index]
    _, flip_y, flip_x = canonical_flips(direction)
    if flip_y:
        planes = planes[:, ::-1]
    if flip_x:
        planes = planes[:, :, ::-1]
    return np.ascontiguousarray(planes)
