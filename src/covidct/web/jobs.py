"""Jobs: an embedded SQLite store and a bounded worker pool that runs the models on uploads.

A job is one uploaded scan. Its row moves ``queued -> running -> done | failed``; the result
(JSON) is written into the row, and the arrays the slice viewer needs (the scan's voxels and
CovidCTNet's infection map) into ``results/<id>/viewer.npz``, before the job counts as done.
A restart therefore loses nothing that finished; jobs that were still queued or running
when the server stopped are marked failed (their uploads lived in the work folder, which is
private to one server process and emptied at start-up).

The work runs in a ThreadPoolExecutor: torch releases the GIL during inference, and one lock
per model serialises calls into a network (Grad-CAM hooks must not see another job's pass).
"""
from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_path, jsonable, write_json
from ..constants import DISCLAIMER, SYNTHETIC_NOTICE
from ..errors import CovidctError
from .config import ServeConfig
from .uploads import Upload

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
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

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
            if hasattr(model, "cache"):
                from ..volumes.cache import ArrayCache

                model.cache = ArrayCache(None)

    def __iter__(self):
        return iter(self.models.items())

    def get(self, method: str):
        return self.models.get(method)

    def info(self) -> dict[str, Any]:
        out = {}
        for method, model in self.models.items():
            describe = getattr(model, "info", None)
            out[method] = describe() if callable(describe) else model.describe()
        return out


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
        scan = load_scan(upload.scan_path, keep_phi=self.config.show_phi)
        timings["read_scan"] = time.perf_counter() - mark
        if scan.n_slices > self.config.max_slices:
            raise CovidctError(f"scan has {scan.n_slices} slices, more than the "
                               f"{self.config.max_slices} accepted")
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
                              self.config.show_phi)
        save_viewer_arrays(self.config.results_dir / job_id, scan, predictions)
        write_json(self.config.results_dir / job_id / "result.json", result)
        return result


def _public_message(exc: CovidctError, upload: Upload) -> str:
    """The error without the private work folder's path (names inside the upload stay)."""
    text = str(exc)
    for prefix in (str(upload.scan_path) + "/", str(upload.scan_path), str(upload.folder)):
        text = text.replace(prefix, "upload/" if prefix.endswith("/") else "upload")
    return text


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


def slice_scores(scan, predictions: dict[str, Any]) -> dict[str, list[float | None]]:
    """Per scan slice, what drove each method's call (None where a method did not look).

    bit: the slice's COVID-19 (NCP) probability for the lung slices it scored. covidctnet: the
    infection map's mean over the slice (on the shared colour scale, 0-1), mapped back to
    the scan's slices.
    """
    out: dict[str, list[float | None]] = {}
    n = scan.n_slices
    bit = predictions.get("bit")
    if bit is not None and bit.slice_probabilities is not None:
        scores: list[float | None] = [None] * n
        for k, p in zip(bit.slice_indices, bit.slice_probabilities):
            scores[int(k)] = float(p[-1])
        out["bit"] = scores
    net = predictions.get("covidctnet")
    infection = None if net is None else net.maps.get("infection")
    if infection is not None:
        from ..explain.infection import normalised_map
        from .render import map_slice_of

        heat = normalised_map(infection).mean(axis=(1, 2))
        depth = int(net.scan["preprocessed_shape"][0])
        out["covidctnet"] = [float(heat[map_slice_of(k, n, scan.direction, depth, len(infection))])
                             for k in range(n)]
    return out


def build_result(job_id: str, scan, predictions: dict[str, Any], errors: dict[str, str],
                 timings: dict[str, float], upload: Upload, show_phi: bool) -> dict[str, Any]:
    methods = {m: p.to_dict() for m, p in predictions.items()}
    synthetic = scan.synthetic or any(p.synthetic for p in predictions.values())
    result = {
        "id": job_id,
        "disclaimer": DISCLAIMER,
        "synthetic": synthetic,
        "scan": {"summary": scan.summary(), "shape": list(scan.shape), "units": scan.units,
                 "spacing_mm": list(scan.spacing), "orientation": scan.orientation,
                 "synthetic": scan.synthetic, "upload_kind": upload.kind,
                 "n_files": upload.n_files, "warnings": list(scan.metadata.get("warnings") or [])},
        "call": patient_call(predictions),
        "methods": methods,
        "errors": errors,
        "slice_scores": slice_scores(scan, predictions),
        "models": {m: p.model for m, p in predictions.items()},
        "timings_s": timings,
    }
    if synthetic:
        result["synthetic_notice"] = SYNTHETIC_NOTICE
    if show_phi and scan.phi:
        result["phi"] = {k: str(v) for k, v in scan.phi.items()}
    return result


def save_viewer_arrays(folder: Path, scan, predictions: dict[str, Any]) -> Path:
    """What the slice viewer needs once the upload is gone: voxels, geometry, infection map."""
    voxels = (np.clip(np.rint(scan.voxels), -32768, 32767).astype(np.int16) if scan.is_hu
              else np.asarray(scan.voxels, dtype=np.uint8))
    arrays = {"voxels": voxels, "units": np.array(scan.units),
              "direction": np.asarray(scan.direction, dtype=np.float64),
              "spacing": np.asarray(scan.spacing, dtype=np.float64)}
    net = predictions.get("covidctnet")
    infection = None if net is None else net.maps.get("infection")
    if infection is not None:
        arrays["infection"] = np.asarray(infection, dtype=np.float16)
        arrays["volume_depth"] = np.array(int(net.scan.get("preprocessed_shape", [0])[0]))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "viewer.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path
