"""A small, fast generator of bad inputs (all SYNTHETIC), one function per case.

Each case writes under a folder and returns ``(path, words)``: what to load, and words the
one-line error or warning must contain. ``REFUSED`` cases must be refused (exit 2) before
any model runs, ``WARNED`` cases are read with the warning. tests/test_bad_input.py runs
them through the library and the ``covidct`` command.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom

from conftest import build_hu_volume


def _nifti(path: Path, voxels: np.ndarray, spacing=(2.5, 0.7, 0.7)) -> Path:
    from covidct.scan import Scan
    from covidct.scanio import write_nifti

    return write_nifti(Scan(voxels.astype(np.float32), spacing, "HU"), path)


def _series(folder: Path, shape=(16, 64, 64), spacing=(2.5, 0.7, 0.7), **kwargs) -> list[Path]:
    from covidct.scanio import write_dicom_series

    return write_dicom_series(build_hu_volume(shape, spacing), folder, **kwargs)


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG that claims ``width`` x ``height`` pixels (what a decompression bomb does)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                     chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))
    return path


# Refused -------------------------------------------------------------------------------

def all_nan_nifti(tmp: Path):
    return _nifti(tmp / "nan.nii.gz", np.full((8, 32, 32), np.nan)), "100.0% of the voxels are not finite"


def many_nan_voxels(tmp: Path):
    voxels = build_hu_volume((16, 64, 64)).voxels
    voxels[:, :8] = np.inf  # an eighth of every slice
    return _nifti(tmp / "inf.nii.gz", voxels), "of the voxels are not finite"


def nan_rescale_slope(tmp: Path):
    files = _series(tmp / "s")
    for f in files:
        _edit(f, lambda ds: setattr(ds, "RescaleSlope", "NaN"))
    return tmp / "s", "RescaleSlope is nan"


def constant_air(tmp: Path):
    return _nifti(tmp / "air.nii.gz", np.full((8, 32, 32), -1000.0)), "not CT-like: 100.0% air"


def blank_black_png(tmp: Path):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp / "black.png")
    return tmp / "black.png", "not CT-like"


def blank_white_png(tmp: Path):
    from PIL import Image

    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp / "white.png")
    return tmp / "white.png", "not CT-like: 0.0% air"


def no_body(tmp: Path):
    voxels = np.full((8, 64, 64), -1000.0)
    voxels[:, :1, :] = 40.0  # a scanner table's edge, no patient: 1.6% of the picture
    return _nifti(tmp / "strip.nii.gz", voxels), "no body found"


def no_lungs(tmp: Path):
    yy, xx = np.mgrid[0:64, 0:64]
    body = ((yy - 30) / 20.0) ** 2 + ((xx - 32) / 26.0) ** 2 <= 1  # solid: no air inside
    voxels = np.where(body, 40.0, -1000.0)[None].repeat(8, axis=0)
    return _nifti(tmp / "solid.nii.gz", voxels), "no lungs found"


def huge_png(tmp: Path):
    return png_header_only(tmp / "huge.png", 20000, 20000), "accepted per slice"


def big_png(tmp: Path):
    return png_header_only(tmp / "big.png", 12000, 12000), "accepted per slice"


def too_many_voxels(tmp: Path):
    folder = tmp / "pics"
    folder.mkdir()
    for k in range(70):
        png_header_only(folder / f"p{k:03d}.png", 4096, 4096)
    return folder, "voxels accepted per scan"


def huge_dicom_header(tmp: Path):
    files = _series(tmp / "s", shape=(2, 16, 16))
    for f in files:
        _edit(f, lambda ds: (setattr(ds, "Rows", 30000), setattr(ds, "Columns", 30000)))
    return tmp / "s", "accepted per slice"


def fifo_alone(tmp: Path):
    import os

    os.mkfifo(tmp / "x.dcm")
    return tmp / "x.dcm", "not a regular file"


def corrupt_compressed_dicom(tmp: Path):
    from pydicom.uid import RLELossless

    files = _series(tmp / "s", shape=(4, 32, 32))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    ds = pydicom.dcmread(files[1])
    raw = bytearray(ds.PixelData)
    start = raw.find(b"\xfe\xff\x00\xe0", 8) + 8  # the RLE header of the first fragment
    raw[start:start + 8] = (9).to_bytes(4, "little") + (0xFFFFFF).to_bytes(4, "little")
    ds.PixelData = bytes(raw)
    ds.save_as(files[1])
    return tmp / "s", "file 2 of 4 in name order: cannot decode the pixel data"


def large_slice_gap(tmp: Path):
    files = _series(tmp / "s", shape=(8, 32, 32), spacing=(1.0, 0.7, 0.7))
    for f in files[4:]:
        _edit(f, lambda ds: setattr(ds, "ImagePositionPatient",
                                    [*map(float, ds.ImagePositionPatient[:2]),
                                     float(ds.ImagePositionPatient[2]) + 20.0]))
    return tmp / "s", "a gap of 21.0 mm between slices 4 and 5 of 8"


REFUSED = {f.__name__: f for f in (
    all_nan_nifti, many_nan_voxels, nan_rescale_slope, constant_air, blank_black_png,
    blank_white_png, no_body, no_lungs, huge_png, big_png, too_many_voxels, huge_dicom_header,
    fifo_alone, corrupt_compressed_dicom, large_slice_gap)}


# Read, with a warning ------------------------------------------------------------------

def few_nan_voxels(tmp: Path):
    voxels = build_hu_volume((16, 64, 64)).voxels
    voxels[3, 10, 10:20] = np.nan
    voxels[5, 0, 0] = np.inf
    return _nifti(tmp / "fewnan.nii.gz", voxels), "11 voxels (0.017%) were not finite"


def nifti_without_voxel_size(tmp: Path):
    import nibabel as nib

    voxels = build_hu_volume((16, 64, 64)).voxels
    image = nib.Nifti1Image(voxels.transpose(2, 1, 0), None)
    image.header["pixdim"][1:4] = 0
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    path = tmp / "nopixdim.nii"
    path.write_bytes(image.to_bytes())
    return path, "gives no voxel size"


def missing_slice(tmp: Path):
    files = _series(tmp / "s", shape=(12, 32, 32))
    files[5].unlink()
    return tmp / "s", "resampled on the true positions to 12 slices 2.50 mm apart"


def fifo_in_series(tmp: Path):
    import os

    _series(tmp / "s", shape=(16, 32, 32))
    os.mkfifo(tmp / "s" / "x.dcm")
    return tmp / "s", ""


WARNED = {f.__name__: f for f in (few_nan_voxels, nifti_without_voxel_size, missing_slice)}
