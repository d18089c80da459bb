"""`covidct dicom-node`: a DICOM node a PACS sends CT studies to; results go back by C-STORE.

A pynetdicom Storage SCP (and Verification: C-ECHO) receives instances into a spool folder
(0700, files 0600, each written atomically), grouped by study and series. Instances received
on an association are staged under it and join the series only when the association is
released normally: an aborted or dropped association leaves nothing behind, so no half series
is ever processed. A series is complete once nothing has arrived for it for ``quiet_s``
seconds; it is then taken from the spool and

* not CT (or one of covidct's own output series): skipped, with the reason logged;
* CT: run through :func:`covidct.dicom_out.predict_to_dicom`, i.e. the library's predict
  with every check and refusal of ``covidct predict``; a refused series gets an SR saying why;

and the resulting SR / SEG / key images are sent by C-STORE to the destination AE (usually the
PACS the study came from). Results that cannot be sent stay in ``spool/outbox`` and are
retried every ``retry_s`` seconds for ``keep_failed_s`` (7 days by default), then deleted with
an error in the log. Received instances are deleted once their series is processed (the
results hold what is to be sent), except after an internal error: then they stay in
``spool/failed`` for ``keep_failed_s``. Sent results are deleted. After a crash or restart,
series taken for processing go back to the queue, stale staged instances (of associations cut
by the crash) are dropped, and the outbox is retried.

Logs name studies and series by a 12-digit digest of their UIDs (as ``covidct info`` does),
never by patient; the spool's folder and file names are such digests too.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .constants import SYNTHETIC_TAG
from .dicom_out import SERIES_PREFIX, predict_to_dicom, refusal_sr, save_outputs
from .errors import CovidctError
from .scanio.common import uid_hash

log = logging.getLogger(__name__)
# pynetdicom logs every request at INFO; covidct logs what the node did, by study digest.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)

#: C-STORE statuses (PS3.4 Annex B): success, out of resources, cannot understand.
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
#: Warning statuses a Storage SCP may answer; the instance is stored all the same.
STORE_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)


@dataclass(frozen=True)
class Destination:
    """Where results are sent: ``AE@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        try:
            ae, address = text.split("@", 1)
            host, port = address.rsplit(":", 1)
            if not ae or not host:
                raise ValueError
            return cls(ae, host, int(port))
        except ValueError:
            raise CovidctError(f"destination {text!r} is not AE@HOST:PORT "
                               "(e.g. ORTHANC@pacs.example.org:4242)") from None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class NodeSettings:
    spool: Path
    ae_title: str = "COVIDCT"
    host: str = "127.0.0.1"
    port: int = 11112
    destination: Destination | None = None
    quiet_s: float = 10.0            # a series is complete after this long without instances
    retry_s: float = 60.0            # results that could not be sent are retried this often
    keep_failed_s: float = 7 * 24 * 3600.0  # ... for this long, then deleted (logged)
    max_associations: int = 8        # associations served at once
    max_instances_per_association: int = 5000
    max_instances_per_study: int = 5000
    poll_s: float = 0.5


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _count_files(folder: Path) -> int:
    """Instances (``*.dcm``) under ``folder``; markers and partial writes are not counted."""
    if not folder.is_dir():
        return 0
    return sum(sum(n.endswith(".dcm") for n in names) for _, _, names in os.walk(folder))


