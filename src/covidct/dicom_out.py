"""Results as DICOM objects a PACS files with the study: SR, SEG and key images (highdicom).

For a CT series read from DICOM, :func:`build_outputs` makes

* a **Comprehensive 3D SR** holding a TID 1500 Measurement Report: per method the call
  (a coded qualitative evaluation), every class probability (a measurement, unit "1"),
  the model's name, file and SHA-256 digest (TID 4019 algorithm identification), lung
  volumes (mL), the share of each lung with infection-like density, ground glass and
  consolidation, the six-zone severity score and CovidCTNet's map share (covidct.lungs; a
  research measurement), and the research-use statement;
* a **Segmentation** (binary DICOM SEG) on the source series' frame of reference: the right
  and left lungs (the lung mask both methods used, labels 1 right, 2 left on the scan grid),
  and CovidCTNet's infection map above :data:`covidct.lungs.MAP_THRESHOLD` (the threshold of
  the involvement's map share), mapped back onto the scan grid and kept inside the lungs;
* **secondary-capture key images**: the slices that drove each call with the Grad-CAM or
  infection overlay, "RESEARCH USE ONLY - NOT FOR DIAGNOSIS" burnt into the pixels, and a
  **Key Object Selection** document flagging them.

Every object gets new Series/SOP Instance UIDs (pydicom's UID root, 1.2.826.0.1.3680043.8.498,
unless ``COVIDCT_UID_ROOT`` names your organisation's), the source's StudyInstanceUID and
patient/study modules (the one place covidct writes patient identifiers: inside these objects,
never in logs or file names), references to the source images, and a SeriesDescription
starting with "covidct RESEARCH". :func:`refusal_sr` says in an SR why a series was not
processed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from . import __version__
from .constants import DISCLAIMER, SYNTHETIC_NOTICE
from .errors import ScanError
from .lungs import MAP_THRESHOLD, RESEARCH_NOTE, SEVERITY_SCALE, LungMask
from .prediction import Prediction
from .scan import Scan
from .scanio.common import ZIP_SUFFIX, looks_like_dicom, suffix_of

log = logging.getLogger(__name__)
# highdicom logs the UIDs of the datasets it copies from at INFO: UIDs stay out of covidct's logs.
logging.getLogger("highdicom").setLevel(logging.WARNING)

#: Burnt into every key image, so that a viewer without SR support still shows it.
BURNT_IN_TEXT = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
SERIES_PREFIX = "covidct RESEARCH"
MANUFACTURER = "covidct"
#: Series numbers of the outputs, high so that they sort after the scanner's series.
SERIES_NUMBERS = {"sr": 9901, "seg": 9902, "key": 9903, "ko": 9904}
KEY_IMAGES_PER_METHOD = 3
#: Key images are drawn at least this wide, so that the burnt-in text stays readable.
MIN_PICTURE_WIDTH = 512


def new_uid() -> str:
    """A new UID under ``$COVIDCT_UID_ROOT`` (ending in a dot) or pydicom's root."""
    from pydicom.uid import generate_uid

    root = os.environ.get("COVIDCT_UID_ROOT") or None
    return generate_uid(prefix=root)


# Coded concepts -------------------------------------------------------------------------

def _codes():
    from highdicom.sr import CodedConcept

    def private(value: str, meaning: str) -> CodedConcept:
        return CodedConcept(value[:16], "99COVIDCT", meaning)

    return CodedConcept, private


def class_concept(name: str):
    """A class name as a coded concept: SNOMED CT where one fits, else covidct's scheme."""
    CodedConcept, private = _codes()
    known = {
        "NCP": ("840539006", "COVID-19"),
        "COVID-19": ("840539006", "COVID-19"),
        "CP": ("233604007", "Pneumonia"),
        "CAP": ("385093006", "Community acquired pneumonia"),
        "Normal": ("17621005", "Normal"),
        "Control": ("17621005", "Normal"),
    }
    if name in known:
        return CodedConcept(known[name][0], "SCT", known[name][1])
    return private(f"C-{name}", name)


