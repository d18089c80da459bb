"""CovidCTNet end to end on SYNTHETIC data, through `covidct train-covidctnet`.

Two small runs are trained once per session (tiny networks, few epochs, one thread):

* on a `covidct synth` cohort, stage "denoiser": the BCDU-Net's reconstruction error must be
  larger on the generator's lesion masks than on healthy lung;
* on planted-lesion phantoms in the method's folder-per-class layout, stage "all": the 3D CNN
  must beat chance on held-out patients, and the model file then serves prediction,
  caching, pictures, evaluation and the save/load round trip.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from covidct.cli import main as cli_main  # noqa: E402
from covidct.constants import VOLUME_CLASSES  # noqa: E402
from covidct.errors import ScanError  # noqa: E402
from covidct.models import load_model  # noqa: E402
from covidct.scan import Scan  # noqa: E402
from covidct.covidctnet import preprocess as preprocess_module  # noqa: E402
from covidct.covidctnet.infection_maps import denoise  # noqa: E402
from covidct.synth.phantom import chest_phantom  # noqa: E402
from covidct.covidctnet.preprocess import preprocess_volume  # noqa: E402
from covidct.covidctnet.runfolder import load_denoiser_file  # noqa: E402
from covidct.covidctnet.settings import VolumeSettings  # noqa: E402
from covidct.windowing import COVIDX_LUNG  # noqa: E402

pytestmark = pytest.mark.xdist_group("volumes-pipeline")

FOLDERS = {"Control": "Control", "CAP": "CAP", "COVID-19": "Covid"}
PHANTOM_GEOMETRY = dict(n_slices=16, size=64, spacing=(4.0, 5.0, 5.0))
TINY = ["--slice-size", "40", "--volume-slices", "34", "--denoiser-width", "8",
        "--threads", "1", "--no-progress"]


def train3d(*args: str) -> None:
    assert cli_main(["train-covidctnet", *args]) == 0


@pytest.fixture(scope="session")
def volumes_env(tmp_path_factory):
    """A private array cache for the whole session, and one torch thread per worker."""
    cache = tmp_path_factory.mktemp("covidctnet-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("COVIDCT_CACHE", str(cache))
    # auto follows the stored int8 check on any CPU here; the CPU rule is tested on its own
    # (test_auto_keeps_float32_bcdunet_where_int8_is_slow)
    mp.setenv("COVIDCT_INT8_CPU", "fast")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cache
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="session")
def synth_denoiser_run(volumes_env, tmp_path_factory):
    """A small `covidct synth` cohort and a BCDU-Net trained on its control patients.

    Every patient is in the train split: the denoiser sees only the controls, and the
    lesion test reads the others. The learning rate is three times the method's so that a
    few hundred steps give a usable denoiser.
    """
    from covidct.synth import CohortSettings, generate_cohort

    root = tmp_path_factory.mktemp("synth")
    data = root / "cohort"
    generate_cohort(data, CohortSettings(patients=12, seed=3, difficulty=0.0, matrix=64,
                                         max_slices=40, split=(1.0, 0.0, 0.0),
                                         formats=("nifti", "covidctnet")), progress=False)
    run = root / "run"
    train3d("--data", str(data), "--out", str(run), "--stage", "denoiser",
            "--denoiser-epochs", "6", "--denoiser-lr", "3e-3", "--slices-per-scan", "64",
            "--denoiser-batch-size", "4", *TINY)
    return data, run


@pytest.fixture(scope="session")
def opacity_denoiser_run(synth_denoiser_run):
    """The same cohort's denoiser trained as the demo trains it: opacity pseudo-infection
    in the lungs."""
    data, first = synth_denoiser_run
    run = first.parent / "opacity-run"
    train3d("--data", str(data), "--out", str(run), "--stage", "denoiser",
            "--denoiser-epochs", "6", "--denoiser-lr", "3e-3", "--slices-per-scan", "64",
            "--denoiser-batch-size", "4", "--noise-region", "lungs", "--noise-kind", "opacity",
            *TINY)
    return data, run


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory):
    """Planted-lesion phantoms as NIfTI files in the method's Control/CAP/Covid folders."""
    from covidct.scanio import save_scan

    root = tmp_path_factory.mktemp("phantoms")
    for label, folder in FOLDERS.items():
        for k in range(12):
            scan, _ = chest_phantom(label, seed=100 * VOLUME_CLASSES.index(label) + k,
                                    **PHANTOM_GEOMETRY)
            save_scan(scan, root / folder / f"{folder}{k:02d}.nii.gz")
    return root


@pytest.fixture(scope="session")
def phantom_run(volumes_env, phantom_cohort, synth_denoiser_run, tmp_path_factory):
    """The 3D CNN on the phantoms' infection maps, made by the synth run's frozen denoiser."""
    run = tmp_path_factory.mktemp("phantom-run") / "run"
    train3d("--data", str(phantom_cohort), "--out", str(run), "--stage", "classifier",
            "--denoiser", str(synth_denoiser_run[1] / "denoiser.pt"), "--epochs", "25", "--batch-size", "6",
            "--test-fraction", "0.35", "--no-ablation", "--standardise-inputs", *TINY)
    return run


@pytest.fixture(scope="session")
def model(phantom_run):
    return load_model(phantom_run / "model.pt")


# -- the denoiser on the synthetic generator's lesions ----------------------------------------

def _on_model_grid(scan: Scan, mask: np.ndarray, settings: VolumeSettings) -> np.ndarray:
    """A boolean mask of ``scan``'s grid carried to the pre-processed grid, through the very
    same resampling (as a two-level HU image)."""
    two_level = np.where(mask, 400.0, -1000.0).astype(np.float32)
    moved = preprocess_volume(Scan(two_level, spacing=scan.spacing, units="HU",
                                   direction=scan.direction), settings)
    return moved > 0.5


