"""Read CT DICOM: one file, or a folder holding one or more series.

pydicom reads the headers (modality, orientation, positions, pixel-data presence) so that
slices are ordered by their position along the slice normal and problems are reported
with the file they concern. Pixels are then read by the fastest route that works:
uncompressed 16-bit slices (the common case) straight from the byte offsets pydicom
found; compressed ones (JPEG, RLE...) by SimpleITK's series reader, about twice as fast
as pydicom; pydicom decodes them only when SimpleITK fails, to name the file at fault.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import ScanError
from ..scan import Scan
from .common import Notes, is_synthetic_text, log, orientation_of, uid_hash

#: Slices closer than this along the normal are the same position (mm).
_SAME_POSITION_MM = 1e-3
#: Relative spread of slice gaps above which the series probably misses slices.
_GAP_TOLERANCE = 0.1
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate")


@dataclass
class _Header:
    """What covidct needs from one file's header, read without its pixels."""

    path: Path
    ds: Dataset

    @cached_property
    def series_uid(self) -> str:
        return str(self.ds.get("SeriesInstanceUID", ""))

    @cached_property
    def modality(self) -> str | None:
        value = str(self.ds.get("Modality", "")).strip().upper()
        return value or None

    @cached_property
    def has_pixels(self) -> bool:
        return any(k in self.ds for k in _PIXEL_KEYWORDS)

    @cached_property
    def size(self) -> tuple[int, int]:
        return int(self.ds.get("Rows", 0) or 0), int(self.ds.get("Columns", 0) or 0)

    @cached_property
    def position(self) -> np.ndarray | None:
        return _vector(self.ds.get("ImagePositionPatient"), 3)

    @cached_property
    def row_col(self) -> np.ndarray | None:
        return _vector(self.ds.get("ImageOrientationPatient"), 6)

    @cached_property
    def frames(self) -> int:
        return int(self.ds.get("NumberOfFrames", 1) or 1)


def is_directory_file(path: Path) -> bool:
    """A DICOMDIR index, which lists images but holds none."""
    return path.name.upper() == "DICOMDIR"


def read_dicom(paths: list[Path], source: Path, *, series_uid: str | None = None,
               keep_phi: bool = False) -> Scan:
    """A Scan from the given DICOM files: one series is chosen, checked, sorted and read."""
    notes = Notes(source)
    headers = _image_headers(paths, source)
    series = _choose_series(headers, series_uid, source, notes)
    series = _check_series(series, notes)
    if len(series) == 1 and series[0].frames > 1:
        return _read_multiframe(series[0], source, notes, keep_phi)
    ordered, geometry = _order_and_measure(series, source, notes)
    voxels = _read_pixels(ordered, source)
    return _make_scan(voxels, geometry, ordered[0], source, notes, keep_phi)


# Headers -------------------------------------------------------------------------------

def _image_headers(paths: list[Path], source: Path) -> list[_Header]:
    """Headers of the image files; reports, indexes and other non-image objects are set aside."""
    headers = [_read_header(p) for p in paths]
    images = [h for h in headers if not _is_non_image(h)]
    if not images:
        raise ScanError(f"no DICOM images here, only {len(headers)} non-image DICOM object(s) "
                        f"such as {headers[0].path.name} (reports, indexes)", source)
    if len(images) < len(headers):
        log.info("%s: ignoring %d non-image DICOM object(s)", source, len(headers) - len(images))
    for h in images:
        if not h.has_pixels:  # an image object without its image: cut short or damaged
            raise ScanError("DICOM file has no pixel data (not an image, or cut short)", h.path)
    return images


def _read_header(path: Path) -> _Header:
    force = not _has_preamble(path)
    try:
        # Deferring large values skips the pixels while still recording where they lie.
        ds = pydicom.dcmread(path, defer_size=1024, force=force)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ScanError(f"not a readable DICOM file ({_short(exc)})", path) from None
    if force and "SOPClassUID" not in ds and not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ScanError("not a readable DICOM file (no DICOM header found)", path)
    _check_complete(path, ds)
    return _Header(path, ds)


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"


def _check_complete(path: Path, ds: Dataset) -> None:
    """pydicom quietly drops an element cut short by the end of the file (and defers the pixels
    without reading them), so a truncated file is told by where its last element ends."""
    if not len(ds):
        raise ScanError("truncated or empty DICOM file: no data elements after the file header",
                        path)
    last = ds.get_item(max(ds.keys()), keep_deferred=True)
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return  # already decoded, or of undefined length: decoding will catch damage
    actual = os.path.getsize(path)
    if tell + length != actual:
        raise ScanError(f"truncated or damaged DICOM file (its elements end at byte "
                        f"{tell + length}, the file has {actual} bytes)", path)