def probability_concept(name: str):
    _, private = _codes()
    return private(f"P-{name}", f"Probability of {name}")


def call_concept():
    _, private = _codes()
    return private("CALL", "covidct call")


LUNG_CODES = {1: ("3341006", "Right lung"), 2: ("44029006", "Left lung")}


# Reading the source series --------------------------------------------------------------

def check_dicom_input(path: str | os.PathLike) -> None:
    """Refuse, in one line, an input that is not DICOM (a zip is looked into later)."""
    path = Path(path)
    if not path.exists():
        raise ScanError("no such file or folder", path)
    if path.is_file() and suffix_of(path) == ZIP_SUFFIX:
        return
    if not any(looks_like_dicom(f) for f in _files(path)):
        raise ScanError("DICOM outputs (--dicom-out) need a DICOM series as input (a folder, "
                        "a file or a zip of DICOM files)", path)


@contextlib.contextmanager
def dicom_source(path: str | os.PathLike) -> Iterator[Path]:
    """The folder or file holding the DICOM series at ``path`` (a zip is unpacked to a
    private temporary folder for the duration); anything but DICOM is refused in one line."""
    check_dicom_input(path)
    path = Path(path)
    if path.is_file() and suffix_of(path) == ZIP_SUFFIX:
        from .scanio.archive import extract_zip

        with tempfile.TemporaryDirectory(prefix="covidct-dicom-out-") as tmp:
            extract_zip(path, Path(tmp))
            yield Path(tmp)
        return
    yield path


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def source_datasets(path: str | os.PathLike, scan: Scan) -> list[Any]:
    """The headers (no pixels) of the files the scan was read from, in the scan's slice order."""
    import pydicom

    from .scanio.common import looks_like_dicom, uid_hash

    wanted = scan.metadata.get("series_uid_hash")
    found = []
    for f in _files(Path(path)):
        if not looks_like_dicom(f):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # the reader has accepted the series; other files are not ours
            continue
        if uid_hash(str(ds.get("SeriesInstanceUID", ""))) == wanted and "Rows" in ds:
            found.append(ds)
    if len(found) == 1 and int(found[0].get("NumberOfFrames", 1) or 1) > 1:
        raise ScanError("DICOM outputs are made for single-frame CT series; this is a multi-frame "
                        "object", path)
    normal = np.cross(*np.reshape(np.asarray(found[0].ImageOrientationPatient, float), (2, 3))) \
        if found and "ImageOrientationPatient" in found[0] else np.array([0.0, 0.0, 1.0])
    found.sort(key=lambda ds: float(np.asarray(ds.get("ImagePositionPatient", [0, 0, 0]), float) @ normal))
    if len(found) != scan.n_slices:
        raise ScanError(f"found {len(found)} files of the series for {scan.n_slices} slices; DICOM "
                        "outputs need every slice once", path)
    return found


# The objects ----------------------------------------------------------------------------

#: Involvement figures (covidct.lungs.involvement keys) the SR carries for the whole lung.
LUNG_FIGURES = ("ground_glass_percent", "consolidation_percent", "severity_score",
                "map_share_percent")


@dataclass
class LungFindings:
    """Lung results for the SR and SEG: a label mask on the scan grid (1 right, 2 left),
    involvement in percent of each lung's volume (keys "right", "left", "total") and the
    other figures of :data:`LUNG_FIGURES` (a research measurement, covidct.lungs)."""

    mask: np.ndarray | None = None
    involvement_percent: Mapping[str, float] = field(default_factory=dict)
    figures: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_lungs(cls, labels: LungMask | np.ndarray | None,
                   involvement: Mapping[str, Any] | None = None) -> "LungFindings":
        """From a lung mask (or its labels) and an involvement report of covidct.lungs
        (``involved_percent`` overall, ``by_lung: {"right": {"involved_percent": ..}, ..}``)."""
        if isinstance(labels, LungMask):
            labels = labels.labels
        percent: dict[str, float] = {}
        involvement = involvement or {}
        if "involved_percent" in involvement:
            percent["total"] = float(involvement["involved_percent"])
        for side, values in (involvement.get("by_lung") or {}).items():
            if side in ("right", "left") and "involved_percent" in values:
                percent[side] = float(values["involved_percent"])
        figures = {k: float(involvement[k]) for k in LUNG_FIGURES if involvement.get(k) is not None}
        return cls(labels, percent, figures)

    def volumes_ml(self, scan: Scan) -> dict[str, float]:
        """Right, left and total lung volume, as covidct.lungs reports them."""
        if self.mask is None:
            return {}
        return LungMask(labels=self.mask, spacing=tuple(scan.spacing)).volumes_ml()


