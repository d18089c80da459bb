"""Training and prediction of the BiT slice classifier, end to end, on tiny synthetic data.

The cohort here is a tiny class-separable stand-in in the exact COVIDx CT format (marked
synthetic): Normal slices have dark lungs, CP one consolidated (bright) lung, NCP both lungs
hazy. Patients are split between train, val and test, so accuracy is on unseen patients.
"""
import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covidct.constants import DISCLAIMER, SLICE_CLASSES, SYNTHETIC_TAG
from covidct.errors import CovidctError, DatasetError, ModelError, ScanError
from covidct.models import load_model, read_model_file
from covidct.bit.model import MAX_SLICES, TINY_ARCH
from covidct.bit.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def make_toy_cohort(root: Path, patients_per_class=4, slices=6, size=64, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    (root / "README.txt").write_text(f"{SYNTHETIC_TAG}: toy slices for tests, not patients\n")
    yy, xx = np.mgrid[0:size, 0:size] / size
    splits = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(SLICE_CLASSES):
        for p in range(patients_per_class):
            split = ("train" if p < patients_per_class - 2 else
                     "val" if p == patients_per_class - 2 else "test")
            for s in range(slices):
                cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
                body = ((xx - cx) / 0.42) ** 2 + ((yy - cy) / 0.32) ** 2 < 1
                left = ((xx - cx + 0.18) / 0.13) ** 2 + ((yy - cy) / 0.2) ** 2 < 1
                right = ((xx - cx - 0.18) / 0.13) ** 2 + ((yy - cy) / 0.2) ** 2 < 1
                img = np.where(body, 150.0, 5.0)
                img[left | right] = 40
                if label == 1:
                    img[left if rng.random() < 0.5 else right] = 140
                elif label == 2:
                    img[left | right] = 95
                img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
                name = f"{cname}_{p}_0_{s}.png"
                Image.fromarray(img).save(images / name)
                ys, xs = np.nonzero(body)
                splits[split].append(f"{name} {label} {xs.min()} {ys.min()} {xs.max()} {ys.max()}")
    for split, lines in splits.items():
        (root / f"{split}_COVIDx_CT-2A.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(train_split=str(data / "train_COVIDx_CT-2A.txt"), images=str(data / "images"),
                    val_split=str(data / "val_COVIDx_CT-2A.txt"), out=str(out), arch=TINY_ARCH,
                    init="random", resize=40, crop=32, schedule=(5, 40, 50, 55, 60), batch_size=16,
                    lr=0.01, mixup_alpha=0.0, workers=0, val_every=20, progress=False)
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_toy_cohort(tmp_path_factory.mktemp("toy") / "covidx", patients_per_class=5)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    torch.set_num_threads(1)
    return train(tiny_config(cohort, tmp_path_factory.mktemp("run") / "run"))


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_beats_chance_on_unseen_patients(trained, cohort):
    run = trained.run_dir
    for name in ("config.json", "history.csv", "checkpoints/last.pt", "checkpoints/best.pt",
                 "model.pt", "summary.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert len(rows) == 60 and [int(r["step"]) for r in rows] == list(range(1, 61))
    # Zero head: the first loss is exactly that of uniform probabilities.
    assert float(rows[0]["loss"]) == pytest.approx(math.log(3), abs=1e-4)
    last = np.mean([float(r["loss"]) for r in rows[-10:]])
    assert last < 0.6 * math.log(3)
    assert [int(r["step"]) for r in rows if r["val_acc"]] == [20, 40, 60]

    model = load_model(run / "model.pt")
    scores = model.score_dataset(cohort / "test_COVIDx_CT-2A.txt", cohort / "images")
    accuracy = float(np.mean(scores.y_prob.argmax(1) == scores.y_true))
    assert accuracy >= 0.7, accuracy          # chance is 1/3
    assert scores.y_prob.shape == (18, 3) and np.allclose(scores.y_prob.sum(1), 1)
    assert sorted(set(scores.groups)) == ["CP_4", "NCP_4", "Normal_4"]
    assert scores.provenance["synthetic"] is True

    summary = json.loads((run / "summary.json").read_text())
    assert summary["synthetic"] is True and summary["data"]["train"]["patients"] == 9
    config = json.loads((run / "config.json").read_text())
    assert config["schedule"] == [5, 40, 50, 55, 60] and "torch" in config["versions"]


def test_model_file_carries_everything_prediction_needs(trained):
    record = read_model_file(trained.model_path)
    assert record["method"] == "bit" and record["arch"] == TINY_ARCH
    assert record["class_names"] == list(SLICE_CLASSES)
    assert record["window"] == "covidx-lung"
    assert record["resolution"] == {"resize": 40, "crop": 32}
    assert record["crop_rule"] == "box" and record["scan_crop_rule"] == "auto-body"
    assert record["synthetic"] is True and record["trained_on"]["train"]["per_class"]["CP"] == 18
    assert record["version"] and record["training"]["best_step"] in (20, 40, 60)


def test_predict_real_slice_and_real_50_slice_series(trained, shared_dir):
    from covidct.scanio import load_scan

    model = load_model(trained.model_path)
    examples = shared_dir / "data" / "real-ct-examples"
    single = model.predict(load_scan(examples / "ex-covid-ct.png"))
    assert single.slice_probabilities.shape == (1, 3) and list(single.slice_indices) == [0]
    assert single.probabilities.sum() == pytest.approx(1.0)

    series = model.predict(load_scan(examples / "volume_example"))
    n = len(series.slice_indices)
    assert 10 <= n <= 50 and series.slice_probabilities.shape == (n, 3)
    assert np.all(np.diff(series.slice_indices) > 0) and series.slice_indices.max() < 50
    assert np.allclose(series.slice_probabilities.sum(1), 1.0)
    # A series is called by its scan_k (12) most abnormal slices: least likely Normal.
    k = min(model.scan_k, n)
    worst = np.argsort(series.slice_probabilities[:, 0], kind="stable")[:k]
    assert model.scan_rule == "topk" and model.scan_k == 12
    assert np.allclose(series.probabilities, series.slice_probabilities[worst].mean(0))
    out = series.to_dict()
    assert out["disclaimer"] == DISCLAIMER and "lung" in out["aggregation"]
    assert out["model"]["synthetic"] is True and "synthetic_notice" in out  # trained on toy data
    assert out["scan"]["shape"] == [50, 512, 512]


def test_model_files_from_before_the_scan_rule_keep_the_mean(trained, shared_dir, tmp_path):
    """A file saved before ``scan_rule`` existed calls a series by the mean of all its scored
    slices, as it did; a new file saves its rule; a rule the aggregator lacks is refused."""
    from covidct.bit.model import SliceClassifier
    from covidct.scanio import load_scan

    payload = read_model_file(trained.model_path)
    assert (payload["scan_rule"], payload["scan_k"]) == ("topk", 12)
    old = {k: v for k, v in payload.items() if k not in ("scan_rule", "scan_k")}
    model = SliceClassifier.from_payload(old)
    assert model.scan_rule == "mean"
    series = model.predict(load_scan(shared_dir / "data" / "real-ct-examples" / "volume_example"))
    assert np.allclose(series.probabilities, series.slice_probabilities.mean(0))
    assert "most abnormal" not in series.aggregation
    with pytest.raises(ModelError, match="scan_rule"):
        SliceClassifier.from_payload({**payload, "scan_rule": "median"})


def test_long_hu_series_is_windowed_and_capped(trained, make_hu_volume):
    model = load_model(trained.model_path)
    scan = make_hu_volume(shape=(150, 64, 64))
    prediction = model.predict(scan)
    idx = prediction.slice_indices
    assert len(idx) == MAX_SLICES and idx[0] == 0 and idx[-1] == 149
    assert np.all(np.diff(idx) >= 2)  # evenly spread over the series
    assert np.allclose(prediction.slice_probabilities.sum(1), 1.0)
    coronal = make_hu_volume(shape=(3, 64, 64))
    coronal.orientation = "coronal"
    with pytest.raises(ScanError, match="axial"):
        model.predict(coronal)


def test_prediction_pictures_are_gradcam_of_the_slices_that_drove_the_call(trained, make_hu_volume,
                                                                          tmp_path):
    from PIL import Image

    model = load_model(trained.model_path)
    scan = make_hu_volume(shape=(8, 64, 64))
    prediction = model.predict(scan)
    paths = model.save_pictures(prediction, scan, tmp_path)
    called = list(SLICE_CLASSES).index(prediction.label)
    top = prediction.slice_indices[np.argsort(-prediction.slice_probabilities[:, called],
                                              kind="stable")[:3]]
    assert [p.name for p in paths] == [f"bit-gradcam-{k:04d}.png" for k in top]
    picture = np.asarray(Image.open(paths[0]))
    assert picture.ndim == 3 and picture.shape[2] == 3
    half = (picture.shape[1] - 4) // 2   # plain slice | white gap | overlay
    assert picture.shape[1] == 2 * half + 4 and (picture[:, half:half + 4] == 255).all()
    plain = picture[:, :half].astype(int)
    # The slice itself, in gray (up to resampling ripple), except the lung outline in cyan.
    spread = plain.max(axis=2) - plain.min(axis=2)
    gray = spread <= 4
    assert gray.mean() > 0.5 and plain[gray].std() > 5
    coloured = plain[~gray]
    r, g, b = coloured.mean(axis=0)     # no heat-map colour on this half: on average cyan
    assert g - r > 20 and abs(g - b) < 10


@pytest.mark.slow
def test_resume_after_a_stop_equals_the_uninterrupted_run(cohort, tmp_path):
    torch.set_num_threads(1)
    settings = dict(schedule=(2, 4, 6, 7, 8), batch_size=8, batch_split=2, mixup_alpha=0.1,
                    balanced=True, max_train_per_class=6, val_every=3, seed=5)
    whole = train(tiny_config(cohort, tmp_path / "whole", **settings))
    stopped = train(tiny_config(cohort, tmp_path / "parts", stop_after=3, **settings))
    assert stopped.model_path is None and not (tmp_path / "parts" / "summary.json").exists()
    with pytest.raises(CovidctError, match="already holds a run"):
        train(tiny_config(cohort, tmp_path / "parts", **settings))
    with pytest.raises(CovidctError, match="settings differ"):
        train(tiny_config(cohort, tmp_path / "parts", resume=True, **dict(settings, seed=6)))
    resumed = train(tiny_config(cohort, tmp_path / "parts", resume=True, **settings))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in whole.history]
    a = read_model_file(whole.model_path)["state_dict"]
    b = read_model_file(resumed.model_path)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["data"]["train"]["per_class"] == {"Normal": 6, "CP": 6, "NCP": 6}


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_matches_one_process(cohort, tmp_path):
    args = ["--train-split", cohort / "train_COVIDx_CT-2A.txt", "--images", cohort / "images",
            "--val-split", cohort / "val_COVIDx_CT-2A.txt", "--arch", TINY_ARCH, "--init", "random",
            "--resolution", "40,32", "--schedule", "1,2,3,4,5", "--batch-size", "8", "--lr", "0.01",
            "--no-mixup", "--workers", "0", "--val-every", "5", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "covidct.bit.train", *map(str, args), "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["processes"] == 2
    torch.set_num_threads(1)
    from covidct.cli.train_bit import config_from_args

    single = train(config_from_args(_parse([*map(str, args), "--out", str(tmp_path / "one")])))
    a = read_model_file(tmp_path / "ddp" / "model.pt")["state_dict"]
    b = read_model_file(single.model_path)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.startswith("head"))


def _parse(argv):
    import argparse

    from covidct.cli.train_bit import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_missing_image_fails_before_any_training(cohort, tmp_path):
    split = tmp_path / "train_COVIDx_CT-2A.txt"
    lines = (cohort / "train_COVIDx_CT-2A.txt").read_text().splitlines()
    split.write_text("\n".join(lines + ["gone_1_0_0.png 2 0 0 10 10"]) + "\n")
    config = tiny_config(cohort, tmp_path / "run", train_split=str(split))
    with pytest.raises(DatasetError, match="gone_1_0_0.png"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_command_line_options_map_to_the_config(cohort, tmp_path):
    from covidct.cli.train_bit import config_from_args

    config = config_from_args(_parse(["--data", str(cohort), "--out", str(tmp_path / "r")]))
    assert config.train_split.endswith("train_COVIDx_CT-2A.txt")
    assert config.val_split.endswith("val_COVIDx_CT-2A.txt")
    assert (config.resize, config.crop, config.schedule) == (512, 480, (500, 3000, 6000, 9000, 10000))
    assert (config.batch_size, config.lr, config.mixup_alpha, config.init) == (64, 0.003, 0.1, "bit-m")
    config = config_from_args(_parse(["--data", str(cohort), "--out", "x", "--resolution", "128",
                                      "--schedule", "bit-500", "--no-mixup", "--val-split", "none"]))
    assert (config.resize, config.crop, config.schedule[-1], config.mixup_alpha) == (160, 128, 500, 0.0)
    assert config.val_split is None
    assert (config.crop_rule, config.rewindow) == ("box", None)  # the paper's
    config = config_from_args(_parse(["--data", str(cohort), "--out", "x", "--crop-rule", "lungs",
                                      "--rewindow", "lung-detail-wide"]))
    assert (config.crop_rule, config.rewindow) == ("lungs", "lung-detail-wide")
    with pytest.raises(CovidctError, match="--data"):
        config_from_args(_parse(["--out", "x"]))


def test_jitter_option_reaches_the_config_and_an_older_checkpoint_resumes(tmp_path):
    from covidct.bit.train import _check_resumable
    from covidct.cli.train_bit import config_from_args

    config = config_from_args(_parse(["--data", str(tmp_path), "--out", "r", "--jitter"]))
    assert config.jitter is True
    plain = config_from_args(_parse(["--data", str(tmp_path), "--out", "r"]))
    saved = {k: v for k, v in asdict(plain).items() if k != "jitter"}  # before --jitter existed
    _check_resumable(saved, plain, tmp_path / "last.pt")
    with pytest.raises(CovidctError, match="jitter"):
        _check_resumable(saved, config, tmp_path / "last.pt")


def test_command_line_defaults_are_the_config_defaults(cohort, tmp_path):
    """train2d's option defaults are read from TrainConfig, not written twice."""
    from dataclasses import MISSING, fields

    from covidct.cli.train_bit import config_from_args

    config = config_from_args(_parse(["--data", str(cohort), "--out", str(tmp_path / "r")]))
    differ = {f.name for f in fields(TrainConfig)
              if f.default is not MISSING and getattr(config, f.name) != f.default}
    assert differ == {"val_split", "command"}  # from --data, and the command line itself


def test_train2d_help_does_not_import_torch():
    code = ("import runpy, sys\n"
            "sys.argv = ['covidct', 'train2d', '--help']\n"
            "try:\n    runpy.run_module('covidct', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "sys.stderr.write('torch imported' if 'torch' in sys.modules else 'torch-free')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert "--batch-size" in done.stdout and done.stderr.endswith("torch-free"), done.stderr


@pytest.mark.slow
def test_trains_on_the_project_synthetic_cohort_and_flags_it(request, tmp_path):
    """On `covidct synth` output (when conftest offers it): the run and its model say synthetic."""
    try:
        root = Path(request.getfixturevalue("synthetic_cohort"))
    except pytest.FixtureLookupError:
        pytest.skip("no synthetic_cohort fixture in conftest yet")
    data = root / "covidx" if (root / "covidx").is_dir() else root
    torch.set_num_threads(1)
    result = train(tiny_config(data, tmp_path / "run", resize=48, crop=40,
                               schedule=(2, 6, 8, 9, 10), val_every=5, max_val=30))
    assert result.summary["synthetic"] is True
    model = load_model(result.model_path)
    assert model.describe()["synthetic"] is True
    patients = sorted((root / "patients").glob("*/dicom")) if (root / "patients").is_dir() else []
    if patients:
        from covidct.scanio import load_scan

        prediction = model.predict(load_scan(patients[0]))
        assert prediction.synthetic and np.isclose(prediction.probabilities.sum(), 1.0)


def test_balance_patients_without_balanced_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "covidct", "train-bit", "--data", str(tmp_path),
                           "--out", str(tmp_path / "run"), "--balance-patients"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--balance-patients" in proc.stderr and "--balanced" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_unknown_crop_rule_or_window_is_refused_before_any_work(tmp_path):
    for option, value in (("--crop-rule", "lung"), ("--rewindow", "mediastinum")):
        proc = subprocess.run([sys.executable, "-m", "covidct", "train-bit", "--data", str(tmp_path),
                               "--out", str(tmp_path / "run"), option, value],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"{option}: invalid choice: '{value}'" in proc.stderr
        assert not (tmp_path / "run").exists()


def test_rewindow_travels_in_the_model_file_and_scoring_reads_through_it(trained, cohort, tmp_path):
    from covidct.bit.model import SliceClassifier, build_network
    from covidct.bit.slice_data import EvalTransform, rewindow_table
    from covidct.windowing import LUNG_DETAIL

    assert read_model_file(trained.model_path)["rewindow"] is None  # the paper's: as given
    torch.manual_seed(0)
    net = build_network(TINY_ARCH).eval()
    for p in net.parameters():  # a non-zero head, so the pixels matter
        torch.nn.init.normal_(p, std=0.05)
    path = SliceClassifier(net=net, arch=TINY_ARCH, resize=40, crop=32,
                           rewindow=LUNG_DETAIL.name).save(tmp_path / "m.pt")
    model = load_model(path)
    assert model.rewindow == LUNG_DETAIL.name and model.describe()["rewindow"] == LUNG_DETAIL.name
    pixels = np.asarray(Image.open(cohort / "images" / "NCP_4_0_0.png"))
    assert torch.equal(model.eval_transform()(pixels), EvalTransform(32)(rewindow_table(LUNG_DETAIL.name)[pixels]))
    # Without the file's rewindow the same network scores other numbers: scoring applies it.
    scored = model.score_dataset(cohort / "test_COVIDx_CT-2A.txt", cohort / "images").y_prob
    model.rewindow = None
    plain = model.score_dataset(cohort / "test_COVIDx_CT-2A.txt", cohort / "images").y_prob
    assert not np.allclose(scored, plain, atol=1e-4)
    # A file naming a window the COVIDx picture cannot give back is refused, naming the file.
    record = torch.load(path, weights_only=False)
    record["rewindow"] = "mediastinum"
    torch.save(record, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="unknown re-window 'mediastinum'") as refused:
        load_model(tmp_path / "bad.pt")
    assert "bad.pt" in str(refused.value)


def test_lungs_crop_rule_travels_in_the_model_file_and_every_reader_crops_by_it(cohort, tmp_path):
    from covidct.bit.model import SliceClassifier, build_network
    from covidct.covidx import read_split
    from covidct.windowing import lung_box

    torch.manual_seed(0)
    net = build_network(TINY_ARCH).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = SliceClassifier(net=net, arch=TINY_ARCH, resize=40, crop=32, crop_rule="lungs").save(tmp_path / "m.pt")
    assert read_model_file(path)["scan_crop_rule"] == "auto-body-lungs"
    model = load_model(path)
    assert model.crop_rule == "lungs" and model.describe()["crop_rule"] == "lungs"
    record = read_split(cohort / "test_COVIDx_CT-2A.txt")[0]
    pixels = np.asarray(Image.open(cohort / "images" / record.filename))
    assert model.input_box(pixels, record.box) == lung_box(pixels, record.box) != record.box
    split = cohort / "test_COVIDx_CT-2A.txt"
    lungs = model.score_dataset(split, cohort / "images").y_prob
    model.crop_rule = "box"
    assert not np.allclose(lungs, model.score_dataset(split, cohort / "images").y_prob, atol=1e-4)
    with pytest.raises(CovidctError, match="unknown crop rule"):
        tiny_config(cohort, tmp_path / "r", crop_rule="lung")


@pytest.mark.slow
def test_evaluate_on_a_synth_cohort_also_calls_each_whole_series(trained, synthetic_cohort, run_cli,
                                                                 tmp_path):
    """On a covidct synth cohort, `evaluate` scores the labelled pictures (the paper's protocol)
    and also each test patient's whole DICOM series the way `predict` calls it."""
    from covidct.scanio import load_scan

    out = tmp_path / "evaluation"
    rc, stdout, stderr = run_cli("evaluate", synthetic_cohort / "covidx", "--model", trained.model_path,
                                 "--out", out, "--n-boot", "20", timeout=300)
    assert rc == 0, stderr
    results = json.loads((out / "results.json").read_text())
    series = results["metrics"]["series"]
    rows = [r for r in csv.DictReader((synthetic_cohort / "labels.csv").open()) if r["split"] == "test"]
    assert rows and series["level"] == "series" and series["n_patients"] == len(rows)
    model = load_model(trained.model_path)
    calls = [model.predict(load_scan(synthetic_cohort / r["dicom"])).label == r["label"] for r in rows]
    assert series["accuracy"]["value"] == pytest.approx(np.mean(calls))
    assert "most abnormal" in results["provenance"]["settings"]["series_rule"]
    assert "| series |" in stdout and "series: n = " in stdout
    assert "\nseries,accuracy," in (out / "results.csv").read_text()
    assert not any(r["patient_id"] in (out / "results.json").read_text() for r in rows)