def _is_non_image(header: _Header) -> bool:
    """Reports, presentation states, DICOMDIR indexes...: DICOM objects that hold no image."""
    if is_directory_file(header.path):
        return True
    sop = header.ds.get("SOPClassUID") or header.ds.get("MediaStorageSOPClassUID")
    if not sop:
        return False
    name = pydicom.uid.UID(str(sop)).name
    return name != str(sop) and "Image" not in name


# Series choice and checks --------------------------------------------------------------

def _choose_series(headers: list[_Header], wanted: str | None, source: Path,
                   notes: Notes) -> list[_Header]:
    groups: dict[str, list[_Header]] = defaultdict(list)
    for h in headers:
        groups[h.series_uid].append(h)
    if wanted:
        for uid, members in groups.items():
            if wanted in (uid, uid_hash(uid)):
                return members
        raise ScanError(f"no series {wanted!r} here; available: {_describe(groups)}", source)
    if len(groups) == 1:
        return next(iter(groups.values()))
    ct = {uid: m for uid, m in groups.items() if m[0].modality in ("CT", None)} or groups
    uid, chosen = max(ct.items(), key=lambda item: len(item[1]))
    others = {u: m for u, m in groups.items() if u != uid}
    notes.warn(f"{len(groups)} series found; using series {uid_hash(uid)} "
               f"({_describe({uid: chosen})}); others: {_describe(others)}; "
               "choose one with --series")
    return chosen


def _describe(groups: dict[str, list[_Header]]) -> str:
    parts = []
    for uid, members in groups.items():
        first = members[0]
        desc = str(first.ds.get("SeriesDescription", "")).strip()
        label = f"{uid_hash(uid) or 'no-uid'} {first.modality or '?'} {len(members)} files"
        parts.append(f"{label} {desc!r}" if desc else label)
    return "; ".join(parts)


def _check_series(series: list[_Header], notes: Notes) -> list[_Header]:
    """Refuse what cannot be a CT volume; warn about what is merely untidy."""
    modality = series[0].modality
    if modality is None:
        notes.warn("Modality tag missing; assuming CT")
    for h in series:
        if h.modality not in (None, "CT"):
            raise ScanError(f"modality is {h.modality}, not CT: covidct reads CT scans only",
                            h.path)
        if int(h.ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise ScanError("colour DICOM image; CT slices are grayscale", h.path)
    series = _drop_copies(series, notes)
    if len(series) > 1 and any(h.frames > 1 for h in series):
        odd = next(h for h in series if h.frames > 1)
        raise ScanError("a multi-frame file inside a series of files is not supported; "
                        "load it on its own", odd.path)
    rows, cols = Counter(h.size for h in series).most_common(1)[0][0]
    for h in series:
        if h.size != (rows, cols):
            raise ScanError(f"slice size {h.size[0]}x{h.size[1]} differs from the {rows}x{cols} "
                            "of the other slices; inconsistent series", h.path)
    return series


def _drop_copies(series: list[_Header], notes: Notes) -> list[_Header]:
    """The same instance saved twice (a common export artefact) is kept once."""
    seen: dict[str, _Header] = {}
    kept = []
    for h in series:
        sop = str(h.ds.get("SOPInstanceUID", ""))
        if sop and sop in seen:
            notes.warn(f"{h.path.name} is a copy of {seen[sop].path.name}; ignored")
            continue
        seen[sop] = h
        kept.append(h)
    return kept


# Geometry ------------------------------------------------------------------------------

@dataclass
class _Geometry:
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    known: bool


def _order_and_measure(series: list[_Header], source: Path,
                       notes: Notes) -> tuple[list[_Header], _Geometry]:
    first = series[0]
    row_col = _orientation_vectors(series, notes)
    row, col = row_col[:3], row_col[3:]
    normal = np.cross(row, col)
    dy, dx, known = _pixel_spacing(first, notes)
    positions = [h.position for h in series]
    if any(p is None for p in positions):
        ordered, dz, origin = _order_without_positions(series, notes)
        known = False
    else:
        depth = np.array([p @ normal for p in positions])
        order = np.argsort(depth, kind="stable")
        ordered = [series[i] for i in order]
        dz = _slice_gap(depth[order], ordered, source, notes)
        origin = ordered[0].position
        _check_alignment(ordered, normal, notes)
    direction = np.column_stack([row, col, normal])
    return ordered, _Geometry((dz, dy, dx), tuple(origin), direction, known)


def _orientation_vectors(series: list[_Header], notes: Notes) -> np.ndarray:
    row_col = series[0].row_col
    if row_col is None:
        notes.warn("ImageOrientationPatient missing; assuming axial slices")
        return np.array([1.0, 0, 0, 0, 1.0, 0])
    for h in series[1:]:
        other = h.row_col
        if other is not None and np.abs(other - row_col).max() > 1e-3:
            raise ScanError("slices of one series have different orientations", h.path)
    row, col = row_col[:3], row_col[3:]
    return np.concatenate([row / np.linalg.norm(row), col / np.linalg.norm(col)])


def _pixel_spacing(header: _Header, notes: Notes) -> tuple[float, float, bool]:
    spacing = _vector(header.ds.get("PixelSpacing"), 2)
    if spacing is None or np.any(spacing <= 0):
        notes.warn("PixelSpacing missing; assuming 1 mm pixels (sizes in mm are unknown)")
        return 1.0, 1.0, False
    return float(spacing[0]), float(spacing[1]), True


def _slice_gap(depth: np.ndarray, ordered: list[_Header], source: Path, notes: Notes) -> float:
    if len(depth) == 1:
        return _single_slice_depth(ordered[0], notes)
    gaps = np.diff(depth)
    same = np.flatnonzero(gaps < _SAME_POSITION_MM)
    if same.size:
        a, b = ordered[same[0]], ordered[same[0] + 1]
        raise ScanError(f"duplicated slice position {depth[same[0]]:.3f} mm: {a.path.name} and "
                        f"{b.path.name} (two acquisitions in one series?)", source)
    gap = float(np.median(gaps))
    if gaps.max() - gaps.min() > _GAP_TOLERANCE * gap:
        notes.warn(f"uneven slice spacing ({gaps.min():.3f}-{gaps.max():.3f} mm; slices missing?); "
                   f"using the median {gap:.3f} mm")
    return gap


def _single_slice_depth(header: _Header, notes: Notes) -> float:
    """One slice has no gap to measure: its nominal thickness is the best extent we have."""
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):
        value = header.ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    notes.warn("single slice without SliceThickness; assuming 1 mm")
    return 1.0


