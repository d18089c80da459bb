"""The COVIDx CT split-file format: ``filename class xmin ymin xmax ymax`` per line.

Class 0 Normal, 1 Pneumonia (CP), 2 COVID-19 (NCP); the box is the body crop in pixel
coordinates of the 512x512 slice. Files name their patient in several source-specific ways;
:func:`patient_id` recovers it so that evaluation and splits can work per patient.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .constants import SLICE_CLASSES
from .errors import DatasetError

log = logging.getLogger(__name__)

#: The COVIDx CT-2A folder layout: one split file per split beside one folder of slice images.
SPLIT_SUFFIX = "_COVIDx_CT-2A.txt"
IMAGES_DIR = "images"
#: How messages name the split files, and the whole layout.
SPLIT_FILES = f"<split>{SPLIT_SUFFIX}"
LAYOUT = f"{SPLIT_FILES} + {IMAGES_DIR}/"


def split_path(folder: str | os.PathLike, split: str) -> Path:
    """The split file of ``split`` ("train", "val", "test") in a COVIDx-layout folder."""
    return Path(folder) / f"{split}{SPLIT_SUFFIX}"


def split_of(path: str | os.PathLike) -> str | None:
    """The split a COVIDx split file holds ("test" for ``test_COVIDx_CT-2A.txt``), else None."""
    name = Path(path).name
    return name[: -len(SPLIT_SUFFIX)] if name.endswith(SPLIT_SUFFIX) else None


def covidx_paths(data: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(split file, images folder) of a COVIDx-layout folder, or of a split file beside its images."""
    data = Path(data)
    if data.is_dir():
        return split_path(data, split), data / IMAGES_DIR
    return data, data.parent / IMAGES_DIR


@dataclass(frozen=True)
class SliceRecord:
    filename: str
    label: int
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax

    @property
    def patient(self) -> str:
        return patient_id(self.filename)

    @property
    def class_name(self) -> str:
        return SLICE_CLASSES[self.label]


# Most specific first. Each pattern captures the patient part of a slice file name.
_PATIENT_PATTERNS = [
    re.compile(r"^((?:NCP|CP|Normal)_\d+)_\d+_\d+$"),          # CNCB: class_patient_scan_slice
    re.compile(r"^(LIDC-IDRI-\d+)-.+$"),                        # LIDC: id-seriesUID-slice
    re.compile(r"^(.+?)_SR_\d+_IM\d+$"),                        # iCTCF-like: src_patientN_SR_k_IMn
    re.compile(r"^(volume-covid19-A-\d+)(?:_.*)?$"),            # MosMed-like / CT-1 volumes
    re.compile(r"^(.+)-\d+$"),                                  # generic: name-slice
    re.compile(r"^(.+)_\d+$"),                                  # generic: name_slice
]


def patient_id(filename: str) -> str:
    """Patient (or, where the source does not say, scan) identifier of a COVIDx slice file."""
    stem = Path(filename).name
    stem = re.sub(r"\.(png|jpe?g|tiff?)$", "", stem, flags=re.IGNORECASE)
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def parse_line(line: str, path: str | os.PathLike = "", lineno: int = 0) -> SliceRecord:
    parts = line.split()
    where = f"line {lineno}: " if lineno else ""
    if len(parts) != 6:
        raise DatasetError(f"{where}expected 'filename class xmin ymin xmax ymax', got {line.strip()!r}", path)
    name, *numbers = parts
    try:
        label, xmin, ymin, xmax, ymax = (int(v) for v in numbers)
    except ValueError:
        raise DatasetError(f"{where}class and box must be integers, got {line.strip()!r}", path) from None
    if label not in range(len(SLICE_CLASSES)):
        raise DatasetError(f"{where}class must be 0, 1 or 2, got {label}", path)
    if xmin < 0 or ymin < 0 or xmax <= xmin or ymax <= ymin:
        raise DatasetError(f"{where}box ({xmin}, {ymin}, {xmax}, {ymax}) is empty or negative", path)
    return SliceRecord(name, label, (xmin, ymin, xmax, ymax))


def read_split(path: str | os.PathLike) -> list[SliceRecord]:
    """Parse a COVIDx split file; a malformed line is an error naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError("split file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read split file ({exc})", path) from None
    records = [(i, parse_line(line, path, i)) for i, line in enumerate(text.splitlines(), 1)
               if line.strip()]
    if not records:
        raise DatasetError("split file lists no slices", path)
    return _unique(records, path)


def _unique(numbered: list[tuple[int, SliceRecord]], path: Path) -> list[SliceRecord]:
    """A slice listed twice would count twice in every figure: repeated lines are dropped with
    a warning; one file listed with two classes or boxes is an error."""
    first: dict[str, tuple[int, SliceRecord]] = {}
    kept, repeats = [], []
    for lineno, record in numbered:
        seen = first.get(record.filename)
        if seen is None:
            first[record.filename] = (lineno, record)
            kept.append(record)
        elif seen[1] == record:
            repeats.append(lineno)
        else:
            raise DatasetError(f"line {lineno}: a file listed on line {seen[0]} appears again "
                               "with another class or box", path)
    if repeats:
        log.warning("%s: %d duplicated line(s) ignored (e.g. line %d): each slice counts once",
                    path.name, len(repeats), repeats[0])
    return kept


def write_split(path: str | os.PathLike, records: Iterable[SliceRecord]) -> Path:
    from .atomic import write_text

    lines = [f"{r.filename} {r.label} {' '.join(str(v) for v in r.box)}" for r in records]
    return write_text(path, "\n".join(lines) + "\n")


def class_counts(records: Sequence[SliceRecord]) -> dict[str, int]:
    counts = Counter(r.label for r in records)
    return {name: counts.get(i, 0) for i, name in enumerate(SLICE_CLASSES)}


def check_images(records: Sequence[SliceRecord], image_dir: str | os.PathLike,
                 show: int = 5) -> None:
    """Fail before training starts when listed images are missing (naming the first few)."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DatasetError("image folder not found", image_dir)
    present = set(os.listdir(image_dir))
    missing = [r.filename for r in records if r.filename not in present]
    if missing:
        more = f" and {len(missing) - show} more" if len(missing) > show else ""
        raise DatasetError(
            f"{len(missing)} of {len(records)} listed images are missing: "
            f"{', '.join(missing[:show])}{more}", image_dir)