def lung_findings(scan: Scan, predictions: Sequence[Prediction]) -> LungFindings | None:
    """The lung mask both methods used for ``scan`` (covidct.lungs computes it once per scan)
    and the involvement the predictions carry (CovidCTNet's adds its map share); None when
    the scan is not axial or shows no lungs."""
    from .lungs import lung_report, scan_lungs

    if scan.orientation not in ("axial", "unknown"):
        return None
    mask = scan_lungs(scan)
    if not mask.found:
        log.info("no lungs found: the SR and SEG carry no lung figures")
        return None
    reports = [p.lungs["involvement"] for p in predictions if (p.lungs or {}).get("involvement")]
    involvement = next((r for r in reports if "map_share_percent" in r),
                       reports[0] if reports else lung_report(scan)["involvement"])
    return LungFindings.from_lungs(mask, involvement)


def _series_description(kind: str, synthetic: bool) -> str:
    text = f"{SERIES_PREFIX} {kind}"
    return f"{text} SYNTHETIC" if synthetic else text


def _digest(prediction: Prediction) -> tuple[str, str]:
    model = prediction.model or {}
    file = model.get("file") if isinstance(model.get("file"), dict) else {}
    name = model.get("file") if isinstance(model.get("file"), str) else (file or {}).get("name")
    sha = model.get("sha256") or (file or {}).get("sha256") or "unknown"
    return str(name or "unknown"), str(sha)


def _algorithm(prediction: Prediction):
    from highdicom.sr import AlgorithmIdentification

    name, sha = _digest(prediction)
    parameters = [f"model file {name}", f"model sha256 {sha}"]
    if prediction.aggregation:
        parameters.append(f"aggregation: {prediction.aggregation}"[:1024])
    if prediction.synthetic:
        parameters.append(SYNTHETIC_NOTICE)
    return AlgorithmIdentification(name=f"covidct {prediction.method}", version=__version__,
                                   parameters=parameters)


def _method_group(prediction: Prediction, sources: Sequence[Any]):
    from highdicom.sr import (CodedConcept, Measurement, MeasurementsAndQualitativeEvaluations,
                              QualitativeEvaluation, TrackingIdentifier)

    unit = CodedConcept("1", "UCUM", "no units")
    measurements = [Measurement(name=probability_concept(c), value=float(p), unit=unit)
                    for c, p in zip(prediction.class_names, prediction.probabilities)]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=new_uid(), identifier=f"covidct {prediction.method}"),
        algorithm_id=_algorithm(prediction), measurements=measurements,
        qualitative_evaluations=[QualitativeEvaluation(call_concept(), class_concept(prediction.label))])