def test_denoiser_reconstruction_error_is_larger_on_lesions_than_on_healthy_lung(synth_denoiser_run):
    from covidct.scanio import load_scan

    data, run = synth_denoiser_run
    denoiser, saved, _ = load_denoiser_file(run / "denoiser.pt")
    settings = VolumeSettings(**{**saved, "volume_slices": 34})
    with open(data / "labels.csv", newline="") as fh:
        sick = [r for r in csv.DictReader(fh) if r["volume_label"] != "Control"
                and float(r["lesion_fraction"]) > 0.01]
    assert len(sick) >= 6
    lesion_errors, healthy_errors, lesion_signed, healthy_signed = [], [], [], []
    for row in sick:
        ct = load_scan(data / row["nifti"])
        labels = load_scan(data / row["lesions"]).voxels
        lesion = _on_model_grid(ct, np.isin(labels, (1, 2, 3, 4)), settings)
        lung = _on_model_grid(ct, (ct.voxels > -950) & (ct.voxels < -700) & (labels == 0), settings)
        volume = preprocess_volume(ct, settings)
        rows = np.flatnonzero(lesion.any(axis=(1, 2)))
        difference = volume[rows] - denoise(volume[rows], denoiser)
        lesion_errors.append(np.abs(difference)[lesion[rows]].mean())
        healthy_errors.append(np.abs(difference)[lung[rows]].mean())
        lesion_signed.append(difference[lesion[rows]].mean())
        healthy_signed.append(difference[lung[rows]].mean())
    assert np.mean(lesion_errors) > 1.2 * np.mean(healthy_errors), (lesion_errors, healthy_errors)
    # The map keeps what the denoiser removed: denser-than-normal lesions come out positive.
    assert np.mean(lesion_signed) > np.mean(healthy_signed) + 0.02


@pytest.mark.slow
def test_infection_map_singles_out_lesions_inside_the_lungs(opacity_denoiser_run):
    """The map scored against the generator's truth (what `evaluate` reports): lesion voxels
    rank above healthy lung voxels, and both classes' lesions score above healthy lung.
    The bound is what this tiny run reaches (voxel AUC 0.60 at 40 px, width 8, 6 epochs),
    less a margin: a map at chance, or one whose sign is wrong, fails."""
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.truth import score_map, truth_on_grid

    data, run = opacity_denoiser_run
    denoiser, saved, _ = load_denoiser_file(run / "denoiser.pt")
    settings = VolumeSettings(**{**saved, "volume_slices": 34})
    net = CovidCTNet.build(settings, denoiser=denoiser)
    with open(data / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    maps, truths, labels = [], [], []
    for row in rows:
        maps.append(net.input_for_file(data / row["nifti"])[0])
        truths.append(truth_on_grid(data / row["lesions"], data / row["lungs"], settings))
        labels.append(row["volume_label"])
    result = score_map(maps, truths, labels)
    assert result["auc"] > 0.56, result
    healthy = result["per_class"]["Control"]["mean_on_healthy_lung"]
    for label in ("CAP", "COVID-19"):
        assert result["per_class"][label]["mean_on_lesions"] > healthy, result


def test_denoiser_run_folder(synth_denoiser_run):
    data, run = synth_denoiser_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["synthetic"] is True and "synthetic_notice" in summary
    controls = summary["data"]["patients"]["train"]["Control"]
    assert summary["denoiser"]["train_slices"] == 64 * controls
    assert summary["denoiser"]["noisy_slices"] == summary["denoiser"]["train_slices"] // 2
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["stage"] for r in rows] == ["denoiser"] * 6
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0]
    assert not any(r["val_loss"] for r in rows)  # no validation controls: stopped on train loss
    assert (run / "checkpoints" / "denoiser-last.pt").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["stage"] == "denoiser" and config["settings"]["slice_size"] == 40
    assert not (run / "model.pt").exists()


def test_denoiser_kept_by_its_validation_map_auc(run_cli, tmp_path):
    """`train-covidctnet --denoiser-select map-auc` as a user types it: every epoch's map AUC
    on the noisy validation control slices is in history.csv, and the denoiser kept is the
    epoch with the highest one (not the lowest loss), as its facts say."""
    from covidct.synth import CohortSettings, generate_cohort

    data, run = tmp_path / "cohort", tmp_path / "run"
    generate_cohort(data, CohortSettings(patients=9, seed=5, difficulty=0.0, matrix=64,
                                         max_slices=30, split=(0.67, 0.33, 0.0),
                                         formats=("nifti", "covidctnet")), progress=False)
    rc, out, err = run_cli("train-covidctnet", "--data", data, "--out", run, "--stage", "denoiser",
                           "--denoiser-epochs", "4", "--denoiser-patience", "4",
                           "--denoiser-lr", "3e-3", "--slices-per-scan", "24",
                           "--denoiser-batch-size", "4", "--noise-region", "lungs",
                           "--noise-kind", "lobar", "--denoiser-select", "map-auc",
                           "--cache-dir", tmp_path / "cache", *TINY, timeout=300)
    assert rc == 0, err
    rows = list(csv.DictReader(open(run / "history.csv")))
    aucs = [float(r["val_map_auc"]) for r in rows]
    assert len(aucs) == 4 and all(0.0 <= a <= 1.0 for a in aucs)
    facts = json.loads((run / "summary.json").read_text())["denoiser"]
    assert facts["val_patients"] >= 1 and facts["selected_by"] == "map-auc"
    assert facts["best_epoch"] == int(np.argmax(aucs))
    assert facts["val_map_auc"] == pytest.approx(max(aucs), abs=1e-5)
    assert facts["best_loss"] == pytest.approx(float(rows[facts["best_epoch"]]["val_loss"]), abs=1e-5)
    _, _, saved = load_denoiser_file(run / "denoiser.pt")
    assert saved["selected_by"] == "map-auc" and saved["best_epoch"] == facts["best_epoch"]


