"""`covidct experiment learning-curve`: a micro version through the command (two tiny SYNTHETIC
cohorts of 12 patients, both methods a few steps), its table, figure and report section."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

#: The preset with every size shrunk: 2 training-set sizes x 2 difficulties around the
#: centre (6 patients, difficulty 0), i.e. 3 points per method, 3 val and 3 test patients.
MICRO = """\
grid:
  train_patients: [3, 6]
  difficulty: [0, 1]
settings:
  centre: {train_patients: 6, difficulty: 0}
  val_patients: 3
  test_patients: 3
  matrix: 64
  max_slices: 12
  n_boot: 20
  bit_resolution: [36, 32]
  bit_schedule: [1, 2, 3, 4, 5]
  bit_batch_size: 4
  slice_size: 40
  volume_slices: 34
  max_denoised_slices: 8
  denoiser_width: 4
  slices_per_scan: 4
  denoiser_epochs: 1
  epochs: 2
  batch_size: 4
"""

POINTS = {("3", "0"), ("6", "0"), ("6", "1")}


@pytest.fixture(scope="module")
def curve(tmp_path_factory, run_cli):
    root = tmp_path_factory.mktemp("learning-curve")
    config = root / "micro.yaml"
    config.write_text(MICRO, encoding="utf-8")
    env = {"COVIDCT_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    rc, out, err = run_cli("experiment", "learning-curve", "--out", root / "out", "--config",
                           config, timeout=600, extra_env=env)
    return rc, out, err, root / "out" / "learning-curve"


@pytest.mark.slow
def test_learning_curve_table_covers_both_sweeps_for_both_methods(curve):
    rc, out, err, folder = curve
    assert rc == 0, err[-2000:]
    assert "SYNTHETIC" in out
    with open(folder / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["status"] for r in rows} == {"done"}
    for method in ("bit", "covidctnet"):
        mine = [r for r in rows if r["method"] == method]
        assert {(r["train_patients"], f"{float(r['difficulty']):g}") for r in mine} == POINTS
        for r in mine:
            # the same 3 held-out patients at every size; accuracy inside its own CI
            assert r["test_patients"] == "3" and r["synthetic"] == "True"
            low, acc, high = (float(r[k])
                              for k in ("test_acc_ci_low", "test_acc", "test_acc_ci_high"))
            assert 0.0 <= low <= acc <= high <= 1.0
        sweeps = {(r["train_patients"], f"{float(r['difficulty']):g}"): r["sweeps"] for r in mine}
        assert sweeps == {("3", "0"): "train_patients", ("6", "0"): "train_patients;difficulty",
                          ("6", "1"): "difficulty"}
    meta = json.loads((folder / "experiment.json").read_text(encoding="utf-8"))
    assert meta["synthetic"] is True and meta["experiment"] == "learning-curve"
    header, table = meta["table"]["header"], meta["table"]["rows"]
    assert header[:3] == ["Method", "Training patients", "Difficulty"] and len(table) == 6
    assert all("[" in row[header.index("Patient-level accuracy [95% CI]")] for row in table)
    assert "SYNTHETIC" in (folder / "table.md").read_text(encoding="utf-8")
    assert (folder / "figure.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_learning_curve_training_sets_are_nested_and_held_out_fixed(curve):
    """Smaller training sets are subsets of larger ones; val/test patients never train."""
    *_, folder = curve
    runs = {}
    for spec in (folder / "runs").glob("*/spec.json"):
        params = json.loads(spec.read_text(encoding="utf-8"))["params"]
        with open(spec.parent / "patients.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        runs[(params["method"], params["train_patients"], params["difficulty"])] = rows
    small, large = (runs[("bit", n, 0)] for n in (3, 6))
    train = {n: {r["patient_id"] for r in rows if r["split"] == "train"}
             for n, rows in ((3, small), (6, large))}
    assert len(train[3]) == 3 and len(train[6]) == 6 and train[3] < train[6]
    held_out = {r["patient_id"] for r in large if r["split"] != "train"}
    assert held_out == {r["patient_id"] for r in small if r["split"] != "train"}
    assert not held_out & train[6]
    assert runs[("covidctnet", 6, 0)] == large   # both methods see the same patients


@pytest.mark.slow
def test_learning_curve_reaches_the_report(curve, run_cli):
    *_, folder = curve
    rc, out, err = run_cli("report", folder.parent, "--out", folder.parent / "report.html")
    assert rc == 0, err[-2000:]
    html = (folder.parent / "report.html").read_text(encoding="utf-8")
    assert "Held-out patient accuracy by number of training patients and by difficulty" in html
    assert "Patient-level accuracy [95% CI]" in html and "SYNTHETIC" in html
    assert html.count("data:image/png;base64") >= 1


def test_learning_curve_refuses_data(run_cli, tmp_path):
    rc, out, err = run_cli("experiment", "learning-curve", "--data", tmp_path, "--out", tmp_path)
    assert rc == 2 and "makes its own synthetic cohorts" in err and "Traceback" not in err


def test_other_experiments_still_need_data(run_cli, tmp_path):
    rc, out, err = run_cli("experiment", "resolution", "--out", tmp_path)
    assert rc == 2 and "needs --data" in err and "Traceback" not in err
