"""CovidCTNet pre-processing: a CT scan -> a (z, 128, 128) float32 volume in [0, 1].

The method resamples to 1 x 1 x 1 mm, clips HU to [-1000, 400], min-max scales to [0, 1]
and resizes every slice to 128 x 128 keeping z. Resampling to 1 mm in-plane and then
resizing is two interpolations of which the first is thrown away, so the fast path goes
straight to the final grid: per chunk of slices the window is applied and the slices are
resized (bilinear, anti-aliased like scikit-image's resize) to 128 x 128, then z is
linearly resampled to 1 mm. Both steps are linear and act on different axes, so their
order does not matter; the result matches the method's route (``preprocess_reference``)
within interpolation tolerance at a fraction of the cost.
"""
from __future__ import annotations

import numpy as np

from ..errors import ScanError
from ..lungs import resample_nearest
from ..scan import Scan
from ..windowing import COVIDX_LUNG, get_window
from .settings import VolumeSettings

PURPOSE = "CovidCTNet"
#: Slices windowed and resized per step: bounds the float32 working copy of the scan.
_CHUNK = 32

WINDOWED_WARNING = (
    "scan is an 8-bit windowed picture stack, not Hounsfield units: HU were approximated "
    "with the COVIDx lung window ([-1350, 150] HU), so densities above 150 HU are saturated")


def check_scan(scan: Scan) -> list[str]:
    """Refuse scans CovidCTNet cannot read; return warnings for those it reads approximately."""
    modality = str(scan.metadata.get("modality", "CT") or "CT").upper()
    if modality != "CT":
        raise ScanError(f"{PURPOSE} needs a CT scan, but this series' modality is {modality}",
                        scan.source)
    scan.require_volume(PURPOSE)
    scan.require_axial(PURPOSE)
    warnings = []
    if not scan.is_hu:
        warnings.append(WINDOWED_WARNING)
    if not scan.geometry_known:
        warnings.append("scan has no voxel spacing: 1 x 1 x 1 mm was assumed")
    return warnings


def canonical_flips(direction: np.ndarray) -> tuple[bool, bool, bool]:
    """Which of the (z, y, x) array axes run against LPS (x to patient left, y to posterior,
    z to head), so every volume reaches the network in one anatomical orientation."""
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    flips = []
    for column in (2, 1, 0):  # array axes z, y, x are direction columns 2, 1, 0
        axis = direction[:, column]
        flips.append(bool(axis[int(np.argmax(np.abs(axis)))] < 0))
    return tuple(flips)  # type: ignore[return-value]


def hu_view(scan: Scan) -> np.ndarray:
    """The voxels in canonical orientation (a view, no copy)."""
    voxels = scan.voxels
    for axis, flip in enumerate(canonical_flips(scan.direction)):
        if flip:
            voxels = np.flip(voxels, axis=axis)
    return voxels


def _to_unit(chunk: np.ndarray, units: str, window_name: str) -> np.ndarray:
    hu = COVIDX_LUNG.from_uint8(chunk) if units == "windowed" else chunk
    unit = get_window(window_name).to_unit(hu)
    return np.fmax(unit, 0.0, out=unit)  # NaN (missing data) -> 0; fmax skips NaN


def output_depth(n_slices: int, slice_spacing: float, settings: VolumeSettings) -> int:
    """Slices after resampling to ``spacing_mm`` (the method's round(z * spacing))."""
    return max(2, int(round(n_slices * slice_spacing / settings.spacing_mm)))


def _plane_grids(shape: tuple[int, int], spacing: tuple[float, float],
                 settings: VolumeSettings) -> list[tuple[int, int]]:
    """In-plane sizes to interpolate through: straight to S x S, unless the field of view is
    under S mm, where the method's 1-mm grid is coarser than S and limits the resolution."""
    size = settings.slice_size
    mm_grid = tuple(max(1, int(round(n * s / settings.spacing_mm))) for n, s in zip(shape, spacing))
    grids = [mm_grid] if min(mm_grid) < size and mm_grid != tuple(shape) else []
    return [g for g in grids + [(size, size)] if g != tuple(shape)]


