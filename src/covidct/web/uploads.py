"""Check an upload before any work is queued, and store it under neutral names.

Everything here is cheap (file headers, the zip's central directory, the NIfTI header), so a
bad upload is answered at once with 413 or 422 and a one-line reason instead of becoming a
failed job. Original file names are never kept: they may carry a patient's name, so files
are stored as ``scan.zip``, ``scan.nii.gz`` or ``00001.png`` ... in upload (natural) order,
and a zip's members are unpacked as ``member-00001.dcm`` ... in the order of their names, so
messages name them by position. Pictures' sizes are read from their headers: a slice over
the pixel limit is refused (413) before anything decodes it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

from ..errors import CovidctError, ScanError
from ..scanio.common import NIFTI_SUFFIXES, SCAN_SUFFIXES, ZIP_SUFFIX, natural_key, suffix_of

#: Upload kinds, as stored in the job record.
KIND_ZIP, KIND_NIFTI, KIND_PICTURES, KIND_DICOM = "dicom-zip", "nifti", "pictures", "dicom"

_CHUNK = 1024 * 1024
#: Name stem of an unpacked zip member (``member-00003.dcm``: the third file by name).
MEMBER_PREFIX = "member-"
#: Suffixes a zip member keeps when unpacked (the readers tell pictures and NIfTI by them).
_KEPT_SUFFIXES = tuple(s for s in SCAN_SUFFIXES if s != ZIP_SUFFIX)
_PICTURE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",),
                  ".jpeg": (b"\xff\xd8\xff",)}


class UploadError(CovidctError):
    """An upload refused before it became a job; ``status`` is the HTTP answer (413 or 422)."""

    def __init__(self, message: str, status: int = 422, path: str | None = None):
        self.status = status
        super().__init__(message, path)


@dataclass
class Upload:
    """A checked upload in its private folder: what ``load_scan`` should read."""

    folder: Path          # the job's private work folder (removed when the job ends)
    scan_path: Path       # file or folder to pass to load_scan
    kind: str
    n_files: int
    n_bytes: int


def save_upload(files: Iterable[tuple[str, BinaryIO]], work_root: Path, *, max_bytes: int,
                max_slices: int, max_unpacked_bytes: int, max_pixels: int) -> Upload:
    """Copy the uploaded files into a new private folder under ``work_root`` and check them.

    Raises UploadError (and leaves nothing behind) when the upload is refused.
    """
    work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix="job-", dir=work_root))  # mode 0700
    try:
        return _save_and_check(list(files), folder, max_bytes, max_slices, max_unpacked_bytes,
                               max_pixels)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def size_limit_text(max_bytes: int) -> str:
    """The size limit as the user set it (--max-upload-mb)."""
    size = f"{max_bytes // 2**20} MiB" if max_bytes % 2**20 == 0 else f"{max_bytes:,} bytes"
    return f"upload is larger than the {size} limit"


def _save_and_check(files: list[tuple[str, BinaryIO]], folder: Path, max_bytes: int,
                    max_slices: int, max_unpacked_bytes: int, max_pixels: int) -> Upload:
    if not files:
        raise UploadError("no file uploaded; send a zip of a DICOM series, a NIfTI file or "
                          "PNG/JPG slices as multipart field 'files'")
    kind = _kind_of([name for name, _ in files])
    if kind == KIND_PICTURES and len(files) > max_slices:
        raise UploadError(f"{len(files)} slices uploaded, more than the {max_slices} accepted")
    inbox = folder / "upload"
    inbox.mkdir()
    ordered = sorted(files, key=lambda f: natural_key(Path(f[0] or "")))
    total = 0
    stored = []
    for number, (name, stream) in enumerate(ordered, start=1):
        suffix = suffix_of(name or "")
        target = inbox / (f"scan{suffix}" if kind in (KIND_ZIP, KIND_NIFTI)
                          else f"{number:05d}{suffix or '.dcm'}")
        total += _copy(stream, target, max_bytes - total, max_bytes)
        stored.append((name, target))
    for name, path in stored:
        _check_content(kind, name, path, max_slices, max_unpacked_bytes, max_pixels)
    scan_path = stored[0][1] if kind in (KIND_ZIP, KIND_NIFTI) else inbox
    return Upload(folder, scan_path, kind, len(stored), total)


def _kind_of(names: list[str]) -> str:
    suffixes = [suffix_of(n or "") for n in names]
    kinds = set()
    for name, suffix in zip(names, suffixes):
        if suffix == ZIP_SUFFIX:
            kinds.add(KIND_ZIP)
        elif suffix in NIFTI_SUFFIXES:
            kinds.add(KIND_NIFTI)
        elif suffix in _PICTURE_MAGIC:
            kinds.add(KIND_PICTURES)
        elif suffix in (".dcm", ".dicom", ""):
            kinds.add(KIND_DICOM)
        else:
            raise UploadError(f"file type {suffix!r} is not accepted; send a .zip of a DICOM "
                              "series, a .nii/.nii.gz file, or .png/.jpg slices")
    if len(kinds) > 1:
        raise UploadError(f"mixed upload ({', '.join(sorted(kinds))}); send one scan of one kind")
    kind = kinds.pop()
    if kind in (KIND_ZIP, KIND_NIFTI) and len(names) > 1:
        raise UploadError(f"{len(names)} files uploaded; a {kind} scan is one file")
    return kind


def _copy(stream: BinaryIO, target: Path, budget: int, max_bytes: int) -> int:
    """Copy in chunks, stopping as soon as the upload exceeds its size budget."""
    written = 0
    with open(target, "wb") as out:
        while chunk := stream.read(_CHUNK):
            written += len(chunk)
            if written > budget:
                raise UploadError(size_limit_text(max_bytes), status=413)
            out.write(chunk)
    if written == 0:
        raise UploadError("an uploaded file is empty")
    return written


def _check_content(kind: str, name: str, path: Path, max_slices: int, max_unpacked: int,
                   max_pixels: int) -> None:
    label = _safe_label(name)
    with open(path, "rb") as fh:
        head = fh.read(352)
    if kind == KIND_PICTURES:
        if not head.startswith(_PICTURE_MAGIC[suffix_of(name)]):
            raise UploadError(f"{label} is not a {suffix_of(name)[1:].upper()} picture")
        _check_picture(path, label, max_pixels)
    elif kind == KIND_ZIP:
        _check_zip(path, label, max_slices, max_unpacked)
    elif kind == KIND_NIFTI:
        _check_nifti(path, label, max_slices, max_pixels)
    elif head[128:132] != b"DICM":
        raise UploadError(f"{label} is not a DICOM file (no DICM preamble)")
    else:
        _check_dicom_size(path, label, max_pixels)


def _safe_label(name: str) -> str:
    """How an uploaded file is named in messages: its suffix only (names may carry PHI)."""
    suffix = suffix_of(name or "")
    return f"the uploaded {suffix[1:] if suffix else 'extension-less'} file"


def _check_picture(path: Path, label: str, max_pixels: int) -> None:
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                _check_pixels(image.size, label, max_pixels)
                image.verify()
    except Image.DecompressionBombError:
        raise UploadError(f"{label} claims more pixels than any slice may have (over "
                          f"{max_pixels:,}); refused", status=413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"{label} is corrupt or truncated ({type(exc).__name__})") from None


def _check_dicom_size(path: Path, label: str, max_pixels: int) -> None:
    """Rows x Columns from the header (a broken file is left to the reader to describe)."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        size = (int(header.get("Columns") or 0), int(header.get("Rows") or 0))
    except Exception:  # pydicom raises many types for broken headers
        return
    _check_pixels(size, label, max_pixels)


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise UploadError(f"{label} is {width}x{height} pixels, more than the {max_pixels:,} "
                          "pixels a slice may have", status=413)


