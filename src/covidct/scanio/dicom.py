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
from ..privacy import member_label
from .common import (Notes, check_pixel_count, is_synthetic_text, library_messages, log,
                     orientation_of, quiet_stderr, scrub, uid_hash)

#: Slices closer than this along the normal are the same position (mm).
_SAME_POSITION_MM = 1e-3
#: Relative spread of slice gaps above which the slices are resampled on their true positions.
_GAP_TOLERANCE = 0.1
#: A gap between neighbouring slices above both MAX_GAP_FACTOR x the median spacing and
#: MAX_GAP_MM is refused (too much missing to interpolate); smaller irregular gaps are
#: resampled onto an even grid at the median spacing from the slices' true positions.
MAX_GAP_FACTOR = 2.5
MAX_GAP_MM = 5.0
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate")


@dataclass
class _Header:
    """What covidct needs from one file's header, read without its pixels."""

    path: Path
    ds: Dataset
    label: str = ""  # how messages name this file (covidct.privacy.member_label)

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

    @cached_property
    def image_type(self) -> tuple[str, ...]:
        value = self.ds.get("ImageType") or ()
        values = [value] if isinstance(value, str) else list(value)
        return tuple(str(v).strip().upper() for v in values)

    @cached_property
    def plane(self) -> str:
        row_col = self.row_col
        if row_col is None:
            return "unknown"
        return orientation_of(np.cross(row_col[:3], row_col[3:]))


def is_directory_file(path: Path) -> bool:
    """A DICOMDIR index, which lists images but holds none."""
    return path.name.upper() == "DICOMDIR"


def read_dicom(paths: list[Path], source: Path, *, series_uid: str | None = None,
               keep_phi: bool = False) -> Scan:
    """A Scan from the given DICOM files: one series is chosen, checked, sorted and read."""
    notes = Notes(source)
    with library_messages(notes):
        headers = _image_headers(paths, source)
        series = _choose_series(headers, series_uid, source, notes)
        series = _check_series(series, source, notes)
        if len(series) == 1 and series[0].frames > 1:
            return _read_multiframe(series[0], source, notes, keep_phi)
        ordered, geometry = _order_and_measure(series, source, notes)
        voxels = _read_pixels(ordered, source)
        voxels, geometry = _resample_gaps(voxels, ordered, geometry, notes)
        return _make_scan(voxels, geometry, ordered[0], source, notes, keep_phi)


# Headers -------------------------------------------------------------------------------

def _image_headers(paths: list[Path], source: Path) -> list[_Header]:
    """Headers of the image files; reports, indexes and other non-image objects are set aside."""
    root = source if source.is_dir() else None
    headers = [_read_header(p, member_label(p, k, len(paths), root), source)
               for k, p in enumerate(paths)]
    images = [h for h in headers if not _is_non_image(h)]
    if not images:
        raise ScanError(f"no DICOM images here, only {len(headers)} non-image DICOM object(s) "
                        "(reports, indexes)", source)
    if len(images) < len(headers):
        log.info("ignoring %d non-image DICOM object(s)", len(headers) - len(images))
    for h in images:
        if not h.has_pixels:  # an image object without its image: cut short or damaged
            raise ScanError(f"{h.label}: DICOM file has no pixel data (not an image, or cut "
                            "short)", source)
    return images


def _read_header(path: Path, label: str, source: Path) -> _Header:
    """The header of one file; errors name it by ``label`` and are raised for ``source``."""
    name = f"{label}: " if label != path.name or path != source else ""
    force = not _has_preamble(path)
    try:
        # Deferring large values skips the pixels while still recording where they lie.
        ds = pydicom.dcmread(path, defer_size=1024, force=force)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ScanError(f"{name}not a readable DICOM file ({_short(exc)})", source) from None
    if force and "SOPClassUID" not in ds and not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ScanError(f"{name}not a readable DICOM file (no DICOM header found)", source)
    _check_complete(path, ds, name, source)
    return _Header(path, ds, label)


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(132)[128:132] == b"DICM"