def _order_without_positions(series: list[_Header],
                             notes: Notes) -> tuple[list[_Header], float, tuple[float, ...]]:
    if len(series) == 1:
        notes.warn("ImagePositionPatient missing; origin unknown")
        return series, _single_slice_depth(series[0], notes), (0.0, 0.0, 0.0)
    notes.warn("ImagePositionPatient missing; slices ordered by InstanceNumber and the gap "
               "taken from SpacingBetweenSlices/SliceThickness")
    ordered = sorted(series, key=lambda h: int(h.ds.get("InstanceNumber", 0) or 0))
    return ordered, _single_slice_depth(ordered[0], notes), (0.0, 0.0, 0.0)


def _check_alignment(ordered: list[_Header], normal: np.ndarray, notes: Notes) -> None:
    """Slices stepping sideways (gantry tilt) make a sheared volume; say so."""
    if len(ordered) < 2:
        return
    step = ordered[-1].position - ordered[0].position
    cos = abs(step @ normal) / max(np.linalg.norm(step), 1e-9)
    if cos < np.cos(np.radians(1.0)):
        notes.warn(f"slices step {np.degrees(np.arccos(min(cos, 1.0))):.1f} degrees off their "
                   "normal (gantry tilt?); geometry approximated as unsheared")


# Pixels --------------------------------------------------------------------------------

def _read_pixels(ordered: list[_Header], source: Path) -> np.ndarray:
    """Uncompressed slices are read straight from their byte offsets (the fastest way); anything
    else (JPEG, RLE, ...) goes through SimpleITK, and pydicom names the file if that fails."""
    native = _read_native(ordered)
    if native is not None:
        return native
    import SimpleITK as sitk  # imported here: most series never need it (0.3 s to import)

    files = [str(h.path) for h in ordered]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # covidct reports geometry issues itself
    try:
        voxels = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as exc:
        log.debug("SimpleITK could not read %s (%s); decoding with pydicom", source, _short(exc))
        return _read_pixels_pydicom(ordered)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    rows, cols = ordered[0].size
    if voxels.shape != (len(ordered), rows, cols):
        return _read_pixels_pydicom(ordered)
    return voxels


