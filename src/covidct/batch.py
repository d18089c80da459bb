"""Prediction over an archive of scans in parallel worker processes, with a resumable manifest.

``predict_batch(input_dir, out_dir, workers=N)`` treats every entry directly under
``input_dir`` (a DICOM folder, zip or file, a NIfTI file, a picture or a folder of slices;
hidden entries skipped) as one scan. Each scan's outputs go to ``out_dir/scans/<name>/``
(what ``covidct predict --out`` writes), and ``out_dir/manifest.csv`` gets one row per scan:
status ``ok`` or ``error`` (with the one-line reason), labels, probabilities, seconds, and
the model files' digests.

* Scans are named in the manifest, the output folders and on the terminal by a digest of
  their name keyed by a salt kept in ``out_dir`` (``scan-3f2a...``) and by their position
  (``index``, natural order), since archive names often carry identifiers; ``--show-paths``
  uses the names.
* The manifest is rewritten atomically after every finished scan, so an interrupted run
  leaves a manifest of exactly the scans that finished.
* A rerun skips scans whose row is ``ok`` for the same model files and whose outputs are
  complete; failed scans are tried again.
* A scan that fails (unreadable, not a CT, ...) is recorded and does not stop the others.

Each worker loads the models once and uses ``cpu_count // workers`` torch (or ONNX
Runtime) threads, so N workers share the machine rather than oversubscribe it. Workers are
started with ``spawn`` (no fork of a process whose thread pools already run); what each
does is :mod:`covidct.batch_worker`. With ``scheduler=`` the same per-scan function runs as
Dask tasks on a cluster's workers (:mod:`covidct.batch_dask`); the manifest is still written
here, by the driver.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .atomic import private_files, write_text
from .batch_dask import run_on_dask
from .batch_worker import STATUS_OK, init_worker, predict_one, worker_died_row
from .digest import file_digest
from .errors import CovidctError, DatasetError
from .predict import check_writable
from .privacy import folder_salt, pseudonym, show_paths
from .scanio.common import SCAN_SUFFIXES, natural_key, suffix_of, without_scan_suffix

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
FIELDS = ("scan", "index", "status", "labels", "probabilities", "synthetic", "seconds", "models",
          "outputs", "error")


@dataclass(frozen=True)
class BatchSummary:
    total: int
    done: int        # finished in this run
    skipped: int     # already finished in an earlier run
    failed: int      # errors in this run
    manifest: Path

    def line(self) -> str:
        return (f"{self.total} scans: {self.done} predicted, {self.skipped} already done, "
                f"{self.failed} failed; manifest {self.manifest}")


def discover_scans(input_dir: str | os.PathLike) -> list[Path]:
    """The scans of an archive folder: its visible files with a scan suffix and its folders."""
    root = Path(input_dir)
    if not root.is_dir():
        raise DatasetError("not a folder of scans", root)
    found = [p for p in root.iterdir() if not p.name.startswith(".") and
             (p.is_dir() or suffix_of(p) in SCAN_SUFFIXES)]
    if not found:
        raise DatasetError("no scans in this folder (expected DICOM folders/zips, NIfTI files "
                           "or pictures)", root)
    return sorted(found, key=lambda p: natural_key(p.name))


def output_name(scan: Path) -> str:
    """A folder name for a scan's outputs: its name with suffixes and odd characters removed."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", without_scan_suffix(scan.name)) or "scan"


# The manifest ------------------------------------------------------------------------------