def _check_complete(path: Path, ds: Dataset, name: str, source: Path) -> None:
    """pydicom quietly drops an element cut short by the end of the file (and defers the pixels
    without reading them), so a truncated file is told by where its last element ends."""
    if not len(ds):
        raise ScanError(f"{name}truncated or empty DICOM file: no data elements after the file "
                        "header", source)
    last = ds.get_item(max(ds.keys()), keep_deferred=True)
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == 0xFFFFFFFF:
        return  # already decoded, or of undefined length: decoding will catch damage
    actual = os.path.getsize(path)
    if tell + length != actual:
        raise ScanError(f"{name}truncated or damaged DICOM file (its elements end at byte "
                        f"{tell + length}, the file has {actual} bytes)", source)


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
    uid, chosen = max(groups.items(), key=lambda item: _preference(item[1]))
    others = {u: m for u, m in groups.items() if u != uid}
    notes.warn(f"{len(groups)} series found; using series {uid_hash(uid)} "
               f"({_describe({uid: chosen})}) because it is {_why(chosen)}; "
               f"others: {_describe(others)}; choose one with --series")
    return chosen


def _preference(members: list[_Header]) -> tuple:
    """Rank series for reading: a CT, acquired (ORIGINAL/PRIMARY, not a localizer or a
    DERIVED/REFORMATTED reconstruction), axial; then the one with most slices."""
    first = members[0]
    kinds = set(first.image_type)
    return (first.modality in ("CT", None),
            "LOCALIZER" not in kinds,
            "ORIGINAL" in kinds or not kinds,
            "PRIMARY" in kinds or not kinds,
            not kinds & {"DERIVED", "SECONDARY", "REFORMATTED", "MPR"},
            first.plane == "axial",
            len(members))


def _why(members: list[_Header]) -> str:
    first = members[0]
    kind = "/".join(first.image_type[:2]) or "no ImageType"
    return f"the {first.plane} {first.modality or 'CT?'} series ({kind}) preferred (original " \
           "axial CT first, then most slices)"


def _describe(groups: dict[str, list[_Header]]) -> str:
    parts = []
    for uid, members in groups.items():
        first = members[0]
        desc = str(first.ds.get("SeriesDescription", "")).strip()
        label = (f"{uid_hash(uid) or 'no-uid'} {first.modality or '?'} {first.plane} "
                 f"{'/'.join(first.image_type[:2]) or '-'} {len(members)} files")
        parts.append(f"{label} {desc!r}" if desc else label)
    return "; ".join(parts)