def _check_zip(path: Path, label: str, max_slices: int, max_unpacked: int) -> None:
    from ..errors import ScanError
    from ..scanio import archive

    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            _check_entries(members, path)
            archive._check_members(members, path, max_unpacked)
    except zipfile.BadZipFile:
        raise UploadError(f"{label} is not a readable zip archive") from None
    except ScanError as exc:  # too many entries, zip bombs
        raise UploadError(exc.message) from None
    files = [m for m in members if not _is_litter(m.filename)]
    if not files:
        raise UploadError(f"{label} holds no files")
    if len(files) > max_slices:
        raise UploadError(f"zip holds {len(files)} files, more than the {max_slices} slices accepted")


def _check_entries(members: list[zipfile.ZipInfo], path: Path) -> None:
    """Entries escaping the folder and links, named by position (names may carry PHI)."""
    import stat

    from ..scanio import archive

    for number, member in enumerate(_in_name_order(members), start=1):
        try:
            archive._safe_name(member, path)
        except ScanError:
            raise UploadError(f"zip entry {number} (in name order) would be written outside "
                              "the folder; refused") from None
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UploadError(f"zip entry {number} (in name order) is a symbolic link; refused")


def _in_name_order(members: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    return sorted(members, key=lambda m: natural_key(Path(m.filename.replace("\\", "/"))))


def unpack_zip(path: Path, target: Path, max_pixels: int) -> Path:
    """Unpack the checked zip's files into ``target`` as ``member-00001.dcm`` ... (name order).

    Folders are flattened and names dropped, so no reader's message can repeat them; the
    readers group DICOM files by series and order pictures by these (natural-order) names.
    A DICOM file or picture whose header declares slices over ``max_pixels`` is refused
    before any reader decodes it.
    """
    target.mkdir(mode=0o700)
    with zipfile.ZipFile(path) as zf:
        members = [m for m in zf.infolist() if not m.is_dir() and not _is_litter(m.filename)]
        for number, member in enumerate(_in_name_order(members), start=1):
            suffix = suffix_of(member.filename)
            out = target / f"{MEMBER_PREFIX}{number:05d}{suffix if suffix in _KEPT_SUFFIXES else ''}"
            _unpack_member(zf, member, out, number)
            _check_member_size(out, f"zip entry {number} (in name order)", max_pixels)
    path.unlink()  # the archive is not needed any more
    return target


def _unpack_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, out: Path, number: int) -> None:
    """Copy in chunks and stop at the declared size: a lying header cannot fill the disk."""
    written = 0
    try:
        with zf.open(member) as src, open(out, "wb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > member.file_size:
                    raise ScanError(f"zip entry {number} (in name order) is larger than declared")
                dst.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            EOFError, OSError) as exc:
        raise ScanError(f"cannot unpack zip entry {number} (in name order): "
                        f"{type(exc).__name__}") from None