def test_capped_denoising_matches_denoising_every_slice(synth_denoiser_run):
    """The default cap (100 evenly spaced 1-mm slices through BCDU-Net) against the method's
    every-slice route, on a ~300-slice resampled synthetic scan."""
    import dataclasses

    from covidct.scanio import load_scan
    from covidct.covidctnet.infection_maps import infection_map

    data, run = synth_denoiser_run
    denoiser, saved, _ = load_denoiser_file(run / "denoiser.pt")
    settings = VolumeSettings(**{**saved, "volume_slices": 50})
    volume = preprocess_volume(load_scan(next((data / "covidctnet" / "Covid").iterdir())), settings)
    assert len(volume) > 150
    every = infection_map(volume, denoiser, dataclasses.replace(settings, max_denoised_slices=0))
    capped = infection_map(volume, denoiser, settings)
    assert capped.shape == every.shape == (50, 40, 40)
    assert np.corrcoef(capped.ravel(), every.ravel())[0, 1] > 0.99
    assert np.abs(capped - every).mean() < 0.05 * every.std()


# -- the 3D CNN on planted lesions -------------------------------------------------------------

def test_cnn_learns_and_beats_chance_on_held_out_patients(phantom_run):
    """The 3D CNN leaves the uniform prediction (a loss stuck at ln 3 is the collapse the demo
    once showed) and calls held-out patients better than chance (1/3)."""
    summary = json.loads((phantom_run / "summary.json").read_text())
    test = summary["classifier"]["test"]
    assert summary["data"]["patients"]["test"] == {c: 4 for c in VOLUME_CLASSES}
    assert test["n_slices"] == 12
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(phantom_run / "history.csv"))
              if r["stage"] == "classifier"]
    assert min(losses[-5:]) < 0.7 * np.log(3), losses
    assert test["accuracy"] >= 0.6, test          # 8 of 12; chance is 4
    assert test["macro"]["auc"] >= 0.75, test["macro"]
    assert test["binary"]["auc"] >= 0.75, test["binary"]  # COVID-19 vs rest, next to 3 classes
    # The input scale is learnt from the training scans and travels in the model file.
    assert summary["classifier"]["input_scale"] > 5
    assert load_model(phantom_run / "model.pt").settings.input_scale == pytest.approx(
        summary["classifier"]["input_scale"])
    assert summary["mode"] == "3-class" and summary["synthetic"] is True
    assert summary["comparison"]["rows"][0]["split"] == "val"


def test_prediction_carries_probabilities_map_and_provenance(model):
    scan, _ = chest_phantom("CAP", seed=999, **PHANTOM_GEOMETRY)
    prediction = model.predict(scan)
    assert prediction.method == "covidctnet"
    assert prediction.class_names == VOLUME_CLASSES
    assert prediction.probabilities.shape == (3,)
    assert prediction.probabilities.sum() == pytest.approx(1.0)
    assert prediction.maps["infection"].shape == (34, 40, 40)
    assert prediction.model["synthetic"] and prediction.scan["synthetic"]
    assert prediction.model["settings"]["slice_size"] == 40
    assert {"preprocess", "infection_map", "classify", "total"} <= set(prediction.timings)
    out = prediction.to_dict()
    assert "synthetic_notice" in out
    assert scan.source and scan.source not in json.dumps(out)  # no file names or paths


def test_windowed_pictures_are_predicted_with_a_warning(model):
    scan, _ = chest_phantom("Control", seed=998, **PHANTOM_GEOMETRY)
    pictures = Scan(COVIDX_LUNG.to_uint8(scan.voxels), spacing=scan.spacing, units="windowed")
    prediction = model.predict(pictures)
    assert any("8-bit" in w for w in prediction.scan["warnings"])
    assert prediction.probabilities.sum() == pytest.approx(1.0)


def test_unfit_scans_fail_with_a_clear_error(model):
    scan, _ = chest_phantom("Control", seed=997, **PHANTOM_GEOMETRY)
    with pytest.raises(ScanError, match="at least 2 slices"):
        model.predict(Scan(scan.voxels[:1], spacing=scan.spacing, units="HU"))
    with pytest.raises(ScanError, match="axial"):
        model.predict(Scan(scan.voxels, spacing=scan.spacing, units="HU", orientation="sagittal"))
    with pytest.raises(ScanError, match="modality"):
        model.predict(Scan(scan.voxels, spacing=scan.spacing, units="HU",
                           metadata={"modality": "PT"}))


def test_without_a_cache_the_scan_is_not_hashed(model, monkeypatch):
    """The scan's digest names cache entries only: with the cache off, prediction skips it
    and gives the same probabilities."""
    from covidct.covidctnet.cache import ArrayCache

    scan, _ = chest_phantom("COVID-19", seed=995, **PHANTOM_GEOMETRY)
    reference = model.predict(scan)
    monkeypatch.setattr(model, "cache", ArrayCache(None))
    monkeypatch.setattr("covidct.covidctnet.pipeline.scan_digest",
                        lambda scan: pytest.fail("hashed the scan without a cache"))
    uncached = model.predict(scan)
    assert uncached.scan["cache"] == {"volume": "miss", "input": "miss"}
    np.testing.assert_allclose(uncached.probabilities, reference.probabilities, rtol=0, atol=1e-6)


