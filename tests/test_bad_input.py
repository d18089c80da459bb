"""Bad and inadequate input (tests/badinput.py): refused in one line with exit 2 before any
model loads, or read with a warning that every output carries. All data SYNTHETIC, except
the real TCIA series-choice check."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import badinput
from conftest import REPO, build_hu_volume, save_tiny_bit_model, save_tiny_covidctnet_model
from covidct.errors import CovidctError, ScanError
from covidct.predict import read_checked


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return (save_tiny_bit_model(folder / "bit.pt", seed=1, resize=40, crop=32),
            save_tiny_covidctnet_model(folder / "covidctnet.pt"))


@pytest.mark.parametrize("case", badinput.REFUSED)
def test_refused_before_any_model(tmp_path, case):
    path, words = badinput.REFUSED[case](tmp_path)
    with pytest.raises(ScanError) as info:
        read_checked(path)
    assert words in str(info.value)


#: The cases the QA report named; each is also run through the command.
CLI_CASES = ["all_nan_nifti", "nan_rescale_slope", "constant_air", "blank_black_png",
             "huge_png", "big_png", "fifo_alone", "corrupt_compressed_dicom"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_in_one_line_before_loading_models(tmp_path, run_cli, case):
    path, words = badinput.REFUSED[case](tmp_path)
    # The model file does not exist: the scan must be refused before models are looked at.
    rc, out, err = run_cli("predict", path, "--model", tmp_path / "absent.pt", "--out",
                           tmp_path / "out", timeout=60)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("covidct: error: ") and words in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", badinput.WARNED)
def test_doubtful_input_is_read_with_a_warning(tmp_path, case):
    path, words = badinput.WARNED[case](tmp_path)
    scan = read_checked(path)
    assert any(words in w for w in scan.metadata["warnings"]), scan.metadata["warnings"]


def test_fifo_in_a_series_folder_is_skipped_not_waited_for(tmp_path, run_cli):
    path, _ = badinput.fifo_in_series(tmp_path)
    rc, out, err = run_cli("info", path, timeout=60)
    assert rc == 0 and out.startswith("16x32x32 HU axial scan"), err


def test_missing_slice_is_resampled_on_true_positions(tmp_path):
    path, _ = badinput.missing_slice(tmp_path)
    scan = read_checked(path)
    assert scan.n_slices == 12 and scan.spacing[0] == pytest.approx(2.5)
    original = build_hu_volume((12, 32, 32)).voxels
    # slice 5 was missing: interpolated halfway between its neighbours; the rest kept
    np.testing.assert_allclose(scan.voxels[5], (original[4] + original[6]) / 2, atol=1)
    np.testing.assert_allclose(scan.voxels[6:], original[6:], atol=1)


def test_few_nan_voxels_warning_reaches_every_output(tmp_path, run_cli, models):
    path, words = badinput.few_nan_voxels(tmp_path)
    rc, out, err = run_cli("predict", path, "--model", models[0], "--out", tmp_path / "out")
    assert rc == 0, err
    assert words in out
    for name in ("bit.json", "summary.json"):
        text = (tmp_path / "out" / name).read_text()
        assert words in text, name


def test_unreadable_series_member_is_an_error_naming_it(tmp_path, monkeypatch):
    files = badinput._series(tmp_path / "s", shape=(4, 32, 32))
    real_open = open

    def guarded(file, *args, **kwargs):
        if Path(file) == files[2]:
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded)
    from covidct.scanio import load_scan

    with pytest.raises(ScanError, match="file 3 of 4 in name order cannot be read "
                                        r"\(permission denied\)"):
        load_scan(tmp_path / "s")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_unreadable_series_member_from_the_command(tmp_path, run_cli):
    files = badinput._series(tmp_path / "s", shape=(4, 32, 32))
    files[1].chmod(0)
    rc, _, err = run_cli("info", tmp_path / "s")
    assert rc == 2 and "file 2 of 4 in name order cannot be read" in err


def test_unwritable_out_is_refused_before_work(tmp_path, run_cli, models):
    scan = badinput._nifti(tmp_path / "ok.nii.gz", build_hu_volume((16, 64, 64)).voxels)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, out, err = run_cli("predict", scan, "--model", tmp_path / "absent.pt",
                           "--out", blocker / "out")
    assert rc == 2 and "output folder is not writable" in err and err.count("\n") == 1
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
        rc, _, err = run_cli("predict", scan, "--model", models[0], "--out", tmp_path / "ro")
        assert rc == 2 and "not writable" in err


def test_method_all_writes_what_could_run_and_says_why_not(tmp_path, run_cli, models):
    # One slice: the slice classifier can run, CovidCTNet has no volume to read.
    one = badinput._nifti(tmp_path / "one.nii.gz", build_hu_volume((1, 64, 64)).voxels)
    out = tmp_path / "out"
    rc, stdout, err = run_cli("predict", one, "--model", models[0], "--model", models[1],
                              "--out", out)
    assert rc == 3, err  # partial: documented in README "Bad input"
    assert stdout.startswith("bit: ") and "covidctnet: not run: CovidCTNet needs" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["results"]) == ["bit"] and "covidctnet" in summary["not_run"]
    assert (out / "bit.json").is_file() and not (out / "covidctnet.json").exists()


def test_covidctnet_needs_enough_lung_along_z():
    from covidct.checks import MIN_LUNG_MM, check_scan, require_lung_extent
    from covidct.scan import Scan

    two = build_hu_volume((2, 64, 64), spacing=(1.0, 0.7, 0.7))
    with pytest.raises(ScanError, match=f"CovidCTNet needs at least {MIN_LUNG_MM:.0f} mm of "
                                        "lung along z.*2 mm"):
        require_lung_extent(two, "CovidCTNet")
    check_scan(two)  # one lung slice is enough for the slice classifier
    enough = build_hu_volume((16, 64, 64), spacing=(2.5, 0.7, 0.7))
    require_lung_extent(enough, "CovidCTNet")
    assert any("only 40 mm of lung" in w for w in enough.metadata["warnings"])
    pictures = Scan(np.repeat(build_hu_volume((2, 64, 64)).voxels, 1, 0), (1, 1, 1), "HU",
                    geometry_known=False)
    with pytest.raises(ScanError, match="at least 3 lung slices when the slice spacing is unknown"):
        require_lung_extent(pictures, "CovidCTNet")


def test_original_axial_series_is_preferred_over_a_larger_reformat(tmp_path):
    import pydicom

    from covidct.scanio import load_scan

    badinput._series(tmp_path / "study" / "axial", shape=(6, 32, 32),
                     extra={"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]})
    coronal = badinput._series(tmp_path / "study" / "coronal", shape=(12, 32, 32),
                               extra={"ImageType": ["DERIVED", "SECONDARY", "REFORMATTED"]})
    for f in coronal:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.save_as(f)
    scan = load_scan(tmp_path / "study")
    assert scan.n_slices == 6 and scan.orientation == "axial"
    note = next(w for w in scan.metadata["warnings"] if "2 series found" in w)
    assert "because it is the axial CT series (ORIGINAL/PRIMARY) preferred" in note


def test_real_tcia_study_reads_the_original_axial_series(shared_dir):
    from covidct.scanio import load_scan

    scan = load_scan(shared_dir / "data/real-ct-examples/tcia-covid19-ny-sbu/A002304")
    assert scan.orientation == "axial"
    note = next(w for w in scan.metadata["warnings"] if "series found" in w)
    assert "ORIGINAL/PRIMARY" in note and "A002304" not in note and "1900" not in note


def test_sigterm_during_a_zip_read_removes_the_unpacked_copy(tmp_path):
    # Many small slices: unpacking and reading them keeps the folder in use for a second or
    # more, so the signal lands inside the read even on a busy machine.
    files = badinput._series(tmp_path / "s", shape=(400, 24, 24), spacing=(0.5, 0.7, 0.7))
    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"CT/{f.name}")
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TMPDIR=str(temp))
    proc = subprocess.Popen([sys.executable, "-m", "covidct", "info", str(archive)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(temp.glob("covidct-zip-*")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert list(temp.glob("covidct-zip-*")) == []
    if proc.returncode == 0:
        pytest.skip("the read finished before the signal arrived")
    assert proc.returncode == 143 and "terminated" in err


def test_model_save_is_durable_and_cleans_stale_parts(tmp_path, monkeypatch):
    path = tmp_path / "bit.pt"
    stale = tmp_path / ".bit.pt.abc123.part"
    stale.write_bytes(b"half a model")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / ".bit.pt.def456.part"  # another writer, still busy: kept
    fresh.write_bytes(b"in progress")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    save_tiny_bit_model(path, seed=1, resize=40, crop=32)
    assert path.is_file() and not stale.exists() and fresh.exists()
    assert len(synced) == 2  # the file before the rename, its folder after


def test_duplicated_split_lines_count_once(tmp_path, caplog):
    from covidct.covidx import read_split
    from covidct.errors import DatasetError

    split = tmp_path / "test.txt"
    split.write_text("a_1.png 0 1 1 9 9\nb_1.png 1 1 1 9 9\na_1.png 0 1 1 9 9\n")
    assert [r.filename for r in read_split(split)] == ["a_1.png", "b_1.png"]
    assert "1 duplicated line(s) ignored (e.g. line 3)" in caplog.text
    split.write_text("a_1.png 0 1 1 9 9\na_1.png 2 1 1 9 9\n")
    with pytest.raises(DatasetError, match="line 2: a file listed on line 1 appears again"):
        read_split(split)


def test_the_lung_finder_can_be_swapped():
    from covidct import checks

    scan = build_hu_volume((8, 64, 64))
    mask = np.zeros(scan.shape, np.uint8)
    mask[2:5, 20:40, 20:40] = 1  # a stand-in lung mask on slices 2-4
    result = checks.check_scan(scan, lung_finder=checks.from_lung_mask(lambda s: mask))
    assert result.lung_indices.tolist() == [2, 3, 4]
    assert result.lung_extent_mm == pytest.approx(3 * 2.5)
    with pytest.raises(ScanError, match="no lungs found"):
        checks.check_scan(build_hu_volume((8, 64, 64)),
                          lung_finder=checks.from_lung_mask(lambda s: np.zeros(s.shape)))


def test_batch_records_refusals_as_errors_and_partial_runs(tmp_path, models):
    from covidct.batch import predict_batch, read_manifest

    archive = tmp_path / "archive"
    archive.mkdir()
    badinput._nifti(archive / "a-one-slice.nii.gz", build_hu_volume((1, 64, 64)).voxels)
    badinput._nifti(archive / "b-air.nii.gz", np.full((8, 32, 32), -1000.0))
    summary = predict_batch(archive, tmp_path / "out", list(models), workers=0, threads=1)
    assert (summary.done, summary.failed) == (1, 1)
    rows = {r["index"]: r for r in read_manifest(tmp_path / "out" / "manifest.csv").values()}
    assert rows["1"]["status"] == "ok" and rows["1"]["labels"].startswith("bit=")
    assert "covidctnet not run: CovidCTNet needs" in rows["1"]["error"]
    assert rows["2"]["status"] == "error" and "not CT-like" in rows["2"]["error"]
    assert "air" not in rows["2"]["scan"]  # named by digest, not by file name