def _lung_group(lungs: LungFindings, scan: Scan):
    from highdicom.sr import (CodedConcept, FindingSite, Measurement,
                              MeasurementsAndQualitativeEvaluations, TrackingIdentifier)

    _, private = _codes()
    sites = {"right": CodedConcept(LUNG_CODES[1][0], "SCT", LUNG_CODES[1][1]),
             "left": CodedConcept(LUNG_CODES[2][0], "SCT", LUNG_CODES[2][1]),
             "total": CodedConcept("39607008", "SCT", "Lung")}
    volume = CodedConcept("118565006", "SCT", "Volume")
    involved = private("INVOLVED", "Fraction of lung volume involved")
    measurements = []
    for key, ml in lungs.volumes_ml(scan).items():
        measurements.append(Measurement(name=volume, value=round(ml, 2),
                                        unit=CodedConcept("ml", "UCUM", "milliliter"),
                                        finding_sites=[FindingSite(sites[key])]))
    percent = CodedConcept("%", "UCUM", "percent")
    for key, value in lungs.involvement_percent.items():
        if key in sites:
            measurements.append(Measurement(name=involved, value=round(float(value), 2),
                                            unit=percent, finding_sites=[FindingSite(sites[key])]))
    figures = {"ground_glass_percent": private("GGO", "Fraction of lung volume with ground glass"),
               "consolidation_percent": private("CONSOLIDATION",
                                                "Fraction of lung volume with consolidation"),
               "map_share_percent": private("MAP-SHARE",
                                            "Fraction of lung in CovidCTNet infection map"),
               "severity_score": private("SEVERITY-6ZONE", "Six-zone CT severity score (0-24)")}
    for key, value in lungs.figures.items():
        unit = CodedConcept("{score}", "UCUM", "score") if key == "severity_score" else percent
        measurements.append(Measurement(name=figures[key], value=round(float(value), 2), unit=unit,
                                        finding_sites=[FindingSite(sites["total"])]))
    if not measurements:
        return None
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=new_uid(), identifier="covidct lungs"),
        measurements=measurements)


def _statement_container(lines: Sequence[str]):
    """TID 1500's root "Qualitative Evaluations" container, holding the statements as text."""
    from highdicom.sr import (CodedConcept, ContainerContentItem, RelationshipTypeValues,
                              TextContentItem)

    container = ContainerContentItem(name=CodedConcept("126010", "DCM", "Qualitative Evaluations"),
                                     relationship_type=RelationshipTypeValues.CONTAINS)
    container.ContentSequence = [
        TextContentItem(name=CodedConcept("121106", "DCM", "Comment"), value=line[:1024],
                        relationship_type=RelationshipTypeValues.CONTAINS) for line in lines]
    return container


def _observation_context():
    from highdicom.sr import (CodedConcept, DeviceObserverIdentifyingAttributes,
                              ObservationContext, ObserverContext)

    device = ObserverContext(observer_type=CodedConcept("121007", "DCM", "Device"),
                             observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                                 uid=new_uid(), name="covidct", model_name=f"covidct {__version__}"))
    return ObservationContext(observer_device_context=device)


def _sr_document(sources: Sequence[Any], report, synthetic: bool):
    import highdicom as hd
    from pydicom.dataset import Dataset

    sr = hd.sr.Comprehensive3DSR(
        evidence=list(sources), content=report, series_instance_uid=new_uid(),
        series_number=SERIES_NUMBERS["sr"], sop_instance_uid=new_uid(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True,
        series_description=_series_description("SR", synthetic))
    scheme = Dataset()  # declares covidct's private coding scheme
    scheme.CodingSchemeDesignator = "99COVIDCT"
    scheme.CodingSchemeName = "covidct result concepts"
    scheme.CodingSchemeResponsibleOrganization = "covidct project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def build_sr(sources: Sequence[Any], scan: Scan, predictions: Sequence[Prediction],
             lungs: LungFindings | None = None):
    """The TID 1500 report of ``predictions`` (and lung figures) as a Comprehensive 3D SR."""
    from highdicom.sr import CodedConcept, MeasurementReport

    groups = [_method_group(p, sources) for p in predictions]
    if lungs is not None and (group := _lung_group(lungs, scan)) is not None:
        groups.append(group)
    report = MeasurementReport(
        observation_context=_observation_context(),
        procedure_reported=CodedConcept("24627-2", "LN", "CT Chest"),
        imaging_measurements=groups,
        title=CodedConcept("126000", "DCM", "Imaging Measurement Report"),
        referenced_images=list(sources))
    synthetic = scan.synthetic or any(p.synthetic for p in predictions)
    lines = [DISCLAIMER] + [p.summary_line() for p in predictions]
    if lungs is not None and (lungs.involvement_percent or lungs.figures):
        lines += [f"Lung figures: {RESEARCH_NOTE}.", f"Severity score: {SEVERITY_SCALE}."]
        if "map_share_percent" in lungs.figures:
            lines.append(f"CovidCTNet map share: lung voxels where the infection map exceeds "
                         f"{MAP_THRESHOLD}.")
    if synthetic:
        lines.append(SYNTHETIC_NOTICE)
    report[0].ContentSequence.append(_statement_container(lines))
    return _sr_document(sources, report, synthetic)