def test_second_prediction_hits_the_cache(model, monkeypatch):
    scan, _ = chest_phantom("COVID-19", seed=996, **PHANTOM_GEOMETRY)
    first = model.predict(scan)
    assert first.scan["cache"] == {"volume": "miss", "input": "miss"}
    calls = []
    monkeypatch.setattr("covidct.covidctnet.pipeline.preprocess_volume",
                        lambda *a, **k: calls.append(1) or preprocess_module.preprocess_volume(*a, **k))
    second = model.predict(scan)
    assert calls == []
    assert second.scan["cache"] == {"volume": "hit", "input": "hit"}
    np.testing.assert_array_equal(first.probabilities, second.probabilities)
    # A changed scan is a different entry.
    changed = Scan(scan.voxels + 1.0, spacing=scan.spacing, units="HU")
    assert model.predict(changed).scan["cache"]["volume"] == "miss"
    assert calls == [1]


def test_model_file_round_trip_gives_identical_predictions(model, phantom_run, tmp_path):
    scan, _ = chest_phantom("CAP", seed=995, **PHANTOM_GEOMETRY)
    copy = tmp_path / "copy.pt"
    model.save(copy)
    reloaded = load_model(copy)
    np.testing.assert_array_equal(model.predict(scan).probabilities, reloaded.predict(scan).probabilities)
    assert reloaded.settings == model.settings and reloaded.training == model.training


