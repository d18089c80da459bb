"""`covidct dicom-node` against a real PACS (Orthanc, started here on loopback ports with a
generated config) and against pynetdicom peers for the failure cases.

Orthanc comes from Debian's `orthanc` package (scripts/dicom-tools.sh installs it where it
may); without it the Orthanc test skips and says why. The node always runs as the user starts
it: `python -m covidct dicom-node ...` in a subprocess.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from pynetdicom import AE, StoragePresentationContexts, evt  # noqa: E402
from pynetdicom.sop_class import Verification  # noqa: E402

from conftest import (REPO, build_hu_volume, save_tiny_bit_model,  # noqa: E402
                      save_tiny_covidctnet_model)

pytestmark = [pytest.mark.xdist_group("dicom_node"), pytest.mark.slow]
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the C-ECHO polls while a node starts

PATIENT_NAME, PATIENT_ID = "Roe^Richard", "PAT-7731"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def write_series(folder: Path, seed: int = 0, modality: str = "CT", coronal: bool = False,
                 spacing=(2.5, 0.7, 0.7)) -> list[Path]:
    from dataclasses import replace

    from covidct.scanio import write_dicom_series

    extra = None
    if modality != "CT":
        from pydicom.uid import MRImageStorage

        extra = {"Modality": modality, "SOPClassUID": MRImageStorage}
    scan = build_hu_volume(shape=(12, 64, 64), seed=seed, spacing=spacing)
    if coronal:  # rows left-right, columns head-feet, slices front to back
        scan = replace(scan, direction=np.column_stack([(1, 0, 0), (0, 0, -1), (0, 1, 0)]))
    return write_dicom_series(scan, folder, patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
                              extra=extra)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("node-models")
    return (save_tiny_bit_model(root / "bit.pt", seed=0, resize=72, crop=64),
            save_tiny_covidctnet_model(root / "covidctnet.pt"))


class Node:
    """`covidct dicom-node` in a subprocess, its log in a file."""

    def __init__(self, tmp: Path, models, dest: str | None, quiet: float = 0.5, spool=None,
                 name: str = "node"):
        self.port = free_port()
        self.spool = spool or tmp / "spool"
        self.log = tmp / f"{name}-{time.time_ns()}.log"
        args = [sys.executable, "-m", "covidct", "dicom-node", "--port", str(self.port),
                "--spool", str(self.spool), "--quiet-time", str(quiet), "--retry-every", "1"]
        for m in models:
            args += ["--model", str(m)]
        if dest:
            args += ["--dest", dest]
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1",
                   COVIDCT_CACHE=str(tmp / "cache"))
        self.proc = subprocess.Popen(args, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     env=env, cwd=REPO)
        wait_for(lambda: self.proc.poll() is not None or echo(self.port), 90, "the node's C-ECHO",
                 self.log)
        assert self.proc.poll() is None, self.log.read_text()

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def echo(port: int) -> bool:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="COVIDCT")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def send(port: int, files, abort_after: int | None = None) -> None:
    """C-STORE files to the node (as a modality would); abort after ``abort_after`` files."""
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="TESTSCU")
    for uid in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="COVIDCT")
    assert assoc.is_established
    for k, ds in enumerate(datasets):
        if abort_after is not None and k == abort_after:
            assoc.abort()
            return
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()


class Receiver:
    """A pynetdicom Storage SCP standing in for a PACS: collects what it is sent."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title="RECEIVER")
        ae.supported_contexts = StoragePresentationContexts

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append(ds)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])

    @property
    def dest(self) -> str:
        return f"RECEIVER@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()


def spool_files(spool: Path, part: str) -> list[Path]:
    return [p for p in (spool / part).rglob("*") if p.is_file()]


# The failure cases, against pynetdicom peers ----------------------------------------------