def refusal_sr(sources: Sequence[Any], reason: str, synthetic: bool = False):
    """An SR in the study saying that covidct did not process the series, and why."""
    from highdicom.sr import (CodedConcept, MeasurementReport, MeasurementsAndQualitativeEvaluations,
                              QualitativeEvaluation, TrackingIdentifier)

    _, private = _codes()
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=new_uid(), identifier="covidct not processed"),
        qualitative_evaluations=[QualitativeEvaluation(call_concept(),
                                                       private("NOT-PROCESSED", "Not processed"))])
    report = MeasurementReport(
        observation_context=_observation_context(),
        procedure_reported=CodedConcept("24627-2", "LN", "CT Chest"),
        imaging_measurements=[group],
        title=CodedConcept("126000", "DCM", "Imaging Measurement Report"),
        referenced_images=list(sources))
    report[0].ContentSequence.append(_statement_container(
        [DISCLAIMER, f"covidct did not process this series: {reason}"]))
    return _sr_document(sources, report, synthetic)


def build_seg(sources: Sequence[Any], scan: Scan, infection: np.ndarray | None,
              lungs: LungFindings | None = None, synthetic: bool = False):
    """A binary SEG of the lungs (when given) and the infection map above
    covidct.lungs.MAP_THRESHOLD (inside the lungs when given); None when there is nothing
    to segment."""
    import highdicom as hd
    from highdicom.sr import CodedConcept

    family = CodedConcept("123110", "DCM", "Artificial Intelligence")  # CID 7162
    anatomy = CodedConcept("91723000", "SCT", "Anatomical Structure")
    masks, segments = [], []
    if lungs is not None and lungs.mask is not None:
        for label, (code, meaning) in LUNG_CODES.items():
            masks.append(lungs.mask == label)
            segments.append(hd.seg.SegmentDescription(
                segment_number=len(segments) + 1, segment_label=meaning,
                segmented_property_category=anatomy,
                segmented_property_type=CodedConcept(code, "SCT", meaning),
                algorithm_type="AUTOMATIC",
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name="covidct lungs", family=family, version=__version__)))
    infected = None if infection is None else infection > MAP_THRESHOLD
    if infected is not None and lungs is not None and lungs.mask is not None:
        infected &= lungs.mask > 0  # the map is reported inside the lungs (covidct.lungs)
    if infected is not None and infected.any():
        masks.append(infected)
        segments.append(hd.seg.SegmentDescription(
            segment_number=len(segments) + 1,
            segment_label=f"CovidCTNet infection map > {MAP_THRESHOLD}",
            segmented_property_category=CodedConcept("49755003", "SCT",
                                                     "Morphologically Abnormal Structure"),
            segmented_property_type=CodedConcept("52988006", "SCT", "Lesion"),
            algorithm_type="AUTOMATIC",
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="covidct covidctnet", family=family, version=__version__),
            anatomic_regions=[CodedConcept("39607008", "SCT", "Lung")]))
    if not segments or not any(m.any() for m in masks):
        return None
    pixels = np.stack(masks, axis=-1).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=list(sources), pixel_array=pixels, segmentation_type="BINARY",
        segment_descriptions=segments, series_instance_uid=new_uid(),
        series_number=SERIES_NUMBERS["seg"], sop_instance_uid=new_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name="covidct",
        software_versions=__version__, device_serial_number="none",
        content_label="COVIDCT", content_description=DISCLAIMER[:64],
        series_description=_series_description("SEG", synthetic))


# Key images ------------------------------------------------------------------------------

