"""Pieces every reader shares: warnings that travel with the scan, UID hashing, orientation."""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from ..constants import SYNTHETIC_TAG
from ..privacy import show_paths

log = logging.getLogger("covidct.scanio")

#: Picture suffixes read as already-windowed 8-bit slices.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ZIP_SUFFIX = ".zip"
#: Files that can hold a whole 3D scan (a DICOM series zipped, NIfTI, or one multi-frame DICOM file).
VOLUME_SUFFIXES = DICOM_SUFFIXES + (ZIP_SUFFIX,) + NIFTI_SUFFIXES
#: Every file :func:`covidct.scanio.load_scan` reads by its name (a picture is a one-slice scan).
SCAN_SUFFIXES = VOLUME_SUFFIXES + PICTURE_SUFFIXES

#: How close to a patient axis a slice normal must be to name its plane (cos 35 degrees),
#: so that tilted-gantry axial series still count as axial.
_PLANE_COS = 0.82


class Notes:
    """Warnings about one scan: logged once and kept in ``metadata["warnings"]``.

    Real exports are messy; a missing optional tag should be visible to the user and to
    whoever reads the result later, without stopping the run.
    """

    def __init__(self, source: str | Path):
        self.source = str(source)
        self.items: list[str] = []

    def warn(self, message: str) -> None:
        if message not in self.items:
            self.items.append(message)
            log.warning("%s: %s", self.source if show_paths() else "warning", message)


def uid_hash(uid: str | None) -> str | None:
    """First 12 hex digits of sha256(UID): lets users tell series apart without the UID itself."""
    if not uid:
        return None
    return hashlib.sha256(str(uid).encode("ascii", "replace")).hexdigest()[:12]


def orientation_of(normal: np.ndarray) -> str:
    """The plane a slice lies in, from its unit normal in patient (LPS) coordinates."""
    n = np.abs(np.asarray(normal, dtype=float))
    axis = int(np.argmax(n))
    if n[axis] < _PLANE_COS:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def is_synthetic_text(*texts: object) -> bool:
    return any(SYNTHETIC_TAG in str(t) for t in texts if t)


def natural_key(path: str | Path) -> list:
    """Sort key where img2 < img10 (digit runs compare as numbers; letters ignore case)."""
    parts = re.split(r"(\d+)", str(path).lower())
    return [int(p) if p.isdigit() else p for p in parts]


def suffix_of(path: str | Path) -> str:
    """The file type suffix, lower case; ``.nii.gz`` counts as one."""
    path = Path(path)
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def without_scan_suffix(name: str) -> str:
    """A file name without its scan suffix (``a.nii.gz`` -> ``a``); other names unchanged."""
    suffix = suffix_of(name)
    return name[: -len(suffix)] if suffix and suffix in SCAN_SUFFIXES else name


def looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 preamble, or a DICOM suffix (for old files written without preamble).

    Only regular files are opened (a FIFO named x.dcm would block the read forever)."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES


#: Pixel limits, checked from headers before any pixel is decoded: a 140 KB PNG can claim
#: 12000 x 12000 pixels and a DICOM header any size. 8192 x 8192 per slice is twice the
#: largest CT matrix in use; 2^30 voxels per scan is 4 GiB as float32 (a 2000-slice
#: 512 x 512 series has about half of that).
MAX_SLICE_PIXELS = 8192 * 8192
MAX_SCAN_VOXELS = 2 ** 30


def check_pixel_count(rows: int, cols: int, slices: int, where: str | Path | None,
                      what: str = "") -> None:
    """Refuse slices or scans above the documented pixel limits, before decoding them."""
    from ..errors import ScanError

    prefix = f"{what}: " if what else ""
    if rows * cols > MAX_SLICE_PIXELS:
        raise ScanError(f"{prefix}slice of {cols}x{rows} pixels is larger than the "
                        f"{MAX_SLICE_PIXELS:,} pixels accepted per slice", where)
    if rows * cols * slices > MAX_SCAN_VOXELS:
        raise ScanError(f"{prefix}scan of {slices} slices of {cols}x{rows} pixels is larger than "
                        f"the {MAX_SCAN_VOXELS:,} voxels accepted per scan", where)


# Library messages ----------------------------------------------------------------------

_STDERR_LOCK = threading.Lock()
#: Quoted values, UIDs, long digit runs and links: what a library message may carry of a
#: patient's header, removed before the message is summarised.
_VALUE_PATTERNS = (re.compile(r"'[^']*'|\"[^\"]*\""), re.compile(r"<[^>]*>|https?://\S+"),
                   re.compile(r"\b\d[\d.\-^]{5,}\b"))


def scrub(message: str) -> str:
    """A library message without the values it quotes (UIDs, names, dates)."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else ""
    for pattern in _VALUE_PATTERNS:
        text = pattern.sub("...", text)
    return text[:120]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def library_messages(notes: Notes):
    """Collect pydicom's warnings and log lines (one per file, with raw UIDs) and report them
    once, as a count and one scrubbed example, in the scan's warnings."""
    logger = logging.getLogger("pydicom")
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    failed = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        failed = False
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        messages = handler.messages + [str(w.message) for w in caught]
        if messages and not failed:  # on failure the one-line error says what matters
            kinds = sorted({scrub(m) for m in messages})
            notes.warn(f"the DICOM reader reported {len(messages)} problem(s) in the files "
                       f"({len(kinds)} kind(s), e.g. {kinds[0]!r}; values not shown)")


@contextlib.contextmanager
def quiet_stderr():
    """Silence what C libraries (GDCM, image codecs) print to file descriptor 2 while the
    block runs: covidct reports a failure itself, in one line. Shown with --debug."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all
            yield
            return
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
