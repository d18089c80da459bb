"""Jobs: the bounded worker pool that runs the served models on uploads.

Each job's row lives in the SQLite job store (:mod:`.store`); its result JSON is built by
:mod:`.result` and the arrays the slice viewer needs are written by :mod:`.viewer` before
the job counts as done, so a restart loses nothing that finished. Uploads live in the work
folder, private to one server process and emptied at start-up.

The work runs in a ThreadPoolExecutor: torch releases the GIL during inference, and one lock
per model serialises calls into a network (Grad-CAM hooks must not see another job's pass).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from ..atomic import jsonable
from ..checks import check_scan
from ..errors import CovidctError, ScanError
from ..predict import run_each
from ..scanio import load_scan
from .config import ServeConfig
from .result import build_result, public_message
from .storage import write_private
from .store import DONE, FAILED, QUEUED, RUNNING, JobStore
from .uploads import KIND_ZIP, Upload, unpack_zip
from .viewer import save_viewer_arrays

__all__ = ["Busy", "DONE", "FAILED", "JobRunner", "JobStore", "ModelSet", "QUEUED", "RUNNING"]

log = logging.getLogger("covidct.web")


class Busy(CovidctError):
    """Too many jobs waiting: the caller should retry later (HTTP 503)."""


class ModelSet:
    """The loaded models by method, each with the lock that serialises calls into it."""

    def __init__(self, models: Sequence[Any]):
        if not models:
            raise CovidctError("no trained model to serve")
        self.models = {m.method: m for m in models}
        #: Whether the methods run on a scan at the same time (covidct.models.load_models).
        self.concurrent = bool(getattr(models, "concurrent", False))
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
            error = (public_message(exc, upload), type(exc).__name__)
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
        if self.models.concurrent:
            # Checked here once, so that the methods, running at once, share the lung mask;
            # a refusal is left to each method to report, as when they run one by one.
            with contextlib.suppress(ScanError):
                check_scan(scan)
            self.store.update(job_id, stage="running " + ", ".join(m for m, _ in self.models))

        def run(model):
            if not self.models.concurrent:
                self.store.update(job_id, stage=f"running {model.method}")
            mark = time.perf_counter()
            try:
                with self.models.locks[model.method]:
                    return model.predict(scan)
            finally:
                timings[model.method] = time.perf_counter() - mark

        for model, outcome in run_each([m for _, m in self.models], run, CovidctError,
                                       self.models.concurrent):
            if isinstance(outcome, CovidctError):
                errors[model.method] = public_message(outcome, upload)
            else:
                predictions[model.method] = outcome
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