class Spool:
    """The node's folder: ``staging/<association>/``, ``incoming/<study>/<series>/``,
    ``work/<study>-<series>/`` and ``outbox/<study>-<series>/`` (names are UID digests)."""

    def __init__(self, root: Path):
        self.root = _mkdir(Path(root))
        self.staging, self.incoming, self.work, self.outbox, self.failed = (
            _mkdir(self.root / name) for name in ("staging", "incoming", "work", "outbox", "failed"))
        self._lock = threading.Lock()
        #: Instances per study in incoming/, kept in memory: counting files at every C-STORE
        #: would cost a folder walk per instance.
        self._study_counts = {d.name: _count_files(d) for d in self.incoming.iterdir()}

    def recover(self) -> None:
        """After a restart: drop instances of associations the stop cut short; requeue the
        series that were being processed; the outbox stays for the sender."""
        for folder in self.staging.iterdir():
            log.warning("spool: dropping %d instance(s) of an association cut short by the last stop",
                        _count_files(folder))
            shutil.rmtree(folder, ignore_errors=True)
        for folder in self.work.iterdir():
            study, _, series = folder.name.partition("-")
            target = _mkdir(self.incoming / study) / series
            if target.exists():  # more instances arrived meanwhile: merge
                for f in folder.iterdir():
                    os.replace(f, target / f.name)
                shutil.rmtree(folder)
            else:
                os.replace(folder, target)
            self._touch(target)
            self._study_counts[study] = _count_files(self.incoming / study)
            log.info("spool: study %s series %s requeued after a restart", study, series)

    def stage(self, association: str, study: str, series: str, sop: str, data: bytes) -> None:
        folder = _mkdir(self.staging / association / study / series)
        tmp = folder / f".{sop}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, folder / f"{sop}.dcm")

    def study_count(self, study: str) -> int:
        return self._study_counts.get(study, 0)

    def commit(self, association: str) -> int:
        """Move an association's instances into their series; returns how many."""
        staged = self.staging / association
        moved = 0
        with self._lock:
            for study_dir in sorted(staged.iterdir()) if staged.is_dir() else []:
                for series_dir in study_dir.iterdir():
                    target = _mkdir(self.incoming / study_dir.name / series_dir.name)
                    for f in series_dir.iterdir():
                        os.replace(f, target / f.name)
                        moved += 1
                        self._study_counts[study_dir.name] = self._study_counts.get(study_dir.name, 0) + 1
                    self._touch(target)
        shutil.rmtree(staged, ignore_errors=True)
        return moved

    def discard(self, association: str) -> int:
        staged = self.staging / association
        count = _count_files(staged)
        shutil.rmtree(staged, ignore_errors=True)
        return count

    @staticmethod
    def _touch(series_dir: Path) -> None:
        (series_dir / ".last").touch()
        os.utime(series_dir / ".last")

    def keep_failed(self, work: Path) -> Path:
        """Keep the instances of a series that failed by an internal error, for inspection."""
        target = self.failed / work.name
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work, target)
        os.utime(target)
        return target

    def expire_failed(self, keep_s: float) -> None:
        now = time.time()
        for folder in self.failed.iterdir():
            if now - folder.stat().st_mtime > keep_s:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("spool: failed series %s deleted after the keep time", folder.name)

    def take_ready(self, quiet_s: float) -> list[Path]:
        """Series untouched for ``quiet_s``, moved to ``work/`` (so a crash requeues them)."""
        now, taken = time.time(), []
        with self._lock:
            for study_dir in sorted(self.incoming.iterdir()):
                for series_dir in sorted(study_dir.iterdir()):
                    marker = series_dir / ".last"
                    if marker.exists() and now - marker.stat().st_mtime < quiet_s:
                        continue
                    target = self.work / f"{study_dir.name}-{series_dir.name}"
                    os.replace(series_dir, target)
                    taken.append(target)
                if not any(study_dir.iterdir()):
                    study_dir.rmdir()
                self._study_counts[study_dir.name] = _count_files(study_dir)
        return taken


