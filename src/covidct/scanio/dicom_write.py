"""Write a HU Scan as a CT DICOM series that pydicom, SimpleITK and PACS viewers accept."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.charset import default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID,
                         generate_uid)

from ..atomic import atomic_dir
from ..constants import SYNTHETIC_TAG
from ..errors import ScanError
from ..scan import Scan
from ..windowing import COVIDX_LUNG

#: Stored value = HU - intercept. -1024 is the common scanner convention: air (-1000 HU)
#: stores as about 24, and int16 still covers everything down to -33792 HU.
RESCALE_INTERCEPT = -1024
_INT16 = np.iinfo(np.int16)


def write_dicom_series(scan: Scan, folder: str | os.PathLike, *, patient_id: str = "ANONYMOUS",
                       patient_name: str = "ANONYMOUS", series_description: str = "",
                       study_uid: str | None = None, series_uid: str | None = None,
                       extra: dict[str, Any] | None = None) -> list[Path]:
    """Write one file per slice (``slice-0001.dcm`` ...) into ``folder``, atomically.

    UIDs are derived from ``series_uid`` when it is given, so a seeded writer (covidct synth)
    produces the same files twice. Synthetic scans always carry the synthetic tag in
    SeriesDescription, whatever the caller passes.
    """
    if not scan.is_hu:
        raise ScanError("only HU scans can be written as CT DICOM; this scan is an "
                        "already-windowed picture (write it with write_png_slices)",
                        scan.source or None)
    _check_extra(extra or {})
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid(entropy_srcs=[series_uid, "study"])
    frame_uid = generate_uid(entropy_srcs=[series_uid, "frame-of-reference"])
    if scan.synthetic and SYNTHETIC_TAG not in series_description:
        series_description = f"{series_description} {SYNTHETIC_TAG}".strip()
    stored = _stored_values(scan)
    base = _series_dataset(scan, patient_id=patient_id, patient_name=patient_name,
                           series_description=series_description, study_uid=study_uid,
                           series_uid=series_uid, frame_uid=frame_uid)
    for keyword, value in (extra or {}).items():
        setattr(base, keyword, value)
    folder = Path(folder)
    names = [f"slice-{k + 1:04d}.dcm" for k in range(scan.n_slices)]
    shared = _SeriesEncoder(base) if _SeriesEncoder.can_encode(base) else None
    with atomic_dir(folder) as tmp:
        for k, name in enumerate(names):
            own = _slice_elements(scan, k, stored[k], series_uid)
            if shared is None:
                _whole(base, own).save_as(tmp / name, enforce_file_format=True)
            else:
                (tmp / name).write_bytes(shared.file_bytes(own))
    return [folder / name for name in names]


class _SeriesEncoder:
    """Encodes a slice's file as ``Dataset.save_as(enforce_file_format=True)`` would, byte for
    byte, but encodes the series' shared elements once rather than once per slice (pydicom's
    per-element encoding was most of the time of writing a series).

    Explicit VR little endian; every element is encoded by pydicom itself
    (``write_data_element``), and a dataset's elements are concatenated in tag order, which
    is all ``write_dataset`` does for a dataset without group lengths or ambiguous VRs.
    """

    @staticmethod
    def can_encode(base: Dataset) -> bool:
        """False when an element needs the dataset-wide pass: an ambiguous VR ("US or SS",
        resolved from other elements) or a group length (skipped); ``extra`` can bring one."""
        return all(" or " not in base[tag].VR and not (tag.element == 0 and tag.group > 6)
                   for tag in base.keys())

    def __init__(self, base: Dataset):
        self.base = base
        self.charset = base.get("SpecificCharacterSet", default_encoding)
        self.shared = {tag: self._element(base[tag]) for tag in base.keys()}

    def _element(self, elem) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, elem, self.charset)
        return fp.getvalue()

    def file_bytes(self, own: Dataset) -> bytes:
        """The whole file of base's elements and ``own``'s (which take precedence) with
        ``own.file_meta`` (completed in place, as save_as completes its copy)."""
        meta = DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        write_file_meta_info(meta, own.file_meta, enforce_standard=True)
        parts = [b"\x00" * 128, b"DICM", meta.getvalue()]
        for tag in sorted({*self.shared, *own.keys()}):
            parts.append(self._element(own[tag]) if tag in own else self.shared[tag])
        return b"".join(parts)


def _check_extra(extra: dict[str, Any]) -> None:
    unknown = [kw for kw in extra if tag_for_keyword(kw) is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")


def _stored_values(scan: Scan) -> np.ndarray:
    values = np.rint(scan.voxels.astype(np.float64)) - RESCALE_INTERCEPT
    if values.min() < _INT16.min or values.max() > _INT16.max:
        raise ScanError(f"HU values {scan.voxels.min():.0f}..{scan.voxels.max():.0f} do not fit "
                        "16-bit CT DICOM", scan.source or None)
    return values.astype(np.int16)


def _series_dataset(scan: Scan, *, patient_id: str, patient_name: str, series_description: str,
                    study_uid: str, series_uid: str, frame_uid: str) -> Dataset:
    """Attributes shared by every slice of the series."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "covidct"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # Type 2 attributes: present but empty, since a derived scan carries no real dates.
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SeriesDescription = series_description
    ds.PatientPosition = "HFS"
    ds.SliceThickness = _ds(scan.spacing[0])
    ds.SpacingBetweenSlices = _ds(scan.spacing[0])
    ds.PixelSpacing = [_ds(scan.spacing[1]), _ds(scan.spacing[2])]
    direction = scan.direction
    ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.Rows, ds.Columns = int(scan.shape[1]), int(scan.shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = _ds(COVIDX_LUNG.center)
    ds.WindowWidth = _ds(COVIDX_LUNG.width)
    ds.KVP = ""
    ds.AcquisitionNumber = 1
    return ds


def _whole(base: Dataset, own: Dataset) -> Dataset:
    """One slice's dataset: the series' elements and its own, with its file meta."""
    # Shares base's (never mutated again) elements: copying them for every slice costs time.
    ds = Dataset()
    ds.update(base)
    ds.update(own)
    ds.file_meta = own.file_meta
    return ds


def _slice_elements(scan: Scan, k: int, pixels: np.ndarray, series_uid: str) -> Dataset:
    """What differs between the series' slices (and the file meta)."""
    ds = Dataset()
    sop_uid = generate_uid(entropy_srcs=[series_uid, "instance", str(k)])
    position = np.asarray(scan.origin) + scan.direction[:, 2] * scan.spacing[0] * k
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(position @ scan.direction[:, 2]))
    # OW stated, as save_as would resolve "OB or OW" for 16-bit pixels (no dataset-wide pass)
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(pixels, dtype="<i2").tobytes())
    ds.file_meta = _file_meta(sop_uid)
    return ds


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    return meta


def _ds(value: float) -> str:
    """A Decimal String (at most 16 characters) that round-trips the value as well as DS allows."""
    text = f"{float(value):.10g}"
    if len(text) > 16:
        text = f"{float(value):.8g}"
    return "0" if text in ("-0", "0") else text