def burn_in(rgb: np.ndarray, caption: str) -> np.ndarray:
    """``rgb`` enlarged to a readable width, between two black bands that carry
    :data:`BURNT_IN_TEXT` (top and bottom) and ``caption``."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    if image.width < MIN_PICTURE_WIDTH:
        factor = -(-MIN_PICTURE_WIDTH // image.width)
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    band = 48
    sheet = Image.new("RGB", (image.width, image.height + 2 * band), "black")
    sheet.paste(image, (0, band))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 4), BURNT_IN_TEXT, fill=(255, 255, 0), font=font)
    draw.text((6, 26), caption, fill="white", font=font)
    draw.text((6, image.height + band + 14), BURNT_IN_TEXT, fill=(255, 255, 0), font=font)
    return np.asarray(sheet, dtype=np.uint8)


def _orientation_letters(ds: Any) -> tuple[str, str]:
    """PatientOrientation (row, column directions) from ImageOrientationPatient."""
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    vectors = np.reshape(np.asarray(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float), (2, 3))
    out = []
    for v in vectors:
        axis = int(np.argmax(np.abs(v)))
        out.append(letters[axis][int(v[axis] > 0)])
    return out[0], out[1]


#: How a key image names a model's explanation overlay (covidct.models.Model.overlay).
OVERLAY_TITLES = {"gradcam": "Grad-CAM", "infection": "infection map"}


def key_pictures(scan: Scan, pairs: Sequence[tuple[Any, Prediction]],
                 scan_maps: Sequence[dict[str, np.ndarray]]) -> list[tuple[int, np.ndarray, str]]:
    """(slice index, RGB picture with burnt-in text, caption) for the slices behind each call:
    each (model, prediction)'s :meth:`~covidct.models.Model.key_pictures`."""
    out = []
    for (model, prediction), maps in zip(pairs, scan_maps):
        tag = " SYNTHETIC" if prediction.synthetic else ""
        head = f"{prediction.method}: {prediction.label} {prediction.confidence:.0%}{tag}"
        title = OVERLAY_TITLES.get(model.overlay, model.overlay)
        for k, rgb in model.key_pictures(prediction, scan, KEY_IMAGES_PER_METHOD, maps):
            caption = f"{head}, slice {k + 1}: {title}"
            out.append((k, burn_in(rgb, caption), caption))
    return out


