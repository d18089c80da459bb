"""NIfTI (.nii, .nii.gz): read into axial (z, y, x) LPS arrays, write with the Scan's geometry.

NIfTI stores RAS+ world coordinates and any voxel axis order; DICOM and covidct use LPS.
Volumes are reoriented (axis permutation and flips only, no resampling) so that the array
axes run x -> patient left, y -> posterior, z -> superior: the same picture a standard
axial DICOM series gives, whatever tool wrote the file.
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import write_bytes
from ..constants import SYNTHETIC_TAG
from ..errors import ScanError
from ..scan import Scan
from .common import Notes, check_pixel_count, is_synthetic_text, orientation_of

#: Flips between RAS (NIfTI) and LPS (DICOM, covidct) world coordinates.
_RAS_LPS = np.diag([-1.0, -1.0, 1.0])
#: Units marks in the descrip field of covidct-written files (NIfTI has no units field).
_WINDOWED_MARK = "[covidct units=windowed]"
_HU_MARK = "[covidct units=HU]"
_INT16 = np.iinfo(np.int16)


def read_nifti(path: Path) -> Scan:
    notes = Notes(path)
    try:
        with _quiet_nibabel():  # its header fixes; covidct says what matters itself
            image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged files
        raise ScanError(f"not a readable NIfTI file ({_first_line(exc)})", path) from None
    shape = tuple(int(n) for n in image.shape) + (1, 1, 1)
    check_pixel_count(shape[1], shape[0], int(np.prod(shape[2:])), path)
    spacing_known = _spacing_known(path, notes)
    try:
        with _quiet_nibabel():
            data = np.asarray(image.dataobj)  # applies scl_slope/scl_inter when set
    except Exception as exc:
        raise ScanError(f"not a readable NIfTI file ({_first_line(exc)})", path) from None
    data = _as_3d(data, path)
    description = _description(image)
    windowed = _WINDOWED_MARK in description and data.dtype == np.uint8
    hu_known = _HU_MARK in description
    affine = np.asarray(image.affine, dtype=float)
    spacing_xyz = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing_xyz <= 0):
        raise ScanError("the NIfTI affine has a zero-length axis", path)
    direction = _RAS_LPS @ (affine[:3, :3] / spacing_xyz)
    origin = _RAS_LPS @ affine[:3, 3]
    voxels_xyz, spacing_xyz, origin, direction = _to_lps(data, spacing_xyz, origin, direction)
    # The header stores float32: rounding to 1e-6 mm gives back 0.7, not 0.699999988.
    spacing_xyz, origin, direction = (np.round(a, 6) for a in (spacing_xyz, origin, direction))
    voxels = np.ascontiguousarray(voxels_xyz.transpose(2, 1, 0))
    if not windowed:
        voxels = voxels.astype(np.float32, copy=False)
        _check_plausible_hu(voxels, notes)
    orientation = orientation_of(direction[:, 2])
    metadata = {
        "modality": "CT",
        "n_slices": int(voxels.shape[0]),
        "orientation": orientation,
        "series_description": _strip_marks(description) or None,
        # NIfTI has no units field: unless covidct wrote the file, HU is an assumption.
        "hu_assumed": not (windowed or hu_known),
        "synthetic": is_synthetic_text(description),
        "source_format": "nifti",
        "warnings": notes.items,
    }
    return Scan(voxels=voxels, spacing=tuple(spacing_xyz[::-1]),
                units="windowed" if windowed else "HU", origin=tuple(origin), direction=direction,
                orientation=orientation, geometry_known=spacing_known, source=str(path),
                metadata=metadata)


@contextlib.contextmanager
def _quiet_nibabel():
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _spacing_known(path: Path, notes: Notes) -> bool:
    """nibabel quietly turns a zero pixdim into 1 mm; without a qform or sform there is then
    no voxel size at all. Read the raw header to tell, and say so."""
    try:
        with nib.openers.ImageOpener(str(path)) as fh:
            header = nib.Nifti1Header.from_fileobj(fh, check=False)
        pixdim = np.asarray(header["pixdim"][1:4], dtype=float)
        forms = int(header["qform_code"]), int(header["sform_code"])
    except Exception:  # NIfTI-2 or an odd header: nibabel's geometry is all we have
        return True
    if forms == (0, 0) and (np.any(~np.isfinite(pixdim)) or np.any(pixdim <= 0)):
        notes.warn("the NIfTI header gives no voxel size (pixdim 0, no qform/sform): "
                   "1 mm assumed, sizes in mm are unknown")
        return False
    return True


def _as_3d(data: np.ndarray, path: Path) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ScanError(f"expected a 3D volume, got a {data.ndim}D NIfTI of shape {data.shape} "
                        "(time series or multi-channel images are not CT scans)", path)
    if np.iscomplexobj(data) or data.dtype.kind not in "uif":
        raise ScanError(f"unsupported NIfTI data type {data.dtype}", path)
    return data


def _description(image) -> str:
    raw = image.header.get("descrip") if hasattr(image.header, "get") else None
    if raw is None:
        return ""
    value = raw.item() if hasattr(raw, "item") else raw
    return value.decode("latin-1", "replace") if isinstance(value, bytes) else str(value)


def _to_lps(data: np.ndarray, spacing: np.ndarray, origin: np.ndarray,
            direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Permute and flip (x, y, z) array axes so each runs along +L, +P, +S as closely as possible.

    A lone coronal or sagittal image is left as one slice in its own plane, as DICOM stores it.
    """
    order = _nearest_axes(direction)
    flat = [a for a in range(3) if data.shape[a] == 1]
    if len(flat) == 1 and order[2] != flat[0]:
        keep = [a for a in range(3) if a != flat[0]] + flat
        return data.transpose(keep), spacing[keep], origin, direction[:, keep]
    data = data.transpose(order)
    spacing, direction = spacing[list(order)], direction[:, list(order)].copy()
    for axis in range(3):
        if direction[axis, axis] < 0:
            # Flipping moves voxel 0 to the far end of the axis.
            origin = origin + direction[:, axis] * spacing[axis] * (data.shape[axis] - 1)
            direction[:, axis] = -direction[:, axis]
            data = np.flip(data, axis=axis)
    return data, spacing, origin, direction


