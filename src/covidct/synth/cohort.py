"""Write a SYNTHETIC labelled cohort in every layout the project reads (``covidct synth``).

One run writes, into a temporary folder beside ``out`` that replaces it only when complete:

    README.md              what this is (SYNTHETIC), settings, counts, folder guide
    synth.json             the settings (marks the folder as a covidct synth cohort)
    labels.csv             one row per patient: class, split, geometry, paths, lesion share
    patients/<pid>/dicom/  CT DICOM series (SeriesDescription says SYNTHETIC)
    patients/<pid>/ct.nii.gz, lesions.nii.gz   the CT and its lesion labels (same grid)
    patients/<pid>/lungs.nii.gz   the true lung mask: 1 right lung, 2 left lung (same grid)
    covidx/images/*.png    COVIDx CT-style slices: lung window, 512x512, 8-bit
    covidx/lesion_masks/*.png   each slice's infection mask (255 lesion), same name and grid
    covidx/{train,val,test}_COVIDx_CT-2A.txt   split files: filename class xmin ymin xmax ymax
    covidctnet/{Control,CAP,Covid}/<pid>.nii.gz   CovidCTNet folder-per-class layout
    montage.png            one representative slice per patient (first 12)

Patients are balanced over the classes and split by patient (a patient's slices all go to
one split). Everything is a function of the seed and the settings: the same command writes
the same PNG, NIfTI and DICOM bytes and the same CSV.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, is_private, private_files
from ..constants import SLICE_CLASSES, SPLITS, SYNTHETIC_NOTICE, SYNTHETIC_TAG, VOLUME_CLASS_FOLDERS
from ..covidx import IMAGES_DIR, SPLIT_SUFFIX, split_path
from ..errors import CovidctError
from ..scan import Scan
from ..scanio import write_dicom_series, write_nifti
from ..windowing import COVIDX_LUNG, body_box
from .findings import LESION_NAMES
from .patient import VISIBLE_LESION_MM2, Patient, make_patient
from .settings import FORMATS, CohortSettings  # noqa: F401  (re-exported: covidct.synth.cohort.CohortSettings)

#: COVIDx CT images are 512x512.
COVIDX_SIZE = 512
#: Folder beside covidx/images/ with each slice's lesion mask under the same file name.
LESION_MASKS = "lesion_masks"
MONTAGE_PATIENTS = 12
SETTINGS_FILE = "synth.json"
#: DICOM PatientName of every phantom (the PatientID is the synthetic patient id).
PATIENT_NAME = "SYNTHETIC^PHANTOM"


@dataclass
class PatientRecord:
    patient_id: str
    label: str
    volume_label: str
    split: str
    n_slices: int
    spacing_z: float
    spacing_y: float
    spacing_x: float
    dicom: str
    nifti: str
    lesions: str
    lungs: str
    lesion_fraction: float
    covidx_prefix: str
    covidx_slices: int
    findings: str


@dataclass
class CohortSummary:
    out: Path
    settings: CohortSettings
    records: list[PatientRecord] = field(default_factory=list)
    covidx_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """Patients per split and class."""
        table = {s: {c: 0 for c in SLICE_CLASSES} for s in SPLITS}
        for r in self.records:
            table[r.split][r.label] += 1
        return table

    def lines(self) -> list[str]:
        counts = self.counts()
        per_class = {c: sum(counts[s][c] for s in SPLITS) for c in SLICE_CLASSES}
        out = [f"SYNTHETIC cohort written to {self.out} (phantoms, not patients)",
               f"  patients: {len(self.records)} ("
               + ", ".join(f"{c} {n}" for c, n in per_class.items()) + ")"]
        for s in SPLITS:
            line = f"  {s:5s}: " + ", ".join(f"{c} {counts[s][c]}" for c in SLICE_CLASSES)
            if self.covidx_counts:
                line += f"; COVIDx slices {sum(self.covidx_counts[s].values())}"
            out.append(line)
        out.append(f"  labels: {self.out / 'labels.csv'}; guide: {self.out / 'README.md'}; "
                   f"montage: {self.out / 'montage.png'}")
        return out


# ----------------------------------------------------------------------------------------


def patient_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Patient ``index``'s own random stream: its phantom does not depend on the cohort size."""
    return np.random.SeedSequence(int(seed), spawn_key=(1, int(index)))


