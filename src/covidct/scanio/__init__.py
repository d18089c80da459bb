"""Scan input/output: one ``load_scan`` for every format, and writers for DICOM, NIfTI and PNG.

``load_scan(path)`` accepts
  * a folder of DICOM files (one series; with several, the CT series with most slices, or
    the one ``series_uid`` names, by UID or by the 12-digit hash covidct prints),
  * a single DICOM file, or a .zip of any of these (unpacked safely to a temporary folder),
  * a NIfTI file (.nii, .nii.gz), reoriented to axial (z, y, x),
  * a picture (.png, .jpg, .jpeg, .tif, .tiff) or a folder of them, in natural order.

``save_scan(scan, path)`` picks the writer from the path:
  * ``*.nii`` / ``*.nii.gz``: a NIfTI file;
  * any other path is a folder: PNG slices when the scan is windowed or the folder name ends
    in ``png`` (``slices_png/``), else a CT DICOM series.
"""
from __future__ import annotations

import importlib
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import ScanError
from ..privacy import member_label, show_paths
from ..scan import Scan
from .common import (NIFTI_SUFFIXES, PICTURE_SUFFIXES, ZIP_SUFFIX, log, looks_like_dicom, natural_key,
                     suffix_of)

__all__ = ["load_scan", "save_scan", "write_dicom_series", "write_nifti", "write_png_slices"]

#: Writers and readers are imported on first use: pydicom, nibabel and Pillow each take a
#: noticeable share of a second to import, and one call needs one of them.
_WRITERS = {"write_dicom_series": ".dicom_write", "write_nifti": ".nifti",
            "write_png_slices": ".images"}


def __getattr__(name: str):
    if name in _WRITERS:
        return _lazy(_WRITERS[name], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy(module: str, name: str):
    """A function from a submodule, imported on first use."""
    return getattr(importlib.import_module(module, __name__), name)


_KINDS = ("a DICOM file or folder, a .zip of one, NIfTI (.nii, .nii.gz) "
          "or pictures (.png, .jpg, .tif)")


def load_scan(path: str | os.PathLike, *, series_uid: str | None = None,
              keep_phi: bool = False) -> Scan:
    """Read a CT scan from any supported file or folder (see the module docstring).

    Patient name, ID, birth date and study date are read into ``scan.phi`` only with
    ``keep_phi=True``; they never enter ``scan.metadata``.
    """
    path = Path(path)
    if not path.exists():
        raise ScanError("no such file or folder", path)
    if not path.is_dir() and not path.is_file():
        raise ScanError("not a regular file or folder (a pipe, socket or device?)", path)
    if path.is_dir():
        return _load_folder(path, path, series_uid, keep_phi)
    suffix = suffix_of(path)
    if suffix == ZIP_SUFFIX:
        return _load_zip(path, series_uid, keep_phi)
    if series_uid and suffix in NIFTI_SUFFIXES + PICTURE_SUFFIXES:
        log.warning("%s: --series applies to DICOM only; ignored", path)
    if suffix in NIFTI_SUFFIXES:
        return _lazy(".nifti", "read_nifti")(path)
    if suffix in PICTURE_SUFFIXES:
        return _lazy(".images", "read_pictures")([path], path)
    if looks_like_dicom(path):
        return _lazy(".dicom", "read_dicom")([path], path, series_uid=series_uid,
                                               keep_phi=keep_phi)
    raise ScanError(f"unsupported file type; expected {_KINDS}", path)


def _load_folder(folder: Path, source: Path, series_uid: str | None, keep_phi: bool) -> Scan:
    files = _files_under(folder)
    if not files:
        raise ScanError("empty folder: no files to read", source)
    _check_readable(files, folder, source)
    dicom = [f for f in files if looks_like_dicom(f)]
    if dicom:
        _note_ignored(files, dicom, source)
        return _lazy(".dicom", "read_dicom")(dicom, source, series_uid=series_uid,
                                               keep_phi=keep_phi)
    pictures = [f for f in files if suffix_of(f) in PICTURE_SUFFIXES]
    if pictures:
        _note_ignored(files, pictures, source)
        ordered = sorted(pictures, key=lambda f: natural_key(f.relative_to(folder)))
        return _lazy(".images", "read_pictures")(ordered, source)
    volumes = [f for f in files if suffix_of(f) in NIFTI_SUFFIXES]
    if len(volumes) == 1:
        return _lazy(".nifti", "read_nifti")(volumes[0])
    if volumes:
        raise ScanError(f"{len(volumes)} NIfTI files here; give the one to read", source)
    raise ScanError(f"none of the {len(files)} files here is readable as a scan "
                    f"(e.g. {files[0].relative_to(folder)}); expected {_KINDS}", source)


def _files_under(folder: Path) -> list[Path]:
    """Regular files in the folder tree, skipping hidden ones and macOS archive litter
    (pipes, sockets and devices are skipped: reading a FIFO would wait forever)."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        found += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    regular = [f for f in found if f.is_file()]
    if len(regular) < len(found):
        log.info("%s: skipping %d entries that are not regular files",
                 folder if show_paths() else "scan", len(found) - len(regular))
    return regular


def _check_readable(files: list[Path], folder: Path, source: Path) -> None:
    """A file we cannot open may be a slice of the series: an error naming it, not a file
    quietly ignored (which would read the series with a slice missing)."""
    for index, file in enumerate(files):
        try:
            with open(file, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ScanError(f"{member_label(file, index, len(files), folder)} cannot be read "
                            f"({reason.lower()})", source) from None


def _note_ignored(files: list[Path], used: list[Path], source: Path) -> None:
    ignored = len(files) - len(used)
    if ignored:
        log.info("%s: ignoring %d file(s) of other types", source if show_paths() else "scan",
                 ignored)


@contextmanager
def _unpack_folder():
    """A private temporary folder for an archive's members, removed whatever happens.

    Its name is chosen before it exists and the removal is armed before it is made: a SIGTERM
    (raised as an exception by the CLI) that lands inside tempfile's own mkdtemp, after the
    folder exists and before anything owns it, left the unpacked copy behind (seen in CI).
    """
    root = Path(tempfile.gettempdir()) / f"covidct-zip-{secrets.token_hex(8)}"
    try:
        os.mkdir(root, 0o700)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _load_zip(path: Path, series_uid: str | None, keep_phi: bool) -> Scan:
    with _unpack_folder() as root:
        _lazy(".archive", "extract_zip")(path, root)
        try:
            scan = _load_folder(root, path, series_uid, keep_phi)
        except ScanError as exc:
            # Name the entry inside the archive, not the temporary copy.
            where = exc.path or str(path)
            if where.startswith(str(root)):
                inner = f"/{Path(where).relative_to(root)}" if show_paths() else ""
                where = f"{path}{inner}".rstrip("/.")
            raise ScanError(exc.message, where) from None
    scan.source = str(path)
    return scan


def save_scan(scan: Scan, path: str | os.PathLike) -> Path:
    """Write ``scan`` with the writer the path asks for (see the module docstring)."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        return _lazy(".nifti", "write_nifti")(scan, path)
    if suffix and not path.name.lower().endswith("png"):
        raise ScanError("cannot tell the format from the suffix; use .nii, .nii.gz or a folder "
                        "(DICOM series, or PNG slices when its name ends in 'png')", path)
    if not scan.is_hu or path.name.lower().endswith("png"):
        _lazy(".images", "write_png_slices")(scan, path)
    else:
        _lazy(".dicom_write", "write_dicom_series")(scan, path)
    return path