def build_key_images(sources: Sequence[Any], pictures: Sequence[tuple[int, np.ndarray, str]],
                     synthetic: bool = False) -> list[Any]:
    """Secondary-capture images of ``pictures``, each referencing its source slice."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    series_uid = new_uid()
    images = []
    for number, (k, rgb, caption) in enumerate(pictures, start=1):
        source = sources[k]
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=series_uid,
            series_number=SERIES_NUMBERS["key"], sop_instance_uid=new_uid(),
            instance_number=number, manufacturer=MANUFACTURER,
            patient_orientation=_orientation_letters(source),
            series_description=_series_description("key images", synthetic))
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [reference]
        # dciodvfy asks for Laterality unless the body part says the structure is not paired.
        sc.BodyPartExamined = str(source.get("BodyPartExamined") or "CHEST")
        sc.ImageComments = f"{BURNT_IN_TEXT}. {caption}"[:10240]
        sc.DerivationDescription = caption[:1024]
        images.append(sc)
    return images


def build_key_object_selection(key_images: Sequence[Any], synthetic: bool = False):
    """A Key Object Selection document ("For Research", CID 7010) flagging the key images,
    so that viewers which list key images show them; None without key images."""
    import highdicom as hd
    from highdicom.sr import CodedConcept, DeviceObserverIdentifyingAttributes, ObserverContext

    if not key_images:
        return None
    device = ObserverContext(observer_type=CodedConcept("121007", "DCM", "Device"),
                             observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                                 uid=new_uid(), name="covidct"))
    content = hd.ko.KeyObjectSelection(
        document_title=CodedConcept("113007", "DCM", "For Research"),
        referenced_objects=list(key_images), observer_device_context=device,
        description=f"covidct key images. {BURNT_IN_TEXT}")
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(key_images), content=content, series_instance_uid=new_uid(),
        series_number=SERIES_NUMBERS["ko"], sop_instance_uid=new_uid(), instance_number=1,
        manufacturer=MANUFACTURER, series_description=_series_description("key objects", synthetic))


# Putting it together ---------------------------------------------------------------------

def build_outputs(sources: Sequence[Any], scan: Scan, models: Sequence[Any],
                  predictions: Sequence[Prediction], lungs: LungFindings | None = None) -> list[Any]:
    """SR, SEG (when there is something to segment) and key images for one series."""
    synthetic = scan.synthetic or any(p.synthetic for p in predictions)
    by_method = {m.method: m for m in models}
    pairs = [(by_method[p.method], p) for p in predictions if p.method in by_method]
    scan_maps = [model.scan_maps(prediction, scan) for model, prediction in pairs]
    infection = next((m["infection"] for m in scan_maps if "infection" in m), None)
    outputs = [build_sr(sources, scan, predictions, lungs)]
    seg = build_seg(sources, scan, infection, lungs, synthetic)
    if seg is not None:
        outputs.append(seg)
    else:
        log.info("no SEG: no lungs found and no infection map above %s", MAP_THRESHOLD)
    key_images = build_key_images(sources, key_pictures(scan, pairs, scan_maps), synthetic)
    selection = build_key_object_selection(key_images, synthetic)
    return outputs + key_images + ([selection] if selection is not None else [])


def output_name(ds: Any) -> str:
    """A file name that says what the object is, without identifiers."""
    kind = {"SR": "sr", "SEG": "seg", "KO": "ko"}.get(str(ds.Modality), "key")
    return f"{kind}-{int(ds.SeriesNumber)}-{int(ds.InstanceNumber):03d}.dcm"


def save_outputs(datasets: Sequence[Any], out_dir: str | os.PathLike) -> list[Path]:
    """Write each object as ``<kind>-<series>-<n>.dcm`` into ``out_dir``, all at once: the folder
    (0700, files 0600, since they carry the patient module) appears complete or not at all,
    replacing an earlier one."""
    from .atomic import atomic_dir

    out_dir = Path(out_dir)
    names = [output_name(ds) for ds in datasets]
    with atomic_dir(out_dir) as tmp:  # mkdtemp: 0700
        for ds, name in zip(datasets, names):
            ds.save_as(tmp / name, enforce_file_format=True)
            os.chmod(tmp / name, 0o600)
    return [out_dir / name for name in names]


def predict_to_dicom(scan_path: str | os.PathLike, models: Sequence[Any], dicom_dir: str | os.PathLike,
                     out_dir: str | os.PathLike | None = None, pictures: bool = True,
                     lungs: LungFindings | None = None,
                     scan: Scan | None = None) -> tuple[list[Prediction], list[Path]]:
    """``covidct predict SCAN --dicom-out DIR`` and the DICOM node: predict (the library's
    checks and refusals), then write the DICOM outputs with the lung findings of
    :func:`lung_findings` unless ``lungs`` is given (and the usual files when ``out_dir`` is).
    ``scan`` is the series already read from ``scan_path`` (the CLI has read and checked it),
    so that only the headers are read again, for the references to the source images."""
    from .predict import predict, predict_to_folder
    from .scanio import load_scan

    with dicom_source(scan_path) as folder:
        scan = scan if scan is not None else load_scan(folder)
        if scan.metadata.get("source_format") != "dicom":
            raise ScanError("DICOM outputs (--dicom-out) need a DICOM series as input", scan_path)
        sources = source_datasets(folder, scan)
    if out_dir is not None:
        predictions = predict_to_folder(scan, models, out_dir, pictures=pictures)
    else:
        predictions = predict(scan, models)
    if lungs is None:  # the mask the predictions used, not a second one
        lungs = lung_findings(scan, predictions)
    datasets = build_outputs(sources, scan, models, predictions, lungs)
    return predictions, save_outputs(datasets, dicom_dir)