#: Share of patients that get each variant listed in CohortSettings.variants.
VARIANT_SHARE = 0.5


def patient_variants(settings: CohortSettings, index: int) -> tuple[str, ...]:
    """The harder-anatomy variants of patient ``index``, from their own random stream (so the
    rest of the patient is the same with or without variants)."""
    if not settings.variants:
        return ()
    rng = np.random.default_rng([settings.seed, index, 1414])
    return tuple(v for v in settings.variants if rng.random() < VARIANT_SHARE)


def assign_classes(n: int, rng: np.random.Generator) -> list[str]:
    """Balanced classes (counts differ by at most one), in a seeded random order."""
    labels = [SLICE_CLASSES[i % len(SLICE_CLASSES)] for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]


def assign_splits(labels: list[str], fractions: tuple[float, float, float],
                  rng: np.random.Generator) -> list[str]:
    """Split by patient, stratified: classes are interleaved before the cut.

    Sizes follow the fractions by largest remainder; every split with a positive fraction
    gets at least one patient when there are enough patients.
    """
    n = len(labels)
    frac = np.asarray(fractions, float) / float(sum(fractions))
    sizes = np.floor(frac * n).astype(int)
    for k in np.argsort(-(frac * n - sizes), kind="stable")[: n - sizes.sum()]:
        sizes[k] += 1
    wanted = frac > 0
    while n >= wanted.sum() and np.any(wanted & (sizes == 0)):
        sizes[np.argmax(wanted & (sizes == 0))] += 1
        sizes[np.argmax(sizes)] -= 1
    queues = [list(rng.permutation([i for i, lab in enumerate(labels) if lab == c]))
              for c in SLICE_CLASSES]
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(int(q.pop(0)))
    out = [""] * n
    start = 0
    for split, size in zip(SPLITS, sizes):
        for i in order[start:start + size]:
            out[i] = split
        start += size
    return out


#: Most worker processes a cohort is written with by default: each holds one phantom (about
#: a gigabyte at --matrix 512), so more would trade memory for little.
MAX_WORKERS = 4