def _read_native(ordered: list[_Header]) -> np.ndarray | None:
    """Little-endian 16-bit uncompressed pixels, with each slice's rescale; None if any slice
    is stored otherwise."""
    layouts = [_native_layout(h) for h in ordered]
    if any(layout is None for layout in layouts):
        return None
    rows, cols = ordered[0].size
    voxels = np.empty((len(ordered), rows, cols), dtype=np.float32)
    for k, (h, (offset, signed, bits)) in enumerate(zip(ordered, layouts)):
        dtype = "<i2" if signed else "<u2"
        raw = np.fromfile(h.path, dtype=dtype, count=rows * cols, offset=offset)
        if raw.size != rows * cols:
            raise ScanError("truncated DICOM file: pixel data ends early", h.path)
        if bits < 16:  # bits above HighBit are not part of the value
            shift = 16 - bits
            raw = (raw << shift) >> shift if signed else raw & ((1 << bits) - 1)
        slope, intercept = _rescale(h.ds)
        plane = voxels[k]
        plane[...] = raw.reshape(rows, cols)
        if slope != 1:
            plane *= np.float32(slope)
        plane += np.float32(intercept)
    return voxels


def _native_layout(h: _Header) -> tuple[int, bool, int] | None:
    ds = h.ds
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax not in _NATIVE_SYNTAXES or "ModalityLUTSequence" in ds or "PixelData" not in ds:
        return None
    if int(ds.get("BitsAllocated", 0) or 0) != 16 or h.frames != 1:
        return None
    elem = ds.get_item("PixelData", keep_deferred=True)
    offset, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
    rows, cols = h.size
    if offset is None or length != rows * cols * 2:
        return None
    bits = int(ds.get("BitsStored", 16) or 16)
    return int(offset), int(ds.get("PixelRepresentation", 0) or 0) == 1, min(max(bits, 1), 16)


def _rescale(ds: Dataset) -> tuple[float, float]:
    try:
        return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 1.0, 0.0


def _read_pixels_pydicom(ordered: list[_Header]) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    slices = []
    for h in ordered:
        try:
            ds = pydicom.dcmread(h.path)
            slices.append(apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
        except Exception as exc:  # decoding errors come in many types
            raise ScanError(f"cannot decode the pixel data ({_short(exc)})", h.path) from None
    return np.stack(slices)


def _read_multiframe(header: _Header, source: Path, notes: Notes, keep_phi: bool) -> Scan:
    """Enhanced (multi-frame) CT: SimpleITK knows its per-frame geometry."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(header.path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise ScanError(f"cannot read multi-frame DICOM ({_short(exc)})", header.path) from None
    direction = np.array(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    geometry = _Geometry((sz, sy, sx), image.GetOrigin(), direction, True)
    return _make_scan(sitk.GetArrayFromImage(image), geometry, header, source, notes, keep_phi)


# Scan ----------------------------------------------------------------------------------

def _make_scan(voxels: np.ndarray, geometry: _Geometry, first: _Header, source: Path,
               notes: Notes, keep_phi: bool) -> Scan:
    ds = first.ds
    _check_rescale(ds, notes)
    orientation = orientation_of(geometry.direction[:, 2])
    metadata = {
        "modality": first.modality or "CT",
        "series_uid_hash": uid_hash(first.series_uid),
        "n_slices": int(voxels.shape[0]),
        "orientation": orientation,
        "manufacturer": _text(ds, "Manufacturer"),
        "slice_thickness": _number(ds, "SliceThickness"),
        "kvp": _number(ds, "KVP"),
        "convolution_kernel": _text(ds, "ConvolutionKernel"),
        "series_description": _text(ds, "SeriesDescription"),
        "synthetic": is_synthetic_text(ds.get("SeriesDescription"), ds.get("ImageComments")),
        "source_format": "dicom",
        "warnings": notes.items,
    }
    phi = {k: str(ds.get(k, "")) for k in _PHI_KEYWORDS} if keep_phi else {}
    return Scan(voxels=np.ascontiguousarray(voxels, dtype=np.float32), spacing=geometry.spacing,
                units="HU", origin=geometry.origin, direction=geometry.direction,
                orientation=orientation, geometry_known=geometry.known, source=str(source),
                metadata=metadata, phi=phi)


def _check_rescale(ds: Dataset, notes: Notes) -> None:
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        notes.warn("RescaleSlope/RescaleIntercept missing; stored values used as HU")


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip() or None


def _number(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _vector(value, n: int) -> np.ndarray | None:
    try:
        vec = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return vec if vec.shape == (n,) and np.all(np.isfinite(vec)) else None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