class DicomNode:
    """The Storage SCP, the series processor and the sender (see the module docstring)."""

    def __init__(self, settings: NodeSettings, models: Sequence[Any]):
        self.settings = settings
        self.models = list(models)
        self.spool = Spool(settings.spool)
        self._stop = threading.Event()
        self._associations: dict[int, dict[str, Any]] = {}
        self._assoc_lock = threading.Lock()
        self._counter = 0
        self.server = None

    # -- receiving ----------------------------------------------------------------------

    def _association(self, event) -> dict[str, Any]:
        key = id(event.assoc)
        with self._assoc_lock:
            state = self._associations.get(key)
            if state is None:
                self._counter += 1
                state = {"name": f"a{os.getpid()}-{self._counter}-{int(time.time() * 1000)}",
                         "count": 0, "studies": {}}
                self._associations[key] = state
            return state

    def on_store(self, event) -> int:
        state = self._association(event)
        try:
            ds = event.dataset
            study, series = uid_hash(ds.StudyInstanceUID), uid_hash(ds.SeriesInstanceUID)
            sop = uid_hash(ds.SOPInstanceUID)
        except Exception as exc:  # no UIDs: not an instance covidct can file
            log.warning("C-STORE refused: instance without readable UIDs (%s)", type(exc).__name__)
            return CANNOT_UNDERSTAND
        if state["count"] >= self.settings.max_instances_per_association:
            log.warning("study %s: C-STORE refused: more than %d instances on one association",
                        study, self.settings.max_instances_per_association)
            return OUT_OF_RESOURCES
        in_study = state["studies"].get(study, 0) + self.spool.study_count(study)
        if in_study >= self.settings.max_instances_per_study:
            log.warning("study %s: C-STORE refused: more than %d instances in the study",
                        study, self.settings.max_instances_per_study)
            return OUT_OF_RESOURCES
        try:
            self.spool.stage(state["name"], study, series, sop, event.encoded_dataset())
        except OSError as exc:
            log.error("study %s: C-STORE refused: spool write failed (%s)", study, exc.strerror)
            return OUT_OF_RESOURCES
        state["count"] += 1
        state["studies"][study] = state["studies"].get(study, 0) + 1
        return SUCCESS

    def on_released(self, event) -> None:
        self._finish(id(event.assoc), commit=True)

    def on_aborted(self, event) -> None:
        self._finish(id(event.assoc), commit=False)

    def on_closed(self, event) -> None:
        # pynetdicom signals the closed connection from another thread than the release, so
        # a close is not taken as final at once: step() drops what is left after a grace time.
        with self._assoc_lock:
            state = self._associations.get(id(event.assoc))
            if state is not None:
                state["closed"] = time.monotonic()

    def _finish(self, key: int, commit: bool) -> None:
        """Commit or drop one association's instances, exactly once."""
        with self._assoc_lock:
            state = self._associations.pop(key, None)
        if state is None:
            return
        studies = ", ".join(f"study {s}" for s in state["studies"]) or "no study"
        if commit:
            moved = self.spool.commit(state["name"])
            log.info("received %d instance(s) of %s on one association", moved, studies)
            return
        dropped = self.spool.discard(state["name"])
        if dropped:
            log.warning("association aborted or cut: %d instance(s) of %s discarded (nothing of "
                        "it is processed; the sender should send again)", dropped, studies)

    def _drop_closed(self, grace_s: float = 5.0) -> None:
        now = time.monotonic()
        with self._assoc_lock:
            stale = [k for k, s in self._associations.items() if now - s.get("closed", now) > grace_s]
        for key in stale:
            self._finish(key, commit=False)

    def start(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.spool.recover()
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_RELEASED, self.on_released), (evt.EVT_ABORTED, self.on_aborted),
                    (evt.EVT_CONN_CLOSE, self.on_closed)]
        self.server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                      evt_handlers=handlers)

    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        """Receive, process and send until :meth:`stop` (SIGTERM/SIGINT in the CLI)."""
        if self.server is None:
            self.start()
        try:
            while not self._stop.is_set():
                self.step()
                self._stop.wait(self.settings.poll_s)
        finally:
            if self.server is not None:
                self.server.shutdown()

    def step(self) -> None:
        self._drop_closed()
        for work in self.spool.take_ready(self.settings.quiet_s):
            if self._stop.is_set():
                break  # left in work/: requeued at the next start
            try:
                self.process(work)
            except Exception:  # e.g. a full disk: say so, keep the series aside, keep serving
                log.exception("series %s: kept in spool/failed after an internal error", work.name)
                self.spool.keep_failed(work)
        self.send_pending()
        self.spool.expire_failed(self.settings.keep_failed_s)

    # -- processing ---------------------------------------------------------------------

    def process(self, work: Path) -> Path | None:
        """Results of one received series into ``outbox/`` (or a logged skip)."""
        import pydicom

        study, _, series = work.name.partition("-")
        where = f"study {study} series {series}"
        files = sorted(work.glob("*.dcm"))
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        modality = str(headers[0].get("Modality", "") or "?").upper() if headers else "?"
        description = str(headers[0].get("SeriesDescription", "")) if headers else ""
        outbox, failed = None, False
        if not headers:
            log.warning("%s: skipped: no instances", where)
        elif modality != "CT":
            log.info("%s: skipped: modality %s; covidct reads CT series", where, modality)
        elif description.startswith(SERIES_PREFIX):
            log.info("%s: skipped: a covidct output series", where)
        elif "LOCALIZER" in [str(v).upper() for v in headers[0].get("ImageType", [])]:
            log.info("%s: skipped: a localizer (scout), not a CT volume", where)
        else:
            log.info("%s: %d CT instance(s) complete; predicting", where, len(files))
            outbox = self.spool.outbox / work.name
            failed = self._predict_or_explain(work, outbox, headers, where)
        if failed:
            self.spool.keep_failed(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
        return outbox

    def _predict_or_explain(self, work: Path, out: Path, headers: list, where: str) -> bool:
        """Predict into ``out``, or put an SR saying why there; True after an internal error
        (the series' instances are then kept in spool/failed for the keep time)."""
        start = time.perf_counter()
        failed = False
        try:
            predictions, paths = predict_to_dicom(work, self.models, out)
        except CovidctError as exc:
            reason = exc.message
        except Exception as exc:  # a bug must not stop the node; it is reported like a refusal
            log.exception("%s: internal error; instances kept in spool/failed", where)
            reason = f"internal error ({type(exc).__name__})"
            failed = True
        else:
            calls = "; ".join(f"{p.method} {p.label} {p.confidence:.0%}" for p in predictions)
            log.info("%s: %s; %d DICOM object(s) in %.1f s", where, calls, len(paths),
                     time.perf_counter() - start)
            return False
        # The reason names the spool folder (digests only); say it without the path.
        log.warning("%s: not processed: %s", where, reason)
        headers.sort(key=lambda ds: int(ds.get("InstanceNumber", 0) or 0))
        synthetic = any(SYNTHETIC_TAG in str(ds.get("SeriesDescription", "")) for ds in headers[:1])
        save_outputs([refusal_sr([ds for ds in headers if "SOPInstanceUID" in ds], reason,
                                 synthetic)], out)
        return failed

    # -- sending ------------------------------------------------------------------------

    def send_pending(self) -> None:
        for folder in sorted(self.spool.outbox.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            self._send_folder(folder)

    def _send_folder(self, folder: Path) -> None:
        state_file = folder / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        now = time.time()
        if now < state.get("next_try", 0):
            return
        study = folder.name.partition("-")[0]
        files = sorted(folder.glob("*.dcm"))
        if self.settings.destination is None:
            if not state.get("noted"):
                log.info("study %s: %d result object(s) kept in %s (no --dest given)",
                         study, len(files), folder)
                state_file.write_text(json.dumps({"noted": True, "next_try": float("inf")}))
            return
        error = self._send(files)
        if error is None:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("study %s: sent %d result object(s) to %s", study, len(files),
                     self.settings.destination)
            return
        first = state.get("first_failure", now)
        if now - first > self.settings.keep_failed_s:
            shutil.rmtree(folder, ignore_errors=True)
            log.error("study %s: results deleted unsent after %.0f h of failures (%s)", study,
                      (now - first) / 3600, error)
            return
        state.update(first_failure=first, attempts=state.get("attempts", 0) + 1,
                     next_try=now + self.settings.retry_s, last_error=error)
        state_file.write_text(json.dumps(state))
        log.warning("study %s: could not send results to %s (%s); kept, retrying in %.0f s",
                    study, self.settings.destination, error, self.settings.retry_s)

    def _send(self, files: Sequence[Path]) -> str | None:
        """C-STORE every file to the destination; None on success, else the reason."""
        import pydicom
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        dest = self.settings.destination
        datasets = [pydicom.dcmread(f) for f in files]
        ae = AE(ae_title=self.settings.ae_title)
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            return "association refused or destination unreachable"
        try:
            for ds in datasets:
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError) as exc:  # e.g. no accepted context
                    return f"C-STORE not possible: {exc}"
                code = int(getattr(status, "Status", -1)) if status else -1
                if code != SUCCESS and code not in STORE_WARNINGS:
                    return f"C-STORE status 0x{code & 0xFFFF:04X}" if code >= 0 else "no C-STORE answer"
        finally:
            if assoc.is_established:
                assoc.release()
        return None
