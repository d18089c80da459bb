"""`predict-batch` on Dask: a LocalCluster of 2 workers on loopback, one killed mid-run; the
manifest must equal a local run's, and the scans finished before the kill are not redone."""
from __future__ import annotations

import json
import os
import signal

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("distributed")

from conftest import save_tiny_bit_model  # noqa: E402
from covidct.batch import MANIFEST, predict_batch, read_manifest  # noqa: E402

pytestmark = [pytest.mark.xdist_group("batch"), pytest.mark.slow]
# "scan" and "outputs" are digests salted per output folder: rows are matched by "index".
COMPARED = ("status", "labels", "synthetic", "models", "error")


@pytest.fixture(scope="module")
def bit_file(tmp_path_factory):
    return save_tiny_bit_model(tmp_path_factory.mktemp("bit") / "bit.pt", seed=1, resize=40, crop=32)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Eight readable SYNTHETIC scans and one broken file."""
    from conftest import build_hu_volume
    from covidct.scanio import save_scan

    root = tmp_path_factory.mktemp("archive") / "archive"
    root.mkdir()
    for k in range(8):
        save_scan(build_hu_volume(shape=(24, 64, 64), seed=k), root / f"case{k + 1}.nii.gz")
    (root / "case10.nii.gz").write_bytes(b"not a NIfTI file")
    return root


def _compared(row: dict) -> dict:
    return {k: str(row[k]).replace(row["scan"], "<scan>") for k in COMPARED}


def _same_manifest(local: dict, other: dict) -> None:
    # Scans are named by a digest salted per output folder: match rows by their position.
    local = {row["index"]: row for row in local.values()}
    other = {row["index"]: row for row in other.values()}
    assert sorted(local) == sorted(other)
    for scan, row in local.items():
        assert _compared(row) == _compared(other[scan]), scan
        if row["status"] == "ok":
            a, b = json.loads(row["probabilities"]), json.loads(other[scan]["probabilities"])
            for method in a:
                for name, p in a[method].items():
                    assert abs(p - b[method][name]) < 1e-5


def _models_loaded() -> bool:
    from covidct.batch_worker import WORKER

    return len(WORKER.get("models", ())) == 1


def test_lost_worker_costs_only_its_scan(archive, bit_file, tmp_path):
    from distributed import Client, LocalCluster

    local = predict_batch(archive, tmp_path / "local", [bit_file], workers=0, threads=1,
                          runtime="torch")
    assert (local.done, local.failed) == (8, 1)

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    client = Client(cluster)
    out = tmp_path / "dask"
    killed: dict = {}

    def kill_a_busy_worker(row):
        if killed:
            return
        finished = {row["outputs"]: (out / row["outputs"] / "summary.json").stat().st_mtime_ns
                    } if row["status"] == "ok" else {}
        for address, keys in client.processing().items():
            if keys:
                pid = client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                killed.update(address=address, keys=keys, finished=finished)
                return

    try:
        summary = predict_batch(archive, out, [bit_file], threads=1, runtime="torch",
                                scheduler=cluster.scheduler_address, on_row=kill_a_busy_worker)
        assert killed, "no worker was busy when the first scan finished"
        # The nanny replaced the killed worker, and the plugin loaded the models into it.
        client.wait_for_workers(2, timeout=120)
        loaded = client.run(_models_loaded)
        assert len(loaded) == 2 and all(loaded.values()), loaded
    finally:
        client.close()
        cluster.close()
    assert (summary.total, summary.done, summary.failed) == (9, 8, 1)
    _same_manifest(read_manifest(tmp_path / "local" / MANIFEST), read_manifest(out / MANIFEST))
    for outputs, mtime in killed["finished"].items():  # not redone after the kill
        assert (out / outputs / "summary.json").stat().st_mtime_ns == mtime

    # Resumable as before: a rerun on a new local cluster skips every finished scan.
    again = predict_batch(archive, out, [bit_file], workers=1, threads=1, runtime="torch",
                          scheduler="local")
    assert (again.done, again.skipped, again.failed) == (0, 8, 1)


def test_cli_local_cluster(archive, bit_file, tmp_path, run_cli):
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("predict-batch", archive, "--out", out, "--model", bit_file,
                                 "--cluster", "local", "--workers", "2", "--runtime", "torch",
                                 timeout=300)
    assert rc == 2, stderr  # the broken scan: like bad input
    assert "8 predicted" in stdout and "1 failed" in stdout
    rows = read_manifest(out / MANIFEST)
    assert sorted(r["status"] for r in rows.values()) == ["error"] + ["ok"] * 8
    broken = [r for r in rows.values() if r["status"] == "error"][0]
    assert broken["index"] == "9" and "case10" not in broken["error"]  # named by position only


def test_resources_need_a_cluster(archive, bit_file, tmp_path, run_cli):
    rc, _, stderr = run_cli("predict-batch", archive, "--out", tmp_path / "o", "--model",
                            bit_file, "--resources", "GPU=1")
    assert rc == 2 and "--resources needs a Dask cluster" in stderr