def default_workers(patients: int) -> int:
    """One process per available core, at most MAX_WORKERS and at most one per patient."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS, patients))


def generate_cohort(out: str | os.PathLike, settings: CohortSettings = CohortSettings(), *,
                    progress: bool = True, workers: int | None = None) -> CohortSummary:
    """Generate and write a SYNTHETIC cohort into ``out`` (atomically; see the module doc).

    ``out`` may already hold an earlier cohort (it is replaced); any other non-empty folder
    is refused rather than deleted. Patients are made in ``workers`` processes (default
    :func:`default_workers`); every patient has its own random stream and is gathered in
    order, so any number of workers writes the same bytes.
    """
    from tqdm import tqdm

    settings.check()
    out = Path(out)
    _refuse_foreign(out)
    workers = default_workers(settings.patients) if workers is None else int(workers)
    if workers < 1:
        raise CovidctError(f"--workers must be at least 1, got {workers}")
    cohort_rng = np.random.default_rng(np.random.SeedSequence(int(settings.seed), spawn_key=(0,)))
    labels = assign_classes(settings.patients, cohort_rng)
    splits = assign_splits(labels, settings.split, cohort_rng)
    summary = CohortSummary(out=out, settings=settings)
    covidx_lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    montage: list[tuple[str, str, np.ndarray]] = []
    with atomic_dir(out) as tmp:
        jobs = [_Job(tmp, settings, i, label, split, is_private())
                for i, (label, split) in enumerate(zip(labels, splits))]
        with tqdm(total=settings.patients, desc="synth", unit="patient", file=sys.stderr,
                  disable=not progress) as bar, _patients_made(jobs, workers) as done:
            for job, (record, lines, representative) in zip(jobs, done):
                covidx_lines[job.split] += lines
                summary.records.append(record)
                if representative is not None:
                    montage.append((record.patient_id, record.label, representative))
                bar.set_postfix_str(f"{record.patient_id} {record.label}")
                bar.update(1)
        if "covidx" in settings.formats:
            summary.covidx_counts = _write_split_files(tmp / "covidx", covidx_lines)
        _write_labels(tmp / "labels.csv", summary.records)
        _write_montage(tmp / "montage.png", montage)
        (tmp / SETTINGS_FILE).write_text(json.dumps(_settings_json(settings), indent=2) + "\n",
                                         encoding="utf-8")
        (tmp / "README.md").write_text(_readme(summary), encoding="utf-8")
    return summary


@dataclass(frozen=True)
class _Job:
    """One patient to make and write (picklable: it travels to a worker process)."""

    root: Path
    settings: CohortSettings
    index: int
    label: str
    split: str
    private: bool   # atomic.private_files() is per thread: the worker must enter it again


@contextmanager
def _patients_made(jobs: list[_Job], workers: int):
    """Yield an iterator of _make_and_write's results, in the order of ``jobs``."""
    if workers == 1 or len(jobs) <= 1:
        yield map(_make_and_write, jobs)
        return
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may hold threads (tqdm's monitor, PyTorch's pools) whose
    # locks a forked child would inherit held. An executor, not multiprocessing.Pool: a
    # worker that dies breaks it (an error) instead of being replaced forever (a hang).
    pool = ProcessPoolExecutor(min(workers, len(jobs)), initializer=_one_thread_each,
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        yield _unbroken(pool.map(_make_and_write, jobs))
    finally:
        # patients not started are dropped; running ones finish before the folder goes
        pool.shutdown(wait=True, cancel_futures=True)


def _unbroken(results):
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield from results
    except BrokenProcessPool:
        raise CovidctError("a worker process making patients died (out of memory? or a script "
                           "calling generate_cohort without `if __name__ == \"__main__\":`); "
                           "rerun with --workers 1 (nothing was written)") from None


_limits = None


def _one_thread_each() -> None:
    """The workers share the cores: one BLAS thread each, or they would oversubscribe them."""
    global _limits
    from threadpoolctl import threadpool_limits

    _limits = threadpool_limits(limits=1)


def _make_and_write(job: _Job) -> tuple[PatientRecord, list[str], np.ndarray | None]:
    """Make patient ``job.index`` from its own random stream and write it: its record, its
    COVIDx split-file lines, and its montage tile (the first MONTAGE_PATIENTS only)."""
    if job.private and not is_private():
        with private_files():
            return _make_and_write(job)
    settings = job.settings
    number = job.index + 1
    patient = make_patient(job.label, seed=patient_seed(settings.seed, job.index),
                           difficulty=settings.difficulty,
                           matrix=settings.matrix, slice_mm=settings.slice_mm,
                           max_slices=settings.max_slices,
                           variants=patient_variants(settings, job.index))
    record, lines = _write_patient(job.root, patient, f"SYN{number:04d}", number, job.split,
                                   settings)
    tile = _representative(patient) if job.index < MONTAGE_PATIENTS else None
    return record, lines, tile


def _refuse_foreign(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CovidctError("exists and is not a folder; choose another --out", out)
    if out.is_dir() and any(out.iterdir()) and not (out / SETTINGS_FILE).is_file():
        raise CovidctError("folder exists, is not empty and is not a covidct synth cohort; "
                           "choose another --out (nothing was deleted)", out)


def _settings_json(settings: CohortSettings) -> dict:
    data = asdict(settings)
    if not data["variants"]:
        del data["variants"]  # so that cohorts made before variants existed still match
    data["synthetic"] = True
    data["notice"] = SYNTHETIC_NOTICE
    return data


# ----------------------------------------------------------------------------------------
# One patient


def _write_patient(root: Path, patient: Patient, pid: str, number: int, split: str,
                   settings: CohortSettings) -> tuple[PatientRecord, list[str]]:
    from pydicom.uid import generate_uid

    formats = settings.formats
    folder = root / "patients" / pid
    scan = patient.scan
    dicom = nifti = lesions = lungs = ""
    if "dicom" in formats:
        series_uid = generate_uid(entropy_srcs=["covidct synth", str(settings.seed), pid, "series"])
        study_uid = generate_uid(entropy_srcs=["covidct synth", str(settings.seed), pid, "study"])
        write_dicom_series(scan, folder / "dicom", patient_id=pid, patient_name=PATIENT_NAME,
                           series_description=SYNTHETIC_TAG, study_uid=study_uid,
                           series_uid=series_uid)
        dicom = f"patients/{pid}/dicom"
    if "nifti" in formats:
        write_nifti(scan, folder / "ct.nii.gz", description=SYNTHETIC_TAG)
        write_nifti(_label_scan(patient), folder / "lesions.nii.gz",
                    description="lesion labels 1-5, see README")
        write_nifti(_label_scan(patient, true_lung_labels(patient)), folder / "lungs.nii.gz",
                    description="lungs: 1 right, 2 left")
        nifti, lesions = f"patients/{pid}/ct.nii.gz", f"patients/{pid}/lesions.nii.gz"
        lungs = f"patients/{pid}/lungs.nii.gz"
    if "covidctnet" in formats:
        target = root / "covidctnet" / _volume_folder(patient.label) / f"{pid}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        if nifti:
            _link_or_copy(root / nifti, target)
        else:
            write_nifti(scan, target, description=SYNTHETIC_TAG)
    prefix = f"{patient.label}_{number}_{1000 + number}"
    lines = _write_covidx(root / "covidx", patient, prefix) if "covidx" in formats else []
    sz, sy, sx = scan.spacing
    record = PatientRecord(
        patient_id=pid, label=patient.label, volume_label=patient.volume_label, split=split,
        n_slices=scan.n_slices, spacing_z=round(sz, 4), spacing_y=round(sy, 4),
        spacing_x=round(sx, 4), dicom=dicom, nifti=nifti, lesions=lesions, lungs=lungs,
        lesion_fraction=round(patient.lesion_fraction, 5),
        covidx_prefix=prefix if "covidx" in formats else "", covidx_slices=len(lines),
        findings=patient.describe_findings())
    return record, lines


def true_lung_labels(patient: Patient) -> np.ndarray:
    """The phantom's lungs as lungmask labels them: 1 the patient's right lung, 2 the left.

    The phantoms are axial in LPS order, so x grows towards the patient's left; the
    mediastinum separates the lungs, so the midline between them splits them cleanly.
    """
    lung = patient.lung
    if not lung.any():
        return np.zeros(lung.shape, np.uint8)
    x = np.arange(lung.shape[2])
    midline = float(np.average(x, weights=lung.sum(axis=(0, 1))))
    return np.where(lung, np.where(x > midline, 2, 1), 0).astype(np.uint8)


def _label_scan(patient: Patient, labels: np.ndarray | None = None) -> Scan:
    # scanio writes 8-bit data for "windowed" scans: the labels stay small integers.
    scan = patient.scan
    voxels = patient.lesions if labels is None else labels
    return Scan(voxels=voxels, spacing=scan.spacing, units="windowed",
                origin=scan.origin, direction=scan.direction, source=scan.source,
                metadata={"synthetic": True, "modality": "SEG"})


def _volume_folder(label: str) -> str:
    return VOLUME_CLASS_FOLDERS[SLICE_CLASSES.index(label)]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def covidx_slice_indices(patient: Patient) -> np.ndarray:
    """COVIDx's selection: CP/NCP slices showing visible infection (any infection when no
    slice reaches that, so every diseased phantom contributes); Normal slices showing lung."""
    if patient.label == "Normal":
        return patient.lung_slices()
    visible = patient.lesion_slices(VISIBLE_LESION_MM2)
    return visible if visible.size else patient.lesion_slices()


def _to_covidx_size(hu_slice: np.ndarray) -> np.ndarray:
    if hu_slice.shape == (COVIDX_SIZE, COVIDX_SIZE):
        return hu_slice
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(hu_slice, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize((COVIDX_SIZE, COVIDX_SIZE), Image.BILINEAR), dtype=np.float32)


def _write_covidx(folder: Path, patient: Patient, prefix: str) -> list[str]:
    """PNG slices named class_patient_scan_slice.png and their split-file lines."""
    from ..scanio.images import write_png

    images = folder / IMAGES_DIR
    lines = []
    class_id = SLICE_CLASSES.index(patient.label)
    infection = patient.infection  # a property that labels the whole volume: once, not per slice
    for k in covidx_slice_indices(patient):
        # COVIDx names carry the slice's own index after an underscore.
        name = f"{prefix}_{int(k):04d}.png"
        pixels = COVIDX_LUNG.to_uint8(_to_covidx_size(patient.scan.voxels[k]))
        write_png(images / name, pixels, synthetic=patient.scan.synthetic)
        xmin, ymin, xmax, ymax = body_box(pixels)
        lines.append(f"{name} {class_id} {xmin} {ymin} {xmax} {ymax}")
        _write_lesion_png(folder / LESION_MASKS / name, infection[k])
    return lines


def _write_lesion_png(path: Path, infection: np.ndarray) -> None:
    """The slice's infection mask on the PNG's 512 x 512 grid (255 lesion, 0 not), beside the
    images, so a slice explanation can be scored on the same body crop the classifier read."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(np.where(infection, 255, 0).astype(np.uint8))
    if mask.size != (COVIDX_SIZE, COVIDX_SIZE):
        mask = mask.resize((COVIDX_SIZE, COVIDX_SIZE), Image.NEAREST)
    mask.save(path, format="PNG", optimize=False)


def _representative(patient: Patient) -> np.ndarray:
    """The slice with most infection (most lung for Normal), lung window, 8-bit."""
    if patient.label != "Normal" and patient.lesion_slices().size:
        k = int(np.argmax(patient.infection.sum(axis=(1, 2))))
    else:
        k = int(np.argmax(patient.lung.sum(axis=(1, 2))))
    return COVIDX_LUNG.to_uint8(_to_covidx_size(patient.scan.voxels[k]))


# ----------------------------------------------------------------------------------------
# Cohort files


def _write_split_files(folder: Path, lines: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        text = "".join(line + "\n" for line in lines[split])
        split_path(folder, split).write_text(text, encoding="utf-8")
        per_class = {c: 0 for c in SLICE_CLASSES}
        for line in lines[split]:
            per_class[SLICE_CLASSES[int(line.split()[1])]] += 1
        counts[split] = per_class
    return counts


def _write_labels(path: Path, records: list[PatientRecord]) -> None:
    columns = list(PatientRecord.__dataclass_fields__)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow(asdict(r))


def _write_montage(path: Path, tiles: list[tuple[str, str, np.ndarray]]) -> None:
    """A grid of 256-px tiles, each captioned with patient and class, under a SYNTHETIC banner."""
    from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

    tile, caption, banner = 256, 26, 40
    cols = min(4, max(1, len(tiles)))
    rows = max(1, -(-len(tiles) // cols))
    sheet = Image.new("RGB", (cols * tile, banner + rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((cols * tile / 2, banner / 2), "SYNTHETIC phantoms (covidct synth): not patients",
              fill=(150, 0, 0), font=ImageFont.load_default(size=20), anchor="mm")
    font = ImageFont.load_default(size=16)
    for n, (pid, label, image) in enumerate(tiles):
        x, y = (n % cols) * tile, banner + (n // cols) * (tile + caption)
        draw.text((x + tile / 2, y + caption / 2), f"{pid}: {label}", fill="black", font=font,
                  anchor="mm")
        small = Image.fromarray(image).resize((tile, tile), Image.BILINEAR)
        sheet.paste(small.convert("RGB"), (x, y + caption))
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SYNTHETIC_TAG)
    sheet.save(path, format="PNG", pnginfo=info)


def _readme(summary: CohortSummary) -> str:
    s = summary.settings
    counts = summary.counts()
    header = "| split | " + " | ".join(SLICE_CLASSES) + " | patients |"
    rows = [header, "|" + "---|" * (len(SLICE_CLASSES) + 2)]
    for split in SPLITS:
        n = [counts[split][c] for c in SLICE_CLASSES]
        rows.append(f"| {split} | " + " | ".join(map(str, n)) + f" | {sum(n)} |")
    slice_rows = []
    if summary.covidx_counts:
        slice_rows = ["", "COVIDx PNG slices per split and class:", "",
                      "| split | " + " | ".join(SLICE_CLASSES) + " |",
                      "|" + "---|" * (len(SLICE_CLASSES) + 1)]
        for split in SPLITS:
            slice_rows.append(f"| {split} | " + " | ".join(
                str(summary.covidx_counts[split][c]) for c in SLICE_CLASSES) + " |")
    legend = ", ".join(f"{k} {v}" for k, v in LESION_NAMES.items())
    folders = [
        ("labels.csv", "one row per patient: class (Normal/CP/NCP and the CovidCTNet name "
                       "Control/CAP/COVID-19), split, slice count and spacing (mm), paths, the "
                       "share of lung taken by infection, the findings painted"),
        ("patients/<pid>/dicom/", "the CT as a DICOM series (SeriesDescription "
                                  f"'{SYNTHETIC_TAG}', PatientName {PATIENT_NAME})"),
        ("patients/<pid>/ct.nii.gz", "the CT in HU (NIfTI)"),
        ("patients/<pid>/lesions.nii.gz", f"lesion labels on the same grid: 0 none, {legend} "
                                          "(1-4 are infection; 5 is a normal variant)"),
        (f"covidx/{IMAGES_DIR}/", "COVIDx CT-style PNG slices (lung window center -600 width 1500, "
                           "512x512, 8-bit), named class_patient_scan_slice.png"),
        ("covidx/lesion_masks/", "each COVIDx slice's infection mask (labels 1-4; 255 "
                                 "lesion, 0 not) under the image's file name, same 512x512 "
                                 "grid, for scoring explanations"),
        (f"covidx/*{SPLIT_SUFFIX}", "split files as COVIDx: filename class xmin ymin xmax "
                                      "ymax (0 Normal, 1 CP, 2 NCP; box = body crop); CP/NCP "
                                      "patients contribute slices showing infection, Normal "
                                      "patients slices showing lung"),
        ("covidctnet/{Control,CAP,Covid}/", "CovidCTNet folder-per-class layout of the NIfTI CTs"),
        ("montage.png", "one representative lung-window slice for each of the first "
                        f"{MONTAGE_PATIENTS} patients"),
        (SETTINGS_FILE, "the settings of this run"),
    ]
    text = [
        "# SYNTHETIC chest-CT cohort",
        "",
        f"**{SYNTHETIC_NOTICE}**",
        "",
        "Made by `covidct synth`. Every CT here is a computer-generated phantom with painted "
        "findings; no person was scanned.",
        "",
        "## Settings",
        "",
        f"- seed: {s.seed}",
        f"- patients: {s.patients}",
        f"- difficulty: {s.difficulty}",
        f"- in-plane matrix: {s.matrix} (field of view kept; pixel size follows)",
        f"- slice spacing: {s.slice_mm[0]}-{s.slice_mm[1]} mm; at most "
        f"{s.max_slices or 'unlimited'} slices per scan",
        f"- split fractions (train val test): {' '.join(map(str, s.split))}",
        f"- formats: {', '.join(s.formats)}",
        "",
        "Regenerate: `covidct synth --out DIR "
        f"--patients {s.patients} --seed {s.seed} --difficulty {s.difficulty} "
        f"--matrix {s.matrix} --slice-mm {s.slice_mm[0]} {s.slice_mm[1]} "
        f"--max-slices {s.max_slices or 0} --split {' '.join(map(str, s.split))} "
        f"--formats {','.join(s.formats)}` writes the same files.",
        "",
        "## Patients per split and class",
        "",
        *rows,
        *slice_rows,
        "",
        "## What is where",
        "",
        *[f"- `{name}`: {what}" for name, what in folders if _present(name, s.formats)],
        "",
    ]
    return "\n".join(text)


def _present(name: str, formats: tuple[str, ...]) -> bool:
    needs = {"patients/<pid>/dicom/": "dicom", "patients/<pid>/ct.nii.gz": "nifti",
             "patients/<pid>/lesions.nii.gz": "nifti", f"covidx/{IMAGES_DIR}/": "covidx",
             f"covidx/*{SPLIT_SUFFIX}": "covidx", "covidx/lesion_masks/": "covidx", "covidctnet/{Control,CAP,Covid}/": "covidctnet"}
    return needs.get(name, "") in ("", *formats)
