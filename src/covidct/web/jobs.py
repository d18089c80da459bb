"""Jobs: an embedded SQLite store and a bounded worker pool that runs the models on uploads.

A job is one uploaded scan. Its row moves ``queued -> running -> done | failed``; the result
(JSON) is written into the row, and the arrays the slice viewer needs (the scan's voxels at
display resolution and CovidCTNet's infection map) into ``results/<id>/viewer/`` as plain
``.npy`` files (written and memory-mapped in a fraction of a second; a compressed archive of
the full volume took half the upload-to-result time), before the job counts as done.
A restart therefore loses nothing that finished; jobs that were still queued or running
when the server stopped are marked failed (their uploads lived in the work folder, which is
private to one server process and emptied at start-up).

The work runs in a ThreadPoolExecutor: torch releases the GIL during inference, and one lock
per model serialises calls into a network (Grad-CAM hooks must not see another job's pass).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import jsonable
from ..constants import DISCLAIMER, SYNTHETIC_NOTICE
from ..errors import CovidctError
from .config import ServeConfig
from .storage import FILE_MODE, write_private
from .uploads import KIND_ZIP, MEMBER_PREFIX, Upload, unpack_zip

#: Longest side of the slices kept for the viewer (the page shows them at most ~560 px wide).
DISPLAY_SIZE = 512

log = logging.getLogger("covidct.web")

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
INTERRUPTED = "interrupted by a server restart before it finished; upload the scan again"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    stage TEXT,
    kind TEXT,
    n_files INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    result TEXT
)"""


class Busy(CovidctError):
    """Too many jobs waiting: the caller should retry later (HTTP 503)."""