def _nearest_axes(direction: np.ndarray) -> list[int]:
    """order[w] = the array axis pointing most nearly along patient axis w (L, P, S)."""
    weights = np.abs(direction)
    order = [-1, -1, -1]
    for flat_index in np.argsort(-weights, axis=None):
        world, axis = divmod(int(flat_index), 3)
        if order[world] < 0 and axis not in order:
            order[world] = axis
    return order


def _strip_marks(description: str) -> str:
    return description.replace(_WINDOWED_MARK, "").replace(_HU_MARK, "").strip()


def _check_plausible_hu(voxels: np.ndarray, notes: Notes) -> None:
    if voxels.size and float(voxels.min()) >= 0:
        notes.warn("no value below 0, but air is about -1000 HU: this may not be a CT in HU")


def write_nifti(scan: Scan, path: str | os.PathLike, *, description: str = "") -> Path:
    """Write atomically; int16 when every value is a whole number in range, else float32."""
    path = Path(path)
    voxels = scan.voxels
    if scan.is_hu:
        rounded = np.rint(voxels)
        fits = voxels.size and rounded.min() >= _INT16.min and rounded.max() <= _INT16.max
        data = voxels.astype(np.int16) if fits and np.array_equal(rounded, voxels) \
            else voxels.astype(np.float32)
        mark = _HU_MARK
    else:
        data = voxels.astype(np.uint8)
        mark = _WINDOWED_MARK
    if scan.synthetic and SYNTHETIC_TAG not in description:
        description = f"{SYNTHETIC_TAG} {description}".strip()
    # descrip holds 79 characters: the marks go first so that truncation only cuts free text.
    description = f"{mark} {description}".strip()
    image = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), _affine(scan))
    image.header.set_xyzt_units("mm")
    image.header.set_qform(image.affine, code=1)
    image.header.set_sform(image.affine, code=1)
    image.header["descrip"] = description.encode("latin-1", "replace")[:79]
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    return write_bytes(path, payload)


def _affine(scan: Scan) -> np.ndarray:
    """Voxel (x, y, z) index -> RAS mm, from the Scan's LPS geometry."""
    sz, sy, sx = scan.spacing
    affine = np.eye(4)
    affine[:3, :3] = _RAS_LPS @ scan.direction @ np.diag([sx, sy, sz])
    affine[:3, 3] = _RAS_LPS @ np.asarray(scan.origin)
    return affine


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