def _check_series(series: list[_Header], source: Path, notes: Notes) -> list[_Header]:
    """Refuse what cannot be a CT volume; warn about what is merely untidy."""
    modality = series[0].modality
    if modality is None:
        notes.warn("Modality tag missing; assuming CT")
    for h in series:
        if h.modality not in (None, "CT"):
            raise ScanError(f"{h.label}: modality is {h.modality}, not CT: covidct reads CT "
                            "scans only", source)
        if int(h.ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise ScanError(f"{h.label}: colour DICOM image; CT slices are grayscale", source)
        _check_rescale_values(h, source)
    series = _drop_copies(series, notes)
    if len(series) > 1 and any(h.frames > 1 for h in series):
        odd = next(h for h in series if h.frames > 1)
        raise ScanError(f"{odd.label}: a multi-frame file inside a series of files is not "
                        "supported; load it on its own", source)
    rows, cols = Counter(h.size for h in series).most_common(1)[0][0]
    for h in series:
        if h.size != (rows, cols):
            raise ScanError(f"{h.label}: slice size {h.size[0]}x{h.size[1]} differs from the "
                            f"{rows}x{cols} of the other slices; inconsistent series", source)
    check_pixel_count(rows, cols, sum(h.frames for h in series), source)
    return series


def _check_rescale_values(h: _Header, source: Path) -> None:
    """A NaN or infinite RescaleSlope/Intercept makes every voxel NaN: refuse it here."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        value = h.ds.get(keyword)
        if value in (None, ""):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ScanError(f"{h.label}: {keyword} is not a number", source) from None
        if not np.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
            raise ScanError(f"{h.label}: {keyword} is {number}; the pixel values cannot be "
                            "turned into HU", source)


def _drop_copies(series: list[_Header], notes: Notes) -> list[_Header]:
    """The same instance saved twice (a common export artefact) is kept once."""
    seen: dict[str, _Header] = {}
    kept = []
    for h in series:
        sop = str(h.ds.get("SOPInstanceUID", ""))
        if sop and sop in seen:
            notes.warn(f"{h.label} is a copy of {seen[sop].label}; ignored")
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
    depths: np.ndarray | None = None  # slice positions along the normal (mm), sorted


def _resample_gaps(voxels: np.ndarray, ordered: list[_Header], geometry: _Geometry,
                   notes: Notes) -> tuple[np.ndarray, _Geometry]:
    """Uneven slice positions (a missing slice): linear interpolation onto an even grid at the
    median spacing, so that the geometry past a gap stays right."""
    depths = geometry.depths
    if depths is None or len(depths) < 3:
        return voxels, geometry
    gaps = np.diff(depths)
    dz = geometry.spacing[0]
    if gaps.max() - gaps.min() <= _GAP_TOLERANCE * dz:
        return voxels, geometry
    n = int(np.floor((depths[-1] - depths[0]) / dz + 1e-6)) + 1
    targets = depths[0] + dz * np.arange(n)
    upper = np.clip(np.searchsorted(depths, targets, side="right"), 1, len(depths) - 1)
    lower = upper - 1
    weight = ((targets - depths[lower]) / (depths[upper] - depths[lower])).astype(np.float32)
    weight = np.clip(weight, 0.0, 1.0)[:, None, None]
    out = voxels[lower] * (1 - weight) + voxels[upper] * weight
    k = int(np.argmax(gaps))
    notes.warn(f"uneven slice positions (gaps {gaps.min():.2f}-{gaps.max():.2f} mm, the largest "
               f"between slices {k + 1} and {k + 2} of {len(depths)}; slices missing?): resampled "
               f"on the true positions to {n} slices {dz:.2f} mm apart")
    return out.astype(np.float32), geometry

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
        depths = depth[order]
        origin = ordered[0].position
        _check_alignment(ordered, normal, notes)
    direction = np.column_stack([row, col, normal])
    geometry = _Geometry((dz, dy, dx), tuple(origin), direction, known)
    if positions and all(p is not None for p in positions):
        geometry.depths = depths
    return ordered, geometry


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
        raise ScanError(f"duplicated slice position {depth[same[0]]:.3f} mm: {a.label} and "
                        f"{b.label} (two acquisitions in one series?)", source)
    gap = float(np.median(gaps))
    limit = max(MAX_GAP_FACTOR * gap, MAX_GAP_MM)
    if gaps.max() > limit:
        k = int(np.argmax(gaps))
        raise ScanError(f"a gap of {gaps.max():.1f} mm between slices {k + 1} and {k + 2} of "
                        f"{len(depth)} (the median spacing is {gap:.2f} mm; gaps above "
                        f"{limit:.1f} mm are refused): slices missing", source)
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
    native = _read_native(ordered, source)
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
        with quiet_stderr():  # decoders print to the C stderr; covidct says what failed
            voxels = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as exc:
        log.debug("SimpleITK could not read the series (%s); decoding with pydicom", _short(exc))
        return _read_pixels_pydicom(ordered, source)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    rows, cols = ordered[0].size
    if voxels.shape != (len(ordered), rows, cols):
        return _read_pixels_pydicom(ordered, source)
    return voxels


def _read_native(ordered: list[_Header], source: Path) -> np.ndarray | None:
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
            raise ScanError(f"{h.label}: truncated DICOM file: pixel data ends early", source)
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


def _read_pixels_pydicom(ordered: list[_Header], source: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    slices = []
    for h in ordered:
        try:
            with quiet_stderr():
                ds = pydicom.dcmread(h.path)
                slices.append(apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
        except Exception as exc:  # decoding errors come in many types
            raise ScanError(f"{h.label}: cannot decode the pixel data ({_short(exc)})",
                            source) from None
    return np.stack(slices)


def _read_multiframe(header: _Header, source: Path, notes: Notes, keep_phi: bool) -> Scan:
    """Enhanced (multi-frame) CT: SimpleITK knows its per-frame geometry."""
    import SimpleITK as sitk

    try:
        with quiet_stderr():
            image = sitk.ReadImage(str(header.path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise ScanError(f"cannot read multi-frame DICOM ({_short(exc)})", source) from None
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
    if text.endswith(":"):  # "...raised by all available plugins:" and the list below
        text = text.rstrip(":") + "; the data are damaged or in an unsupported encoding"
    return scrub(text)[:200]