def test_pictures_are_written_next_to_the_prediction(model, tmp_path):
    from PIL import Image

    scan, _ = chest_phantom("COVID-19", seed=994, **PHANTOM_GEOMETRY)
    prediction = model.predict(scan)
    paths = model.save_pictures(prediction, scan, tmp_path)
    assert sorted(p.name for p in paths) == ["covidctnet-infection-mip.png",
                                             "covidctnet-infection-slices.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 256
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_score_dataset_gives_scan_level_scores_by_patient(model, phantom_cohort):
    scores = model.score_dataset(phantom_cohort, split="test", progress=False)
    assert scores.level == "scan" and scores.method == "covidctnet"
    assert scores.y_prob.shape == (12, 3) and len(set(scores.groups)) == 12
    assert sorted(np.bincount(scores.y_true).tolist()) == [4, 4, 4]
    assert scores.provenance["synthetic"] is True and scores.provenance["split"] == "test"


# -- ablation, binary mode, resume -------------------------------------------------------------

def test_ablation_binary_mode_and_resume_continue_where_they_stopped(synth_denoiser_run,
                                                                     phantom_cohort, tmp_path):
    common = ["--data", str(phantom_cohort), "--stage", "classifier", "--binary",
              "--denoiser", str(synth_denoiser_run[1] / "denoiser.pt"), "--test-fraction", "0.35",
              "--mask-input", "--mask-erode", "1", "--no-int8", *TINY]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # The width given here is not the denoiser's: the run takes the denoiser's own.
    train3d(*common, "--out", str(straight), "--epochs", "2", "--denoiser-width", "16")
    train3d(*common, "--out", str(resumed), "--epochs", "1")
    train3d(*common, "--out", str(resumed), "--epochs", "2", "--resume")

    summary = json.loads((straight / "summary.json").read_text())
    assert summary["mode"] == "COVID-19 vs rest"
    assert summary["class_names"] == ["non-COVID-19", "COVID-19"]
    models = {row["model"] for row in summary["comparison"]["rows"]}
    assert len(models) == 2 and any("plain volumes" in m for m in models)
    assert all("inside the lung mask" in m for m in models)
    main = load_model(straight / "model.pt")
    assert main.settings.denoiser_width == 8
    ablation = load_model(straight / "ablation" / "model.pt")
    assert ablation.settings.input == "volume" and ablation.denoiser is None
    # The ablation differs from the main model in the map only: it reads the same lungs.
    assert (ablation.settings.mask_input, ablation.settings.mask_erode) == (True, 1)
    assert (main.settings.mask_input, main.settings.mask_erode) == (True, 1)

    history = list(csv.DictReader(open(resumed / "history.csv")))
    assert [(r["stage"], r["epoch"]) for r in history] == [
        ("classifier", "0"), ("classifier", "1"), ("ablation", "0"), ("ablation", "1")]
    scan, _ = chest_phantom("COVID-19", seed=993, **PHANTOM_GEOMETRY)
    for name in ("model.pt", "ablation/model.pt"):
        a, b = load_model(straight / name), load_model(resumed / name)
        assert a.class_names == ("non-COVID-19", "COVID-19")
        np.testing.assert_allclose(a.predict(scan).probabilities, b.predict(scan).probabilities,
                                   atol=1e-6)


def test_normalised_3d_cnn_with_warm_up_travels_in_its_model_file(synth_denoiser_run,
                                                                   phantom_cohort, tmp_path,
                                                                   volumes_env, run_cli):
    """--cnn-norm is saved with the model: the loaded model rebuilds the normalisation layers
    (with their running statistics) and predicts exactly as the trained one did. Batches of
    17 from 18 training scans leave a batch of one, which BatchNorm cannot train on."""
    run = tmp_path / "norm"
    train3d("--data", str(phantom_cohort), "--out", str(run), "--stage", "classifier",
            "--denoiser", str(synth_denoiser_run[1] / "denoiser.pt"), "--test-fraction", "0.35",
            "--epochs", "2", "--cnn-norm", "batch", "--lr-warmup-epochs", "1", "--lr", "1e-3",
            "--lr-schedule", "cosine",
            "--batch-size", "17", "--no-ablation", "--standardise-inputs", *TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert sum(summary["data"]["patients"]["train"].values()) == 18
    config = json.loads((run / "config.json").read_text())
    assert config["cnn_norm"] == "batch" and config["settings"]["cnn_norm"] == "batch"
    assert config["lr_schedule"] == "cosine"
    model = load_model(run / "model.pt")
    assert model.settings.cnn_norm == "batch"
    _int8_is_the_default_and_answers_as_float32(model, run, tmp_path, run_cli)


def _int8_is_the_default_and_answers_as_float32(model, run, tmp_path, run_cli) -> None:
    """This model's training ended with an int8 check that PASSED (measured: same call 8 of 8,
    median probability difference 0.012; maps r >= 0.994, 99th percentile <= 0.45 SD; a model
    trained 2 epochs, near chance, so its probabilities move little): `covidct predict` with
    the default runtime runs the int8 BCDU-Net and gives float32's answer."""
    from covidct import export, quantize

    record = quantize.read_parity(export._cached_int8(model, require_pass=False))
    assert record["passed"] and record["rule_version"] == quantize.DENOISER_RULE_VERSION, record
    assert export.choose_runtime(model, "auto") == "onnx-int8"
    scan, _ = chest_phantom("COVID-19", seed=994, **PHANTOM_GEOMETRY)
    from covidct.scanio import save_scan

    path = save_scan(scan, tmp_path / "scan.nii.gz")
    results = {}
    for runtime, shown in (("onnx", "onnx"), (None, "onnx-int8")):
        chosen = () if runtime is None else ("--runtime", runtime)
        rc, _, stderr = run_cli("predict", path, "--model", run / "model.pt", *chosen,
                                "--no-pictures", "--out", tmp_path / shown, timeout=300,
                                extra_env={"COVIDCT_CACHE": os.environ["COVIDCT_CACHE"],
                                           "COVIDCT_INT8_CPU": "fast"})
        assert rc == 0, stderr
        assert f"covidctnet: runtime {shown}" in stderr
        results[shown] = json.loads((tmp_path / shown / "summary.json").read_text())[
            "results"]["covidctnet"]
    # On a CPU where int8 is slower than float32 (told so here), the default stays float32
    # although the check passed.
    rc, _, stderr = run_cli("predict", path, "--model", run / "model.pt", "--no-pictures",
                            "--out", tmp_path / "slow-cpu", timeout=300,
                            extra_env={"COVIDCT_CACHE": os.environ["COVIDCT_CACHE"],
                                       "COVIDCT_INT8_CPU": "slow"})
    assert rc == 0 and "covidctnet: runtime onnx\n" in stderr + "\n", stderr
    # The check bounds the median over scans (0.012 here), not each scan: on this phantom,
    # from outside the cohort, the largest probability moved 0.043 (float32 0.46 vs 0.29).
    a, b = (np.array(list(results[r]["probabilities"].values())) for r in ("onnx", "onnx-int8"))
    assert 0 < np.abs(a - b).max() <= INT8_MAX_SCAN_DIFF, (a, b)
    assert results["onnx"]["label"] == results["onnx-int8"]["label"], (a, b)
    norms = [m for m in model.classifier.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(norms) == 10 and all(int(m.num_batches_tracked) > 0 for m in norms)
    scan, _ = chest_phantom("COVID-19", seed=994, **PHANTOM_GEOMETRY)
    again = load_model(run / "model.pt")
    np.testing.assert_allclose(model.predict(scan).probabilities, again.predict(scan).probabilities,
                               atol=1e-6)
    from covidct.covidctnet.train import TrainConfig
    from covidct.errors import ModelError

    with pytest.raises(ModelError, match="cnn_norm"):
        TrainConfig(data="d", out="o", cnn_norm="layer")
    with pytest.raises(ModelError, match="lr_schedule"):
        TrainConfig(data="d", out="o", lr_schedule="step")


def test_learning_rate_warms_up_then_follows_its_schedule():
    """Linear warm-up to lr, then constant (the method) or a half cosine that ends at zero on
    the last step and never rises again (a resumed run asks for later steps only)."""
    from covidct.covidctnet.train import _learning_rate

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)

    def rates(schedule):
        set_rate, out = _learning_rate(optimizer, 1e-3, 10, 110, schedule), []
        for step in range(120):
            set_rate(step)
            out.append(optimizer.param_groups[0]["lr"])
        return np.array(out)

    constant, cosine = rates("constant"), rates("cosine")
    np.testing.assert_allclose(constant[:10], cosine[:10])
    np.testing.assert_allclose(constant[:10], 1e-3 * np.arange(1, 11) / 10)
    assert np.all(constant[10:] == 1e-3)
    assert cosine[10] == pytest.approx(1e-3) and cosine[60] == pytest.approx(5e-4)
    assert np.all(np.diff(cosine[10:]) <= 0) and cosine[109] < 1e-6 and np.all(cosine[110:] == 0)


def test_train3d_refuses_a_missing_or_mismatched_denoiser(synth_denoiser_run, phantom_cohort,
                                                         tmp_path, capsys):
    rc = cli_main(["train-covidctnet", "--data", str(phantom_cohort), "--out", str(tmp_path / "run"),
                   "--stage", "classifier", *TINY])
    assert rc == 2
    assert "no trained denoiser" in capsys.readouterr().err
    rc = cli_main(["train-covidctnet", "--data", str(phantom_cohort), "--out", str(tmp_path / "run2"),
                   "--stage", "classifier", "--denoiser", str(synth_denoiser_run[1] / "denoiser.pt"),
                   *TINY, "--slice-size", "48"])
    assert rc == 2
    assert "40-pixel slices" in capsys.readouterr().err


def test_mask_erode_reaches_the_training_and_a_negative_one_is_refused(phantom_cohort, tmp_path,
                                                                        run_cli, monkeypatch):
    from covidct.covidctnet import train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda config: seen.setdefault("config", config) and {})
    assert cli_main(["train-covidctnet", "--data", str(phantom_cohort), "--out", str(tmp_path / "r"),
                     "--mask-input", "--mask-erode", "1", "--no-int8", "--no-progress"]) == 0
    assert (seen["config"].mask_input, seen["config"].mask_erode) == (True, 1)
    rc, _, err = run_cli("train-covidctnet", "--data", phantom_cohort, "--out", tmp_path / "bad",
                         "--mask-input", "--mask-erode", "-1", "--no-progress")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "mask_erode" in err and not (tmp_path / "bad").exists()


def test_train3d_help_explains_the_options(run_cli):
    rc, out, _ = run_cli("train-covidctnet", "--help")
    assert rc == 0
    for option in ("--stage", "--binary", "--resume", "--denoise-slices", "--no-ablation", "--mask-erode",
                   "--cnn-norm", "--lr-warmup-epochs", "--lr-schedule", "--noise-weight", "--fresh-noise", "lobar"):
        assert option in out
    assert "Control/" in out and "summary.json" in out
    # The former name stays an alias: users' scripts written for `covidct train3d` still run.
    rc, old, _ = run_cli("train3d", "--help")
    assert rc == 0 and "--stage" in old and "--denoise-slices" in old


def test_cache_folder_holds_only_hashed_array_entries(volumes_env):
    # onnx/: the graphs train-covidctnet's int8 step exported, named by the model file's digest;
    # openvino/: what OpenVINO compiled of them (its check), named by OpenVINO's hash of the graph
    files = [p for p in Path(volumes_env).rglob("*") if p.is_file()]
    names = [p.name for p in files if p.parent.name not in ("onnx", "openvino")]
    graphs = [p.name for p in files if p.parent.name == "onnx"]
    compiled = [p.name for p in files if p.parent.name == "openvino"]
    assert names and all(n.endswith(".npz") and "-" in n for n in names)
    assert all(n.startswith("covidctnet-") for n in graphs)
    assert all(n.removesuffix(".blob").isdigit() for n in compiled), compiled
    assert not any("Covid" in n or "Control" in n for n in names + graphs)
    assert os.environ["COVIDCT_CACHE"] == str(volumes_env)


# -- int8 BCDU-Net (the default runtime where its check passed) -------------------------------

#: Parity of the int8 denoiser on the SYNTHETIC phantoms' held-out (test) patients. The bars
#: are the slice classifier's (same call, median probability difference <= 0.02), the call
#: only where float32's is clear (top-two margin >= 0.1: a near tie is a coin either way),
#: and the infection maps within a fifth of their spread on average (measured: ~0.1).
INT8_CLEAR_MARGIN = 0.1
#: One scan's largest probability difference, int8 vs float32 BCDU-Net, for a model whose
#: check passed (the check's median bar is 0.02; single scans go above it).
INT8_MAX_SCAN_DIFF = 0.1


@pytest.mark.slow
def test_training_checks_the_int8_denoiser_and_auto_follows_the_stored_check(model, volumes_env):
    """train-covidctnet ended by quantizing the BCDU-Net on its training scans and checking it
    on held-out ones (calls and maps); `--runtime auto` runs it exactly when that passed.
    This model's check FAILS on the calls (measured: same call 8 of 8, but median probability
    difference 0.050 > 0.02; maps r >= 0.994, 99th percentile <= 0.45 SD): its 3D CNN reads
    maps scaled to SD 1 and moves with them; so auto stays float32 for it."""
    from covidct import export, quantize

    cached = export._cached_int8(model, require_pass=False)
    assert cached is not None and cached.parent == Path(volumes_env) / "onnx"
    record = quantize.read_parity(cached)
    assert record["rule_version"] == quantize.DENOISER_RULE_VERSION and record["scans"] >= 4
    assert record["map_passed"] == (
        record["map_lung_correlation_min"] >= quantize.MIN_MAP_CORRELATION
        and record["map_lung_p99_rel_max"] <= quantize.MAX_MAP_P99)
    assert record["calls_passed"] == (record["same_call"] >= quantize.MIN_AGREEMENT
                                      and record["median_prob_diff"] <= quantize.MAX_MEDIAN_DIFF)
    assert record["passed"] == (record["calls_passed"] and record["map_passed"])
    assert record["map_lung_scans"] == record["scans"]  # the lung mask was found on each
    assert export.choose_runtime(model, "auto") == ("onnx-int8" if record["passed"] else "onnx")
    assert export.choose_runtime(model, "onnx-int8") == "onnx-int8"  # asked for: regardless

    # What auto reads is the stored record: passed -> int8; failed, or judged by the
    # calls-only rule (no rule_version) -> float32.
    original = quantize.parity_path(cached).read_text()
    try:
        for changed, expected in (({**record, "passed": True}, "onnx-int8"),
                                  ({**record, "passed": False}, "onnx"),
                                  ({k: v for k, v in record.items() if k != "rule_version"}
                                   | {"passed": True}, "onnx")):
            quantize.parity_path(cached).write_text(json.dumps(changed))
            assert export.choose_runtime(model, "auto") == expected, changed
    finally:
        quantize.parity_path(cached).write_text(original)


def test_auto_keeps_float32_bcdunet_where_int8_is_slow(model, volumes_env, monkeypatch):
    """A passed check is not enough for CovidCTNet's BCDU-Net: on a CPU without wide int8
    instructions (AVX-512 BW/VNNI, ARM dot product) its int8 graph ran 0.89x float32, so auto
    keeps float32 there. The CPU is read from /proc/cpuinfo; COVIDCT_INT8_CPU overrides it."""
    from covidct import devices, export, quantize
    from covidct.errors import ModelError

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert devices.cpu_flags(avx2) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert devices.cpu_flags("Features\t: fp asimd asimddp\n") >= {"asimddp"}
    assert devices.cpu_flags("model name: x\n") is None
    monkeypatch.delenv("COVIDCT_INT8_CPU")
    assert not devices.int8_is_fast(avx2)
    assert devices.int8_is_fast(avx2.replace("avx2", "avx2 avx512f avx512bw"))
    assert devices.int8_is_fast("")  # flags unknown: the check decides alone

    cached = export._cached_int8(model, require_pass=False)
    original = quantize.parity_path(cached).read_text()
    try:
        quantize.parity_path(cached).write_text(json.dumps({**json.loads(original), "passed": True}))
        for told, expected in (("fast", "onnx-int8"), ("slow", "onnx")):
            monkeypatch.setenv("COVIDCT_INT8_CPU", told)
            assert export.choose_runtime(model, "auto") == expected, told
            assert export.choose_runtime(model, "onnx-int8") == "onnx-int8"  # asked for
        monkeypatch.setenv("COVIDCT_INT8_CPU", "maybe")
        with pytest.raises(ModelError, match="COVIDCT_INT8_CPU"):
            export.choose_runtime(model, "auto")
    finally:
        quantize.parity_path(cached).write_text(original)


@pytest.mark.slow
def test_int8_denoiser_keeps_the_calls_and_is_the_default(model, phantom_run, phantom_cohort,
                                                          volumes_env, tmp_path, run_cli):
    from covidct import quantize
    from covidct.export import OnnxNetwork
    from covidct.covidctnet.infection_maps import infection_map

    env = {"COVIDCT_CACHE": str(volumes_env)}
    model_path = phantom_run / "model.pt"
    out = tmp_path / "model.onnx"
    rc, stdout, stderr = run_cli("export", model_path, "--out", out, "--int8",
                                 "--calibration", phantom_cohort, timeout=300, extra_env=env)
    assert rc == 0, stderr
    int8 = tmp_path / "model.bcdunet.int8.onnx"
    assert int8.is_file() and "int8 denoiser" in stdout and "infection maps" in stdout
    recorded = quantize.read_parity(int8)
    assert recorded["scans"] >= 4 and recorded["calibration_slices"] >= 16
    assert recorded["passed"] == (recorded["calls_passed"] and recorded["map_passed"])

    test = [Path(i.path) for i in model.cohort(phantom_cohort).split("test")]
    # On patients neither training nor the check saw. This model's check fails on the calls'
    # median (see above; here too: 0.033 on one run, 10 of 12 calls, the flips near ties), so
    # asked of it: each scan within INT8_MAX_SCAN_DIFF, the same call wherever float32's is
    # clear, and maps that pass the map rule.
    check = quantize.denoiser_parity(model, tmp_path / "model.bcdunet.onnx", int8, test, threads=1)
    assert check["max_prob_diff"] <= INT8_MAX_SCAN_DIFF, check
    assert 0 < check["map_max_abs_diff"], check  # a different graph indeed
    assert check["map_mean_abs_diff"] <= 0.2 * check["map_std"], check
    assert check["map_passed"], check  # held-out patients' maps alike inside the lungs too
    nets = [OnnxNetwork(p, 1) for p in (tmp_path / "model.bcdunet.onnx", int8)]
    clear = same = 0
    for path in test:
        volume, _ = model.volume_for_file(path)
        probs = [model.classify(infection_map(volume, n, model.settings)[None])[0] for n in nets]
        top2 = np.sort(probs[0])[-2:]
        if top2[1] - top2[0] >= INT8_CLEAR_MARGIN:
            clear += 1
            same += probs[0].argmax() == probs[1].argmax()
    assert clear >= len(test) // 2, "the test model makes too few clear calls"
    assert same == clear, (same, clear, check)
    # The same int8 graph on OpenVINO: checked on its own (its numbers differ slightly), to
    # the same bars on these held-out patients.
    openvino = "openvino" in quantize.check_engines()
    if openvino:
        on_ov = check["openvino"]
        assert on_ov["max_prob_diff"] <= INT8_MAX_SCAN_DIFF and on_ov["map_passed"], on_ov
        assert 0 < on_ov["map_max_abs_diff"] and on_ov != {k: check[k] for k in on_ov}
        assert recorded["openvino"]["passed"] == (recorded["openvino"]["calls_passed"]
                                                  and recorded["openvino"]["map_passed"])

    # predict as a user runs it: the default runtime follows the stored check (this model's
    # fails, see above); --runtime onnx-int8 runs int8 regardless; on OpenVINO likewise.
    expected = "onnx-int8" if recorded["passed"] else "onnx"
    expected_ov = ("openvino-int8" if openvino and recorded["openvino"]["passed"] else expected)
    scan = test[0]
    runs = [("onnx-int8", "onnx-int8", "onnxruntime"), (None, expected, "onnxruntime")]
    if openvino:
        runs += [("openvino-int8", "openvino-int8", "onnxruntime"), (None, expected_ov, "openvino")]
    for runtime, shown, engine in runs:
        chosen = () if runtime is None else ("--runtime", runtime)
        rc, _, stderr = run_cli("predict", scan, "--model", model_path, *chosen,
                                "--no-pictures", "--out", tmp_path / f"{runtime}-{engine}",
                                timeout=300, extra_env={**env, "COVIDCT_INT8_ENGINE": engine})
        assert rc == 0, stderr
        assert f"covidctnet: runtime {shown}\n" in stderr + "\n", stderr
    # int8 maps are cached apart from float32 ones (same weights, other maps).
    results = {r: json.loads((tmp_path / r / "summary.json").read_text())["results"]["covidctnet"]
               for r in ("onnx-int8-onnxruntime", "None-onnxruntime")}
    assert (results["onnx-int8-onnxruntime"]["probabilities"]
            == results["None-onnxruntime"]["probabilities"]) == (expected == "onnx-int8")
    if openvino:  # the OpenVINO int8 maps have a cache key of their own
        on_ov = json.loads((tmp_path / "openvino-int8-onnxruntime" / "summary.json").read_text())
        a, b = (np.array(list(r["probabilities"].values()))
                for r in (results["onnx-int8-onnxruntime"], on_ov["results"]["covidctnet"]))
        assert 0 < np.abs(a - b).max() <= INT8_MAX_SCAN_DIFF, (a, b)


def test_cnn_members_train_each_from_its_own_seed_and_predict_their_average(
        phantom_cohort, synth_denoiser_run, tmp_path, run_cli):
    """`--cnn-members 2`: member 0 is exactly the lone 3D CNN of the same run settings, member 1
    another draw; the model file holds both, and prediction (PyTorch and ONNX Runtime) gives
    the average of their probabilities."""
    from covidct.covidctnet.volume_data import load_cohort
    from covidct.covidctnet.train import _network_inputs
    from covidct.scanio import load_scan

    common = ["--data", str(phantom_cohort), "--stage", "classifier", "--denoiser",
              str(synth_denoiser_run[1] / "denoiser.pt"), "--epochs", "3", "--batch-size", "6",
              "--test-fraction", "0.35", "--no-ablation", "--standardise-inputs", "--no-int8", *TINY]
    train3d(*common, "--out", str(tmp_path / "one"))
    train3d(*common, "--out", str(tmp_path / "two"), "--cnn-members", "2")
    lone, pair = load_model(tmp_path / "one" / "model.pt"), load_model(tmp_path / "two" / "model.pt")
    assert pair.settings.cnn_members == 2 and len(pair.classifier.members) == 2
    first, second = (m.state_dict() for m in pair.classifier.members)
    for key, value in lone.classifier.state_dict().items():
        assert torch.equal(value, first[key]), key
    assert any(not torch.equal(first[k], second[k]) for k in first)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert len(summary["classifier"]["members"]) == 2
    # Members 1.. train in forked processes beside member 0 (two or more cores): the same
    # weights as one after another in this process, and its record read back from its files.
    from covidct.covidctnet import train as training
    assert training._can_fork()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "_can_fork", lambda: False)
        train3d(*common, "--out", str(tmp_path / "serial"), "--cnn-members", "2")
    serial = load_model(tmp_path / "serial" / "model.pt")
    for key, value in serial.classifier.members[1].state_dict().items():
        assert torch.equal(value, second[key]), key
    serial_summary = json.loads((tmp_path / "serial" / "summary.json").read_text())
    assert serial_summary["classifier"]["members"] == summary["classifier"]["members"]
    history = (tmp_path / "two" / "history.csv").read_text()
    assert "classifier-member1," in history
    # Prediction reads the average, on PyTorch and on ONNX Runtime alike.
    cohort = load_cohort(str(phantom_cohort), 0, 0.15, 0.35)
    x, _, _ = _network_inputs(pair, cohort.split("test")[:3], "test", False)
    each = [torch.softmax(m(torch.from_numpy(x * np.float32(pair.settings.input_scale))[:, None]), 1)
            for m in pair.classifier.members]
    expected = torch.stack(each).mean(0).detach().numpy()
    np.testing.assert_allclose(pair.classify(x), expected, atol=1e-5)
    scan = cohort.split("test")[0].path
    pytest.importorskip("onnxruntime")
    onnx = load_model(tmp_path / "two" / "model.pt", runtime="onnx")
    np.testing.assert_allclose(onnx.predict(load_scan(scan)).probabilities,
                               pair.predict(load_scan(scan)).probabilities, atol=1e-4)
    rc, _, err = run_cli("train-covidctnet", *common, "--out", tmp_path / "bad", "--cnn-members", "0")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "cnn_members" in err and not (tmp_path / "bad").exists()