class JobStore:
    """The job table. Every call opens its own short connection, so threads never share one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
        finally:
            db.close()
        # SQLite gives its -wal and -shm files the database's mode.
        os.chmod(self.path, FILE_MODE)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        db = self._connect()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def create(self, kind: str, n_files: int) -> str:
        job_id = uuid.uuid4().hex
        self._run("INSERT INTO jobs (id, status, stage, kind, n_files, created) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (job_id, QUEUED, "waiting for a worker", kind,
                                                n_files, time.time()))
        return job_id

    def update(self, job_id: str, **fields: Any) -> None:
        if "result" in fields and fields["result"] is not None:
            fields["result"] = json.dumps(fields["result"], default=jsonable)
        names = ", ".join(f"{k} = ?" for k in fields)
        self._run(f"UPDATE jobs SET {names} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        job = dict(rows[0])
        job["result"] = json.loads(job["result"]) if job["result"] else None
        return job

    def delete(self, job_id: str) -> bool:
        return bool(self._run("DELETE FROM jobs WHERE id = ? RETURNING id", (job_id,)))

    def count(self, *statuses: str) -> int:
        marks = ", ".join("?" * len(statuses))
        return int(self._run(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses)[0][0])

    def finished_before(self, cutoff: float) -> list[str]:
        """Ids of the done or failed jobs that finished before ``cutoff`` (a Unix time)."""
        rows = self._run("SELECT id FROM jobs WHERE status IN (?, ?) AND finished < ?",
                         (DONE, FAILED, cutoff))
        return [row[0] for row in rows]

    def fail_unfinished(self) -> int:
        """Mark jobs a previous process left queued or running as failed (at start-up)."""
        rows = self._run("UPDATE jobs SET status = ?, error = ?, stage = NULL, finished = ? "
                         "WHERE status IN (?, ?) RETURNING id",
                         (FAILED, INTERRUPTED, time.time(), QUEUED, RUNNING))
        return len(rows)


class ModelSet:
    """The loaded models by method, each with the lock that serialises calls into it."""

    def __init__(self, models: Sequence[Any]):
        if not models:
            raise CovidctError("no trained model to serve")
        self.models = {m.method: m for m in models}
        self.locks = {m.method: threading.Lock() for m in models}
        for model in models:
            # Uploaded scans' intermediates must not outlive the job in a shared cache folder.
            model.use_cache(None)

    def __iter__(self):
        return iter(self.models.items())

    def get(self, method: str):
        return self.models.get(method)

    def with_overlay(self, overlay: str):
        """The served model whose explanation overlay is ``overlay`` (None if none is)."""
        return next((m for m in self.models.values() if m.overlay == overlay), None)

    def info(self) -> dict[str, Any]:
        return {method: model.describe() for method, model in self.models.items()}


class JobRunner:
    """Queues uploads onto a bounded pool and runs every model on each scan."""

    def __init__(self, config: ServeConfig, store: JobStore, models: ModelSet):
        self.config = config
        self.store = store
        self.models = models
        self.pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="covidct-job")
        self._admit = threading.Lock()

    def submit(self, upload: Upload) -> str:
        """Record the job and queue it; Busy when ``max_pending`` jobs are already waiting."""
        with self._admit:
            if self.store.count(QUEUED, RUNNING) >= self.config.max_pending:
                raise Busy(f"{self.config.max_pending} scans are already waiting; retry in a minute")
            job_id = self.store.create(upload.kind, upload.n_files)
        self.pool.submit(self._run, job_id, upload)
        log.info("job %s queued (%s, %d file(s))", job_id, upload.kind, upload.n_files)
        return job_id

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- one job ----------------------------------------------------------------------

    def _run(self, job_id: str, upload: Upload) -> None:
        start = time.time()
        self.store.update(job_id, status=RUNNING, stage="reading the scan", started=start)
        result = error = None
        try:
            result = self._predict(job_id, upload)
        except CovidctError as exc:
            error = (_public_message(exc, upload), type(exc).__name__)
        except Exception as exc:  # a bug must fail the job, not the worker thread
            log.exception("job %s: internal error", job_id)
            error = (f"internal error ({type(exc).__name__}); see the server log", type(exc).__name__)
        # The upload goes before the job is reported finished, so "finished" means "gone".
        shutil.rmtree(upload.folder, ignore_errors=True)
        if error:
            self._fail(job_id, *error)
        else:
            self.store.update(job_id, status=DONE, stage=None, finished=time.time(), result=result)
            log.info("job %s done in %.1f s", job_id, time.time() - start)

    def _fail(self, job_id: str, message: str, kind: str) -> None:
        self.store.update(job_id, status=FAILED, stage=None, finished=time.time(), error=message)
        log.info("job %s failed (%s)", job_id, kind)  # the message may name the user's files

    def _predict(self, job_id: str, upload: Upload) -> dict[str, Any]:
        from ..scanio import load_scan

        timings: dict[str, float] = {}
        mark = time.perf_counter()
        if upload.kind == KIND_ZIP:  # its members under neutral names: messages cannot name them
            upload.scan_path = unpack_zip(upload.scan_path, upload.folder / "unpacked",
                                          self.config.max_slice_pixels)
        scan = load_scan(upload.scan_path, keep_phi=self.config.show_phi)
        timings["read_scan"] = time.perf_counter() - mark
        if scan.n_slices > self.config.max_slices:
            raise CovidctError(f"scan has {scan.n_slices} slices, more than the "
                               f"{self.config.max_slices} accepted")
        rows, cols = scan.shape[1:]
        if rows * cols > self.config.max_slice_pixels:
            raise CovidctError(f"slices of {cols}x{rows} pixels are larger than the "
                               f"{self.config.max_slice_pixels:,} pixels accepted")
        predictions, errors = {}, {}
        for method, model in self.models:
            self.store.update(job_id, stage=f"running {method}")
            mark = time.perf_counter()
            try:
                with self.models.locks[method]:
                    predictions[method] = model.predict(scan)
            except CovidctError as exc:
                errors[method] = _public_message(exc, upload)
            timings[method] = time.perf_counter() - mark
        if not predictions:
            raise CovidctError("; ".join(f"{m}: {e}" for m, e in errors.items()))
        self.store.update(job_id, stage="saving the result")
        result = build_result(job_id, scan, predictions, errors, timings, upload,
                              self.config.show_phi, self.models)
        mark = time.perf_counter()
        save_viewer_arrays(self.config.results_dir / job_id, scan, predictions, self.models)
        result["timings_s"]["save_viewer"] = time.perf_counter() - mark
        write_private(self.config.results_dir / job_id / "result.json",
                      (json.dumps(result, indent=2, default=jsonable) + "\n").encode())
        return result


_MEMBER = re.compile(re.escape(MEMBER_PREFIX) + r"0*(\d+)[\w.]*")


def _public_message(exc: CovidctError, upload: Upload) -> str:
    """The error in neutral terms: no work folder path, zip members by their position."""
    where = ""
    if exc.path:
        path = Path(exc.path)
        inside = path.is_relative_to(upload.folder)
        where = ("the upload" if inside and path in (upload.folder, upload.scan_path,
                                                      upload.scan_path.parent) else path.name)
    return neutral_text(f"{where}: {exc.message}" if where else exc.message, upload)


def neutral_text(text: str, upload: Upload) -> str:
    """``text`` with the upload's private folder gone and zip members named by position."""
    text = text.replace(str(upload.folder) + "/", "").replace(str(upload.folder), "the upload")
    return _MEMBER.sub(lambda m: f"file {int(m.group(1))} of the zip (in name order)", text)


# -- the result ------------------------------------------------------------------------

#: Each method's classes in the common order Normal / pneumonia / COVID-19.
COMMON_CLASSES = ("Normal", "Other pneumonia", "COVID-19")