def preprocess_volume(scan: Scan, settings: VolumeSettings = VolumeSettings()) -> np.ndarray:
    """The fast path: (round(z * sz / 1 mm), S, S) float32 in [0, 1], S = settings.slice_size."""
    check_scan(scan)
    return resample_to_grid(scan, settings, lambda chunk: _to_unit(chunk, scan.units, settings.window))


def resample_to_grid(scan: Scan, settings: VolumeSettings, values=None) -> np.ndarray:
    """``scan``'s voxels on the pre-processed grid (canonical orientation, S x S in-plane,
    ``spacing_mm`` along z), after ``values`` (a function of a float32 chunk of slices;
    default: the voxels as they are), clipped to [0, 1]. The one geometry the network sees,
    also used to bring truth masks onto it (see :mod:`covidct.covidctnet.truth`)."""
    import torch
    import torch.nn.functional as F

    voxels = hu_view(scan)
    size = settings.slice_size
    resized = np.empty((voxels.shape[0], size, size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, voxels.shape[0], _CHUNK):
            chunk = voxels[start:start + _CHUNK]
            unit = values(chunk) if values else np.asarray(chunk, dtype=np.float32)
            planes = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))[None]
            for grid in _plane_grids(voxels.shape[1:], scan.spacing[1:], settings):
                planes = F.interpolate(planes, size=grid, mode="bilinear", antialias=True,
                                       align_corners=False)
            resized[start:start + _CHUNK] = planes[0].numpy()
        depth = output_depth(voxels.shape[0], scan.spacing[0], settings)
        stack = torch.from_numpy(resized)[None, None]
        # align_corners: the first and last slices stay where they are, as scipy's zoom does.
        volume = F.interpolate(stack, size=(depth, size, size), mode="trilinear", align_corners=True)
    return np.clip(volume[0, 0].numpy(), 0.0, 1.0)


def preprocess_reference(hu: np.ndarray, spacing: tuple[float, float, float],
                         settings: VolumeSettings = VolumeSettings()) -> np.ndarray:
    """The method's route, kept as the benchmark baseline and the fast path's test oracle:
    scipy zoom (linear) of the whole HU volume to 1 mm, clip and scale, then scikit-image's
    anti-aliased resize of every slice to S x S."""
    from scipy import ndimage
    from skimage.transform import resize

    hu = np.asarray(hu, dtype=np.float32)
    spacing_arr = np.asarray(spacing, dtype=float)
    new_shape = np.round(np.asarray(hu.shape) * spacing_arr / settings.spacing_mm)
    factors = new_shape / np.asarray(hu.shape)
    resampled = ndimage.zoom(hu, factors, order=1, mode="nearest")
    unit = get_window(settings.window).to_unit(resampled)
    size = settings.slice_size
    return np.stack([resize(s, (size, size), order=1, anti_aliasing=True, preserve_range=True)
                     for s in unit]).astype(np.float32)


def resize_depth(volume: np.ndarray, depth: int) -> np.ndarray:
    """Resize along z only (linear, anti-aliased when shrinking), as the method's
    ``skimage.transform.resize(x, (50, 128, 128))`` does to the stacked infection maps."""
    from skimage.transform import resize

    volume = np.asarray(volume, dtype=np.float32)
    if volume.shape[0] == depth:
        return volume
    return resize(volume, (depth, *volume.shape[1:]), order=1, anti_aliasing=True,
                  preserve_range=True).astype(np.float32)


def lung_grid(mask, scan: Scan, shape: tuple[int, ...]) -> np.ndarray:
    """The lung mask (0/1 float32) on the network's grid: canonical orientation, then
    nearest-neighbour resampling to ``shape`` (both span the whole scan)."""
    labels = mask.labels
    for axis, flip in enumerate(canonical_flips(scan.direction)):
        if flip:
            labels = np.flip(labels, axis=axis)
    # Resampled first, compared after: the same mask without a scan-sized boolean copy.
    return (resample_nearest(labels, tuple(shape)) > 0).astype(np.float32)