def read_manifest(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "scan" not in reader.fieldnames:
            raise DatasetError("not a covidct batch manifest (no 'scan' column)", path)
        return {row["scan"]: row for row in reader}


def write_manifest(path: str | os.PathLike, rows: dict[str, dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for name in sorted(rows, key=lambda n: (_index(rows[n]), natural_key(n))):
        writer.writerow({k: rows[name].get(k, "") for k in FIELDS})
    with private_files():  # labels of patients: 0600
        return write_text(path, buffer.getvalue())


def _index(row: dict[str, Any]) -> int:
    try:
        return int(row.get("index") or 0)
    except ValueError:
        return 0


def _is_finished(row: dict[str, str] | None, models_key: str, out_dir: Path) -> bool:
    return bool(row and row.get("status") == STATUS_OK and row.get("models") == models_key
                and (out_dir / row.get("outputs", "") / "summary.json").is_file())


# The driver --------------------------------------------------------------------------------

def model_key(model_paths: Sequence[str | os.PathLike]) -> str:
    """Which model files made a row: ``name:sha256[:16]`` of each, joined."""
    return ";".join(f"{Path(p).name}:{file_digest(p)[:16]}" for p in model_paths)


def predict_batch(input_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  model_paths: Sequence[str | os.PathLike], workers: int = 1,
                  runtime: str = "torch", pictures: bool = False, threads: int | None = None,
                  on_row: Callable[[dict[str, Any]], None] | None = None,
                  scheduler: str | None = None, resources: dict[str, float] | None = None
                  ) -> BatchSummary:
    """Predict every scan under ``input_dir`` with the given model files (see module doc).

    ``workers=0`` runs in this process (no start-up cost; for small jobs and debugging).
    ``scheduler``: run each scan as a task on a Dask cluster instead (a scheduler address,
    or "local" for a LocalCluster of ``workers`` processes on this machine; see
    :mod:`covidct.batch_dask`); ``resources``: what each task needs of a worker (e.g.
    ``{"GPU": 1}``), Dask clusters only.
    """
    from .export import RUNTIME_CHOICES  # torch: imported only once a run is checked

    if runtime not in RUNTIME_CHOICES:
        raise CovidctError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIME_CHOICES)}")
    if not model_paths:
        raise CovidctError("no model files given")
    scans = discover_scans(input_dir)
    out_dir = Path(out_dir)
    check_writable(out_dir)  # made 0700 when new; a read-only folder fails before any work
    manifest_path = out_dir / MANIFEST
    rows: dict[str, dict[str, Any]] = dict(read_manifest(manifest_path))
    key = model_key(model_paths)
    ids = _scan_ids(scans, out_dir)
    todo = [s for s in scans if not _is_finished(rows.get(ids[s]), key, out_dir)]
    skipped = len(scans) - len(todo)
    names = _unique_output_names(scans) if show_paths() else ids
    position = {s: k + 1 for k, s in enumerate(scans)}
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    init_args = ([str(p) for p in model_paths], runtime, threads, pictures)
    done = failed = 0

    def record(row: dict[str, Any]) -> None:
        nonlocal done, failed
        row["models"] = key
        rows[row["scan"]] = row
        write_manifest(manifest_path, rows)  # atomically, after every scan
        done += row["status"] == STATUS_OK
        failed += row["status"] != STATUS_OK
        if on_row:
            on_row(row)

    jobs = [(str(s), str(out_dir / "scans" / names[s]), ids[s], position[s]) for s in todo]
    if scheduler and jobs:
        for row in run_on_dask(jobs, init_args, scheduler, workers, resources,
                               threads_given=threads is not None):
            record(row)
    elif workers <= 0:
        init_worker(*init_args)
        for job in jobs:
            record(predict_one(*job))
    elif jobs:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                 initializer=init_worker, initargs=init_args) as pool:
            futures = {pool.submit(predict_one, *job): job for job in jobs}
            for future in as_completed(futures):
                try:
                    record(future.result())
                except BrokenProcessPool as exc:  # a worker died (memory, a crash in a library)
                    record(worker_died_row(*futures[future], exc))
    if not manifest_path.is_file():
        write_manifest(manifest_path, rows)
    return BatchSummary(len(scans), done, skipped, failed, manifest_path)


def _scan_ids(scans: Sequence[Path], out_dir: Path) -> dict[Path, str]:
    """Each scan's name in the manifest and output folders: a digest of its name keyed by the
    output folder's salt (stable across reruns there), or the name with --show-paths."""
    if show_paths():
        return {s: s.name for s in scans}
    salt = folder_salt(out_dir)
    return {s: pseudonym(s.name, salt, prefix="scan") for s in scans}


def _unique_output_names(scans: Sequence[Path]) -> dict[Path, str]:
    """Output folder per scan; "a.nii.gz" and "a" (a folder) would clash, so count them."""
    seen: dict[str, int] = {}
    names = {}
    for scan in scans:
        base = output_name(scan)
        seen[base] = seen.get(base, 0) + 1
        names[scan] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return names