def test_non_ct_skipped_refusal_explained_cut_association_dropped_concurrent_series(tmp_path, models):
    receiver = Receiver()
    node = Node(tmp_path, models[:1], receiver.dest, quiet=1.0)
    try:
        write_series(tmp_path / "mr", seed=1, modality="MR")
        coronal = write_series(tmp_path / "coronal", seed=6, coronal=True)
        ct_a = write_series(tmp_path / "ct-a", seed=2)
        ct_b = write_series(tmp_path / "ct-b", seed=3)
        # An association cut after 5 of 12 slices: nothing of it may be processed.
        send(node.port, ct_a, abort_after=5)
        wait_for(lambda: "5 instance(s)" in node.text() and "discarded" in node.text(), 30,
                 "the aborted association's instances to be discarded", node.log)
        send(node.port, sorted((tmp_path / "mr").glob("*.dcm")))
        send(node.port, coronal)
        # Two series on two associations at the same time.
        threads = [threading.Thread(target=send, args=(node.port, files)) for files in (ct_a, ct_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: node.text().count("sent ") >= 3, 120, "three series' results", node.log)
        log = node.text()
        assert "skipped: modality MR" in log
        # The coronal CT series is refused as `covidct predict` refuses it, and an SR says why.
        assert "not processed" in log and "needs axial slices" in log
        srs = [ds for ds in receiver.received if ds.Modality == "SR"]
        assert len(srs) == 3  # none for the MR series or the cut association
        coronal_uid = pydicom.dcmread(coronal[0]).SeriesInstanceUID
        (refusal,) = [sr for sr in srs if sr.CurrentRequestedProcedureEvidenceSequence[0]
                      .ReferencedSeriesSequence[0].SeriesInstanceUID == coronal_uid]
        text = json.dumps(refusal.to_json_dict())
        assert "did not process this series" in text and "needs axial slices" in text
        source_series = {pydicom.dcmread(f[0]).SeriesInstanceUID for f in (ct_a, ct_b)}
        for sr in srs:
            if sr is refusal:
                continue
            evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            assert {s.SeriesInstanceUID for s in evidence} <= source_series
            # The whole series, never the 5 slices of the cut association.
            assert sum(len(s.ReferencedSOPSequence) for s in evidence) == 12
        assert PATIENT_NAME not in log and PATIENT_ID not in log
        assert pydicom.dcmread(ct_a[0]).StudyInstanceUID not in log
        wait_for(lambda: not any(spool_files(node.spool, p) for p in ("incoming", "work",
                                                                        "staging", "outbox")),
                 10, "an empty spool", node.log)
        assert node.spool.stat().st_mode & 0o777 == 0o700
    finally:
        node.stop()
        receiver.stop()


def test_restart_resumes_a_full_spool_and_unsent_results_wait_for_the_destination(tmp_path, models):
    dead_port = free_port()
    dest = f"RECEIVER@127.0.0.1:{dead_port}"
    files = write_series(tmp_path / "ct", seed=4)
    # First run: a quiet time that never ends here, then a stop with the series in the spool.
    node = Node(tmp_path, models[:1], dest, quiet=3600, name="first")
    try:
        send(node.port, files)
        wait_for(lambda: len(spool_files(node.spool, "incoming")) >= 12, 30, "a full spool", node.log)
    finally:
        node.stop()
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in spool_files(node.spool, "incoming")
               if p.suffix == ".dcm")
    # Second run: the series is processed; the destination is down, so the results are kept.
    node = Node(tmp_path, models[:1], dest, quiet=0.5, spool=node.spool, name="second")
    receiver = None
    try:
        wait_for(lambda: "could not send" in node.text(), 120, "a failed send", node.log)
        kept = [p for p in spool_files(node.spool, "outbox") if p.suffix == ".dcm"]
        assert kept and not spool_files(node.spool, "incoming")
        receiver = Receiver(dead_port)  # the destination comes back: the retry delivers
        wait_for(lambda: "sent " in node.text(), 30, "the retried send", node.log)
        assert "SR" in {ds.Modality for ds in receiver.received}
        assert len(receiver.received) == len(kept)
        assert not spool_files(node.spool, "outbox")
    finally:
        node.stop()
        if receiver:
            receiver.stop()


# End to end with a real PACS ---------------------------------------------------------------

