"""The HTML report built from a tiny fabricated (SYNTHETIC) demo folder, the CLI, and a
headless-Chromium rendering when chromium is installed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from covidct.constants import DISCLAIMER, SLICE_CLASSES, SYNTHETIC_NOTICE, SYNTHETIC_TAG, VOLUME_CLASSES

REPO = Path(__file__).resolve().parents[1]
#: Patient ids of the fabricated cohort: none of them may appear in the report.
PATIENTS = [f"PX{k:04d}" for k in range(12)]


def _scores(n_classes: int, labels: np.ndarray, rng) -> np.ndarray:
    probs = rng.dirichlet(np.ones(n_classes), size=len(labels))
    probs[np.arange(len(labels)), labels] += 0.8
    return probs / probs.sum(axis=1, keepdims=True)


def _png(path: Path, size=(64, 130)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(path)


def fabricate_demo(root: Path, with_roc: bool = True) -> Path:
    """A demo-like folder: synthetic cohort, a training run, two evaluations, a prediction."""
    from covidct.atomic import write_bytes, write_json
    from covidct.evaluation import _npz
    from covidct.metrics import metrics_with_ci, save_results, slice_and_patient_metrics
    from covidct.prediction import Scores

    rng = np.random.default_rng(0)
    cohort = root / "cohort"
    cohort.mkdir(parents=True)
    (cohort / "README.md").write_text(f"{SYNTHETIC_TAG}: computer-generated phantoms\n")
    labels = [VOLUME_CLASSES[k % 3] for k in range(len(PATIENTS))]
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    (cohort / "labels.csv").write_text("patient_id,volume_label,split,synthetic\n" + "".join(
        f"{p},{lab},{s},true\n" for p, lab, s in zip(PATIENTS, labels, splits)))
    (cohort / "test_COVIDx_CT-2A.txt").write_text("".join(
        f"{SLICE_CLASSES[k % 3]}_{900 + k}_0_{j:04d}.png {k % 3} 10 12 400 380\n"
        for k in range(6) for j in range(4)))

    run = root / "runs" / "bit"
    run.mkdir(parents=True)
    write_json(run / "config.json", {
        "arch": "resnetv2_tiny_bit", "init": "random", "resize": 72, "crop": 64,
        "schedule": [5, 20, 40, 60], "batch_size": 8, "lr": 0.003,
        "command": "covidct train-bit cohort/train_COVIDx_CT-2A.txt --out runs/bit",
        "versions": {"covidct": "0.1.0", "torch": "2.14.1", "python": "3.11"},
        "data": {"train": {"split": "train_COVIDx_CT-2A.txt", "slices": 120, "patients": 6,
                           "per_class": {"Normal": 40, "CP": 40, "NCP": 40}}, "synthetic": True}})
    rows = ["step,loss,lr,images_per_s,data_wait_s,val_loss,val_acc"]
    for step in range(1, 61):
        val = f"{1.2 / step ** 0.5:.4f},{min(0.98, 0.35 + step / 70):.4f}" if step % 10 == 0 else ","
        rows.append(f"{step},{1.1 / step ** 0.4 + 0.05 * rng.random():.4f},{0.003 if step < 40 else 0.0003},40,0.01,{val}")
    (run / "history.csv").write_text("\n".join(rows) + "\n")
    write_json(run / "summary.json", {"finished": True, "best_val_acc": 0.98, "synthetic": True,
                                      "model_weights": "best validation accuracy (step 60)",
                                      "train_seconds_this_session": 42.0})

    # Slice classifier evaluation: 6 test patients x 8 slices.
    groups = np.repeat(PATIENTS[6:12], 8)
    y = np.repeat(np.arange(6) % 3, 8)
    p = _scores(3, y, rng)
    metrics = slice_and_patient_metrics(y, p, groups, class_names=SLICE_CLASSES, n_boot=50, seed=0)
    if not with_roc:
        for level in metrics.values():
            level.pop("roc", None)
    provenance = {"method": "bit", "data": str(cohort), "split": "test", "level": "slice",
                  "n_items": len(y), "n_patients": 6, "synthetic": True,
                  "settings": {"n_boot": 50, "seed": 0, "patient_rule": "mean"},
                  "model": {"name": "bit", "arch": "resnetv2_tiny_bit", "init": "random",
                            "file": "model.pt", "sha256": "0123456789abcdef"},
                  "command": "covidct evaluate cohort --out eval/bit", "covidct_version": "0.1.0",
                  "python": "3.11"}
    bit = root / "eval" / "bit"
    save_results(bit / "results.json", bit / "results.csv", metrics, provenance)
    items = [f"{g}_slice{k}.png" for k, g in enumerate(groups)]
    write_bytes(bit / "scores.npz", _npz(Scores("bit", SLICE_CLASSES, y, p, groups, "slice", items)))
    _png(bit / "gradcam" / "01_NCP_correct.png")
    write_json(bit / "gradcam" / "index.json", {"kind": "gradcam", "items": [
        {"file": "01_NCP_correct.png", "kind": "correct", "level": "slice", "score_row": 3,
         "true_class": "NCP", "predicted_class": "NCP", "explained_class": "NCP",
         "probabilities": {"Normal": 0.05, "CP": 0.1, "NCP": 0.85}}]})
    _png(bit / "tsne.png", size=(300, 360))
    write_json(bit / "explain.json", {"method": "bit", "selection": "per true class: the 1 most "
                                      "confident correct calls and the 1 most confident mistakes",
                                      "tsne": {"file": "tsne.png", "n": 48, "feature_dim": 512,
                                               "neighbour_agreement": 0.9}})

    # CovidCTNet evaluation: scan level, 12 patients.
    yv = np.arange(12) % 3
    pv = _scores(3, yv, rng)
    scan = metrics_with_ci(yv, y_prob=pv, groups=np.array(PATIENTS), class_names=VOLUME_CLASSES,
                           n_boot=50, seed=0)
    save_results(root / "eval" / "covidctnet" / "results.json",
                 root / "eval" / "covidctnet" / "results.csv", {"scan": scan},
                 {"method": "covidctnet", "split": "test", "level": "scan", "n_items": 12,
                  "n_patients": 12, "synthetic": True, "data": "cohort"})

    write_json(root / "predict" / "bit.json", {
        "disclaimer": DISCLAIMER, "method": "bit", "label": "NCP",
        "probabilities": {"Normal": 0.1, "CP": 0.2, "NCP": 0.7}, "aggregation": "mean of slices",
        "scan": {"shape": [40, 256, 256], "spacing_mm": [2.5, 0.7, 0.7], "units": "HU",
                 "synthetic": True}, "timings_s": {"inference": 1.5},
        "synthetic_notice": SYNTHETIC_NOTICE})
    return root


HEADINGS = (
    "Summary", "Data: provenance and counts", "Slice classifier (BiT ResNet-v2), test split",
    "CovidCTNet (BCDU-Net infection maps + 3D CNN), test split", "Overall",
    "Per class: sensitivity, specificity, PPV, NPV", "Per class: precision, recall, F1",
    "NCP vs rest", "COVID-19 vs rest", "Operating points", "Normalised confusion matrices",
    "ROC curves, one class against the rest", "Calibration: reliability diagrams",
    "Grad-CAM gallery", "Infection-map gallery", "t-SNE of the penultimate-layer features",
    "Training", "Training curves: loss, learning rate and validation accuracy over steps",
    "Example predictions", "Commands and versions",
    "How to read the figures",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return fabricate_demo(tmp_path_factory.mktemp("demo") / "demo-output")


@pytest.fixture(scope="module")
def report(demo) -> str:
    from covidct.report import build_report

    path = build_report(demo)
    assert path == demo / "report.html"
    assert not list(demo.glob(".*.part"))
    return path.read_text(encoding="utf-8")


def test_report_has_every_section_banner_and_disclaimer(report):
    for heading in HEADINGS:
        assert f">{heading}<" in report or f">{heading}</" in report, heading
    assert SYNTHETIC_NOTICE in report and 'class="banner"' in report
    assert report.index('class="banner"') < report.index("<main>")
    assert DISCLAIMER in report


def test_report_tables_carry_confidence_intervals(report, demo):
    document = json.loads((demo / "eval" / "bit" / "results.json").read_text())
    accuracy = document["metrics"]["patient"]["accuracy"]
    expected = (f"{100 * accuracy['value']:.1f}% [{100 * accuracy['ci_low']:.1f}, "
                f"{100 * accuracy['ci_high']:.1f}]")
    assert expected in report
    assert "bootstrap resamples of patients" in report
    # Cohort counts: 12 patients over train/val/test; 24 COVIDx slices of 6 patients.
    assert "Patients per split and class" in report and "24 slices / 6 patients" in report


def test_report_is_self_contained_and_private(report):
    sources = re.findall(r'src="([^"]*)"', report)
    assert len(sources) >= 8  # figures, gallery, t-SNE, training curves
    assert all(s.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")) for s in sources)
    assert not re.search(r'(href|src)="(https?:)?//', report)
    assert "<script" not in report.lower() and "<link" not in report.lower()
    for patient in PATIENTS:
        assert patient not in report
    assert "900_0_" not in report  # COVIDx slice file names carry patient ids too


def test_sections_without_input_say_so(tmp_path):
    from covidct.report import build_report

    cohort = tmp_path / "only-cohort"
    cohort.mkdir()
    (cohort / "labels.csv").write_text("patient_id,label,split\nA1,Control,test\nA2,CAP,train\n")
    html = build_report(cohort, tmp_path / "r.html").read_text()
    assert "No evaluation of the slice classifier found" in html
    assert "No evaluation of the covidctnet found" in html
    assert "No training runs found" in html and "No example predictions found" in html
    assert SYNTHETIC_NOTICE not in html  # nothing here is marked synthetic
    assert DISCLAIMER in html


def test_roc_is_recomputed_from_scores_when_results_lack_it(tmp_path):
    from covidct.report import build_report

    demo = fabricate_demo(tmp_path / "demo", with_roc=False)
    html = build_report(demo).read_text()
    assert ">ROC curves, one class against the rest<" in html


def test_cli_report_writes_the_file(run_cli, demo, tmp_path):
    out = tmp_path / "cli.html"
    rc, stdout, stderr = run_cli("report", demo, "--out", out)
    assert rc == 0, stderr
    assert out.stat().st_size > 20_000 and str(out) in stdout


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_report_on_a_bad_folder_gives_one_line_and_exit_2(capsys, tmp_path, make):
    from covidct.cli import main

    target = tmp_path / "nothing-here"
    if make == "empty":
        target.mkdir()
    rc = main(["report", str(target)])  # in-process: the same path as the command, no start-up cost
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("covidct: error:") and str(target) in lines[0]
    assert not (target / "report.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report, demo, tmp_path):
    out = tmp_path / "report.png"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "render_report.sh"), str(demo / "report.html"),
                           str(out), "1280", "2400"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    with Image.open(out) as picture:
        assert picture.size == (1280, 2400)
        colours = picture.convert("RGB").resize((64, 120)).getcolors(64 * 120)
    assert out.stat().st_size > 60_000
    assert colours is not None and len(colours) > 50  # text, tables and figures, not a blank page