def test_cnn_input_infection_plus_volume_trains_from_the_command_line(
        phantom_cohort, synth_denoiser_run, tmp_path, run_cli, volumes_env):
    """`train-covidctnet --cnn-input infection+volume`: the 3D CNN reads the map and the CT as
    two channels, each scaled to unit SD on the training scans; the model file predicts on
    PyTorch and ONNX Runtime alike and still shows the map; the ablation stays one channel."""
    from covidct.scanio import load_scan

    common = ["--data", phantom_cohort, "--stage", "classifier", "--denoiser",
              synth_denoiser_run[1] / "denoiser.pt", "--epochs", "2", "--batch-size", "6",
              "--test-fraction", "0.35", "--standardise-inputs", "--mask-input", "--augment",
              "--no-int8", *TINY]
    run = tmp_path / "both"
    rc, out, err = run_cli("train-covidctnet", *common, "--out", run, "--cnn-input",
                           "infection+volume", timeout=600,
                           extra_env={"COVIDCT_CACHE": str(volumes_env)})
    assert rc == 0, err
    assert "infection maps and CT inside the lung mask" in out
    model = load_model(run / "model.pt")
    assert model.settings.input == "infection+volume" and model.classifier.in_channels == 2
    summary = json.loads((run / "summary.json").read_text())
    scales = summary["classifier"]["channel_scales"]
    assert scales == [model.settings.input_scale, model.settings.volume_scale]
    assert scales[0] > scales[1] > 0  # the map's SD is smaller than the CT's
    assert json.loads((run / "config.json").read_text())["settings"]["input"] == "infection+volume"
    ablation = load_model(run / "ablation" / "model.pt")
    assert ablation.settings.input == "volume" and ablation.classifier.in_channels == 1
    scan = load_scan(next(phantom_cohort.glob("Covid/*")))
    prediction = model.predict(scan)
    assert prediction.maps["infection"].shape == model.settings.volume_shape
    pytest.importorskip("onnxruntime")
    onnx = load_model(run / "model.pt", runtime="onnx")
    np.testing.assert_allclose(onnx.predict(scan).probabilities, prediction.probabilities, atol=1e-4)
    rc, _, err = run_cli("train-covidctnet", *common, "--out", tmp_path / "bad", "--cnn-input",
                         "volume")
    assert rc == 2 and "Traceback" not in err and "--cnn-input" in err
    assert not (tmp_path / "bad").exists()
