"""`covidct predict-batch`: parallel prediction over a folder of scans, resumable manifest."""
from __future__ import annotations

import csv
import json

import pytest

torch = pytest.importorskip("torch")

from conftest import save_tiny_bit_model  # noqa: E402
from covidct.batch import MANIFEST, discover_scans, predict_batch, read_manifest  # noqa: E402
from covidct.errors import DatasetError  # noqa: E402

pytestmark = pytest.mark.xdist_group("batch")


@pytest.fixture(scope="module")
def bit_file(tmp_path_factory):
    return save_tiny_bit_model(tmp_path_factory.mktemp("bit") / "bit.pt", seed=1, resize=40, crop=32)


@pytest.fixture
def archive(tmp_path, make_hu_volume):
    """Three readable SYNTHETIC scans and one broken file."""
    from covidct.scanio import save_scan

    root = tmp_path / "archive"
    root.mkdir()
    for k in range(3):
        save_scan(make_hu_volume(shape=(6, 48, 48), seed=k), root / f"case{k + 1}.nii.gz")
    (root / "case10.nii.gz").write_bytes(b"not a NIfTI file")
    (root / ".hidden").mkdir()
    return root


def _rows(out):
    with open(out / MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh))


def test_batch_records_failures_and_resumes(archive, bit_file, tmp_path):
    out = tmp_path / "out"
    first = predict_batch(archive, out, [bit_file], workers=0, threads=1)
    assert (first.total, first.done, first.skipped, first.failed) == (4, 3, 0, 1)
    rows = _rows(out)
    # Scans are named by a salted digest and their position, never by their file names.
    assert [r["index"] for r in rows] == ["1", "2", "3", "4"]  # natural order
    assert all(r["scan"].startswith("scan-") for r in rows)
    assert "case" not in (out / MANIFEST).read_text()
    by_index = {r["index"]: r for r in rows}
    bad = by_index["4"]
    assert bad["status"] == "error" and "not a readable NIfTI" in bad["error"]
    good = by_index["1"]
    assert good["status"] == "ok" and good["labels"].startswith("bit=")
    probs = json.loads(good["probabilities"])["bit"]
    assert abs(sum(probs.values()) - 1) < 1e-4 and good["synthetic"] == "true"
    assert (out / good["outputs"] / "summary.json").is_file()

    # Rerun: finished scans are skipped, the failed one is tried again.
    again = predict_batch(archive, out, [bit_file], workers=0, threads=1)
    assert (again.done, again.skipped, again.failed) == (0, 3, 1)
    # A scan whose outputs vanished is done again; so is every scan for another model file.
    (out / good["outputs"] / "summary.json").unlink()
    third = predict_batch(archive, out, [bit_file], workers=0, threads=1)
    assert (third.done, third.skipped) == (1, 2)
    other = tmp_path / "other.pt"
    other.write_bytes(bit_file.read_bytes() + b"")
    assert predict_batch(archive, out, [other], workers=0, threads=1).done == 3


@pytest.mark.slow
def test_batch_cli_two_workers(archive, bit_file, tmp_path, run_cli):
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("predict-batch", archive, "--out", out, "--model", bit_file,
                                 "--workers", "2", timeout=180)
    assert rc == 2, stderr  # one scan failed: like bad input
    assert "3 predicted" in stdout and "1 failed" in stdout
    manifest = read_manifest(out / MANIFEST)
    assert sorted(r["status"] for r in manifest.values()) == ["error", "ok", "ok", "ok"]


def test_batch_names_scans_by_their_names_only_when_asked(archive, bit_file, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("COVIDCT_SHOW_PATHS", "1")
    out = tmp_path / "named"
    predict_batch(archive, out, [bit_file], workers=0, threads=1)
    rows = _rows(out)
    assert [r["scan"] for r in rows] == ["case1.nii.gz", "case2.nii.gz", "case3.nii.gz",
                                        "case10.nii.gz"]
    assert "case10.nii.gz" in rows[-1]["error"]


def test_discover_errors(tmp_path):
    with pytest.raises(DatasetError, match="no scans"):
        discover_scans(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        discover_scans(tmp_path / "missing")
    (tmp_path / "manifest.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="manifest"):
        read_manifest(tmp_path / "manifest.csv")