def patient_call(predictions: dict[str, Any]) -> dict[str, Any]:
    """The patient-level call: each method's label, their agreement, the mean COVID-19 probability.

    The two methods' three classes correspond (Normal/Control, CP/CAP, NCP/COVID-19), so the
    call names the common class when the methods agree; binary models contribute only their
    COVID-19 probability.
    """
    labels, covid = {}, []
    for method, p in predictions.items():
        probs = np.asarray(p.probabilities)
        covid.append(float(probs[-1]))  # the COVID-19 class is last in every class list
        labels[method] = (COMMON_CLASSES[int(np.argmax(probs))] if len(probs) == 3
                          else ("COVID-19" if probs[-1] >= 0.5 else "not COVID-19"))
    distinct = set(labels.values())
    agree = len(distinct) == 1
    label = distinct.pop() if agree else "methods disagree"
    return {"label": label, "agree": agree, "by_method": labels,
            "covid19_probability": float(np.mean(covid)),
            "rule": "the methods' common label when they agree; COVID-19 probability averaged"}


def slice_scores(predictions: dict[str, Any], models: ModelSet) -> dict[str, list[float | None]]:
    """Per scan slice, what drove each method's call (None where a method did not look):
    :meth:`covidct.models.Model.slice_scores` (bit: the slice's COVID-19 probability;
    covidctnet: the infection map's mean over the slice on the shared colour scale)."""
    out = {}
    for method, prediction in predictions.items():
        scores = models.get(method).slice_scores(prediction)
        if scores is not None:
            out[method] = scores
    return out


def build_result(job_id: str, scan, predictions: dict[str, Any], errors: dict[str, str],
                 timings: dict[str, float], upload: Upload, show_phi: bool,
                 models: ModelSet) -> dict[str, Any]:
    methods = {m: p.to_dict() for m, p in predictions.items()}
    synthetic = scan.synthetic or any(p.synthetic for p in predictions.values())
    result = {
        "id": job_id,
        "disclaimer": DISCLAIMER,
        "synthetic": synthetic,
        "scan": {**scan.deidentified([neutral_text(str(w), upload)
                                      for w in scan.metadata.get("warnings") or []]),
                 "upload_kind": upload.kind, "n_files": upload.n_files},
        "call": patient_call(predictions),
        "methods": methods,
        "errors": errors,
        "slice_scores": slice_scores(predictions, models),
        "models": {m: p.model for m, p in predictions.items()},
        "timings_s": timings,
    }
    if synthetic:
        result["synthetic_notice"] = SYNTHETIC_NOTICE
    if show_phi and scan.phi:
        result["phi"] = {k: str(v) for k, v in scan.phi.items()}
    return result


def save_viewer_arrays(folder: Path, scan, predictions: dict[str, Any], models: ModelSet) -> Path:
    """What the slice viewer needs once the upload is gone, as ``.npy`` files and a JSON note.

    The voxels are kept at display resolution (longer side at most DISPLAY_SIZE): int16 HU,
    or the pictures' uint8 gray. Uncompressed, so writing them costs a file copy and reading
    one slice later is a memory-mapped page or two, not the whole volume's decompression.
    Each model's :meth:`~covidct.models.Model.viewer_arrays` (one row per scan slice, e.g.
    CovidCTNet's infection map) go beside them as float16, named by the model's overlay.
    """
    voxels = display_voxels(scan.voxels, scan.is_hu)
    arrays = {"voxels": voxels}
    note = {"units": scan.units, "direction": np.asarray(scan.direction).tolist(),
            "spacing": list(scan.spacing), "scan_shape": list(scan.shape),
            "overlays_on_scan": []}
    for method, prediction in predictions.items():
        for name, array in models.get(method).viewer_arrays(prediction).items():
            arrays[name] = np.asarray(array, dtype=np.float16)
            note["overlays_on_scan"].append(name)
    target = folder / "viewer"
    for name, array in arrays.items():
        _save_npy(target / f"{name}.npy", array)
    # Written last: a viewer folder without it is incomplete.
    write_private(target / "viewer.json", json.dumps(note).encode())
    return target


def display_voxels(voxels: np.ndarray, is_hu: bool) -> np.ndarray:
    """The volume with each slice shrunk to a longer side of at most DISPLAY_SIZE."""
    from ..explain.plotting import resize_to

    n, rows, cols = voxels.shape
    scale = DISPLAY_SIZE / max(rows, cols)
    dtype = np.int16 if is_hu else np.uint8
    low, high = (-32768, 32767) if is_hu else (0, 255)
    if scale >= 1:
        return np.clip(np.rint(voxels), low, high).astype(dtype)
    shape = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    out = np.empty((n, *shape), dtype=dtype)
    for k in range(n):
        out[k] = np.clip(np.rint(resize_to(voxels[k], shape)), low, high)
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    from ..atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with atomic_path(path) as tmp:
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