def _check_member_size(path: Path, label: str, max_pixels: int) -> None:
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        _check_dicom_size(path, label, max_pixels)
    elif suffix_of(path.name) in _PICTURE_MAGIC:
        _check_picture(path, label, max_pixels)


def _is_litter(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return "__MACOSX" in parts or parts[-1].startswith(".")


def _check_nifti(path: Path, label: str, max_slices: int, max_pixels: int) -> None:
    import nibabel as nib
    import numpy as np

    try:
        image = nib.load(os.fspath(path))
        shape = image.shape
        axes = nib.aff2axcodes(image.affine)
    except Exception as exc:  # nibabel raises many types for bad headers
        raise UploadError(f"{label} is not a readable NIfTI file ({type(exc).__name__})") from None
    if len(shape) < 3 or any(int(n) < 1 for n in shape[:3]):
        raise UploadError(f"{label} is not a 3D volume (shape {tuple(shape)})")
    # The axial slice count is the length of the axis running head-foot (S or I).
    vertical = [i for i, code in enumerate(axes[:3]) if code in ("S", "I")]
    n_slices = int(shape[vertical[0]]) if vertical else int(np.max(shape[:3]))
    if n_slices > max_slices:
        raise UploadError(f"NIfTI volume has {n_slices} axial slices, more than the "
                          f"{max_slices} accepted")
    in_plane = [int(n) for i, n in enumerate(shape[:3]) if i != (vertical[0] if vertical else
                                                                  int(np.argmax(shape[:3])))]
    _check_pixels((in_plane[0], in_plane[1]), label, max_pixels)
