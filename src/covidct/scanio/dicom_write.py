"""Write a HU Scan as a CT DICOM series that pydicom, SimpleITK and PACS viewers accept."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import tag_for_keyword
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
    with atomic_dir(folder) as tmp:
        for k, name in enumerate(names):
            ds = _slice_dataset(base, scan, k, stored[k], series_uid)
            ds.save_as(tmp / name, enforce_file_format=True)
    return [folder / name for name in names]


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


def _slice_dataset(base: Dataset, scan: Scan, k: int, pixels: np.ndarray,
                   series_uid: str) -> Dataset:
    # Shares base's (never mutated again) elements: copying them for every slice costs time.
    ds = Dataset()
    ds.update(base)
    sop_uid = generate_uid(entropy_srcs=[series_uid, "instance", str(k)])
    position = np.asarray(scan.origin) + scan.direction[:, 2] * scan.spacing[0] * k
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(position @ scan.direction[:, 2]))
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
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