class Orthanc:
    """Debian's Orthanc on free loopback ports with a generated config, in a temp folder."""

    def __init__(self, root: Path):
        self.http, self.dicom = free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        config = {"Name": "covidct-test", "StorageDirectory": str(root / "db"),
                  "IndexDirectory": str(root / "db"), "HttpPort": self.http,
                  "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                  "HttpBindAddress": "127.0.0.1", "AuthenticationEnabled": False,
                  "Plugins": [], "DicomModalities": {}, "StorageCompression": False}
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log = root / "orthanc.log"
        self.proc = subprocess.Popen([shutil.which("Orthanc"), str(root / "orthanc.json")],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or self._up(), 60, "Orthanc's REST API",
                 self.log)
        assert self.proc.poll() is None, self.log.read_text()

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def request(self, method: str, path: str, body: bytes | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as response:
            data = response.read()
        return data

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def post(self, path: str, obj) -> dict:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        return json.loads(self.request("POST", path, body) or b"{}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def orthanc(tmp_path):
    if not shutil.which("Orthanc"):
        pytest.skip("Orthanc is not installed (Debian package orthanc; scripts/dicom-tools.sh "
                    "installs it when run as root with apt)")
    server = Orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


def test_orthanc_sends_a_study_and_gets_sr_seg_and_key_images_back_in_it(tmp_path, models, orthanc):
    from covidct.cli import main as cli_main

    files = write_series(tmp_path / "series", seed=5, spacing=(2.5, 3.0, 3.0))  # lungs found
    node = Node(tmp_path, models, f"ORTHANC@127.0.0.1:{orthanc.dicom}", quiet=1.0)
    try:
        orthanc.request("PUT", "/modalities/covidct",
                        json.dumps({"AET": "COVIDCT", "Host": "127.0.0.1", "Port": node.port}).encode())
        assert orthanc.post("/modalities/covidct/echo", {}) == {}
        for f in files:  # the study reaches the PACS through its REST API
            study = orthanc.post("/instances", f.read_bytes())["ParentStudy"]
        orthanc.post("/modalities/covidct/store", {"Resources": [study], "Synchronous": True})
        series = wait_for(lambda: (s := orthanc.get(f"/studies/{study}/series")) and len(s) >= 5 and s,
                          240, "results in the study", node.log)
        by_description = {s["MainDicomTags"].get("SeriesDescription", ""): s for s in series}
        ours = {d: s for d, s in by_description.items() if d.startswith("covidct RESEARCH")}
        assert sorted(ours) == ["covidct RESEARCH SEG SYNTHETIC", "covidct RESEARCH SR SYNTHETIC",
                                "covidct RESEARCH key images SYNTHETIC",
                                "covidct RESEARCH key objects SYNTHETIC"]

        def fetch(description):
            return [pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{i}/file")))
                    for i in ours[description]["Instances"]]

        (sr_ds,) = fetch("covidct RESEARCH SR SYNTHETIC")
        (seg_ds,) = fetch("covidct RESEARCH SEG SYNTHETIC")
        keys = fetch("covidct RESEARCH key images SYNTHETIC")
        assert len(keys) == 6
        source = pydicom.dcmread(files[0])
        for ds in (sr_ds, seg_ds, *keys):
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == PATIENT_ID
        seg = hd.seg.Segmentation.from_dataset(seg_ds)
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        # The lungs go back too: the SEG's lung segments are lung_mask(scan) voxel for voxel.
        from covidct.lungs import lung_mask
        from covidct.scanio import load_scan

        mask = lung_mask(load_scan(tmp_path / "series"))
        volume = np.asarray(seg.get_volume(combine_segments=False).array)
        names = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
        assert names[:2] == ["Right lung", "Left lung"]
        assert [int((volume[..., k] > 0).sum()) for k in (0, 1)] == \
            [int((mask.labels == label).sum()) for label in (1, 2)]
        # The probabilities equal `covidct predict` on the same series.
        out = tmp_path / "predict"
        assert cli_main(["predict", str(tmp_path / "series"), "--model", str(models[0]),
                         "--model", str(models[1]), "--out", str(out)]) == 0
        sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
        groups = {str(g.tracking_identifier): g for g in sr.content.get_image_measurement_groups()}
        for method in ("bit", "covidctnet"):
            expected = json.loads((out / f"{method}.json").read_text())["probabilities"]
            got = {m.name.meaning.removeprefix("Probability of "): m.value
                   for m in groups[f"covidct {method}"].get_measurements()}
            assert got.keys() == expected.keys()
            assert np.allclose([got[k] for k in expected], list(expected.values()), atol=1e-6)
        volumes = {m.finding_sites[0].value.meaning: m.value
                   for m in groups["covidct lungs"].get_measurements() if m.name.meaning == "Volume"}
        assert volumes == {"Right lung": mask.volumes_ml()["right"],
                           "Left lung": mask.volumes_ml()["left"], "Lung": mask.volumes_ml()["total"]}
        log = node.text()
        assert PATIENT_NAME not in log and PATIENT_ID not in log
        assert source.StudyInstanceUID not in log and source.SeriesInstanceUID not in log
    finally:
        node.stop()


# Limits and settings, in-process (no models needed: nothing completes) ---------------------

def test_per_association_and_per_study_limits_answer_out_of_resources(tmp_path):
    from covidct.dicom_node import DicomNode, NodeSettings

    files = write_series(tmp_path / "ct", seed=7)
    settings = NodeSettings(spool=tmp_path / "spool", port=free_port(), quiet_s=3600,
                            max_instances_per_association=4, max_instances_per_study=6)
    node = DicomNode(settings, models=[])
    node.start()
    try:
        def statuses(batch):
            ae = AE(ae_title="TESTSCU")
            ae.add_requested_context(pydicom.dcmread(batch[0]).SOPClassUID)
            assoc = ae.associate("127.0.0.1", settings.port, ae_title="COVIDCT")
            codes = [assoc.send_c_store(pydicom.dcmread(f)).Status for f in batch]
            assoc.release()
            return codes

        assert statuses(files[:6]) == [0, 0, 0, 0, 0xA700, 0xA700]  # 4 per association
        wait_for(lambda: len(spool_files(settings.spool, "incoming")) >= 4, 10, "the commit")
        assert statuses(files[6:10]) == [0, 0, 0xA700, 0xA700]     # 6 per study
    finally:
        node.stop()
        node.server.shutdown()


def test_bad_destination_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "covidct", "dicom-node", "--dest", "PACS-no-port",
                           "--spool", str(tmp_path / "spool")], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")), cwd=REPO, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "AE@HOST:PORT" in proc.stderr


def test_unsent_results_are_retried_then_deleted_after_the_keep_time(tmp_path, caplog):
    from covidct.dicom_node import Destination, DicomNode, NodeSettings
    from covidct.dicom_out import refusal_sr, save_outputs

    files = write_series(tmp_path / "ct", seed=8)
    settings = NodeSettings(spool=tmp_path / "spool", destination=Destination("DOWN", "127.0.0.1",
                                                                              free_port()),
                            retry_s=0.0, keep_failed_s=3600)
    node = DicomNode(settings, models=[])
    folder = node.spool.outbox / "study-series"
    save_outputs([refusal_sr([pydicom.dcmread(files[0])], "test")], folder)
    caplog.set_level(logging.INFO, logger="covidct")
    node.send_pending()
    state = json.loads((folder / "state.json").read_text())
    assert state["attempts"] == 1 and "unreachable" in state["last_error"]
    assert "kept, retrying" in caplog.text
    node.send_pending()  # retried: a second failure
    assert json.loads((folder / "state.json").read_text())["attempts"] == 2
    node.settings.keep_failed_s = 0.0  # the keep time is over: deleted, with an error logged
    node.send_pending()
    assert not folder.exists() and "deleted unsent" in caplog.text


def test_predict_retrieves_a_study_from_the_pacs_by_accession_number(tmp_path, models, orthanc):
    """`covidct predict pacs://AE@HOST:PORT/ACCESSION`: C-FIND then C-GET from Orthanc."""
    from covidct.scanio import write_dicom_series

    files = write_dicom_series(build_hu_volume(shape=(12, 64, 64), seed=9), tmp_path / "series",
                               patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
                               extra={"AccessionNumber": "ACC4217"})
    for f in files:
        orthanc.post("/instances", f.read_bytes())
    orthanc.request("PUT", "/modalities/covidct",  # the PACS must know covidct's AE title
                    json.dumps({"AET": "COVIDCT", "Host": "127.0.0.1", "Port": free_port()}).encode())
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), COVIDCT_CACHE=str(tmp_path / "cache"))

    def predict(*args):
        return subprocess.run([sys.executable, "-m", "covidct", "predict", *map(str, args)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=180)

    url = f"pacs://ORTHANC@127.0.0.1:{orthanc.dicom}"
    proc = predict(f"{url}/ACC4217", "--model", models[0], "--dicom-out", tmp_path / "dicom",
                   "--out", tmp_path / "json")
    assert proc.returncode == 0, proc.stderr
    assert "bit:" in proc.stdout and "ACC4217" not in proc.stdout + proc.stderr
    local = predict(tmp_path / "series", "--model", models[0], "--out", tmp_path / "local")
    assert local.returncode == 0, local.stderr
    for name in ("json", "local"):
        assert (tmp_path / name / "bit.json").is_file()
    retrieved = json.loads((tmp_path / "json" / "bit.json").read_text())["probabilities"]
    expected = json.loads((tmp_path / "local" / "bit.json").read_text())["probabilities"]
    assert retrieved == pytest.approx(expected, abs=1e-9)
    (sr,) = (tmp_path / "dicom").glob("sr-*.dcm")
    assert pydicom.dcmread(sr).StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
    missing = predict(f"{url}/NOSUCH1", "--model", models[0])
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "no study with that accession number" in missing.stderr
    assert "NOSUCH1" not in missing.stderr


def test_an_internal_error_sends_an_sr_and_keeps_the_series_for_the_keep_time(tmp_path):
    from covidct.dicom_node import DicomNode, NodeSettings

    class Broken:  # a model with a bug
        method = "bit"
        class_names = ("Normal", "CP", "NCP")

        def predict(self, scan):
            raise RuntimeError("a bug")

    node = DicomNode(NodeSettings(spool=tmp_path / "spool", quiet_s=0), models=[Broken()])
    for k, f in enumerate(write_series(tmp_path / "ct", seed=10)):
        node.spool.stage("a1", "study", "series", f"{k:04d}", f.read_bytes())
    node.spool.commit("a1")
    (work,) = node.spool.take_ready(0)
    outbox = node.process(work)
    (sr,) = [pydicom.dcmread(p) for p in outbox.glob("sr-*.dcm")]
    assert "internal error (RuntimeError)" in json.dumps(sr.to_json_dict())
    kept = node.spool.failed / work.name
    assert len(list(kept.glob("*.dcm"))) == 12 and not work.exists()
    node.spool.expire_failed(3600)
    assert kept.exists()
    node.spool.expire_failed(0)
    assert not kept.exists()
