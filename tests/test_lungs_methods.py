"""Both methods look inside the lung mask: BiT's slice choice, CovidCTNet's maps, the
involvement figures in `covidct predict` (SYNTHETIC phantoms, untrained tiny networks)."""
from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from covidct.lungs import scan_lungs
from covidct.synth.patient import make_patient


@pytest.fixture(scope="module")
def thin_wall():
    return make_patient("NCP", seed=11, difficulty=0.5, matrix=160, slice_mm=2.5,
                        variants=("thin-wall", "stomach-gas"))


def test_slice_classifier_keeps_every_lesion_slice_of_a_thin_chest_wall(thin_wall):
    from covidct.bit.model import lung_slices

    chosen, found = lung_slices(thin_wall.scan, max_slices=10 ** 9)
    lesion = set(thin_wall.lesion_slices().tolist())
    assert found and lesion and lesion <= set(chosen.tolist())
    # ... and no slice below the lungs (the stomach gas slices under the diaphragm).
    truth = set(np.flatnonzero(thin_wall.lung.any(axis=(1, 2))).tolist())
    assert set(chosen.tolist()) <= truth


def test_covidctnet_reports_its_map_inside_the_lungs(thin_wall):
    import torch

    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.pipeline import CovidCTNet, lung_grid
    from covidct.covidctnet.settings import VolumeSettings

    torch.manual_seed(0)
    settings = VolumeSettings(slice_size=40, volume_slices=34, denoiser_width=4,
                              max_denoised_slices=20)
    net = CovidCTNet.build(settings, denoiser=BCDUNet(4))
    prediction = net.predict(thin_wall.scan)
    raw, masked = prediction.maps["infection_raw"], prediction.maps["infection"]
    lungs = lung_grid(scan_lungs(thin_wall.scan), thin_wall.scan, raw.shape)
    assert raw.shape == masked.shape == (34, 40, 40)
    assert np.all(masked[lungs == 0] == 0) and np.abs(raw[lungs == 0]).sum() > 0
    np.testing.assert_array_equal(masked[lungs > 0], raw[lungs > 0])
    found = prediction.to_dict()["lungs"]["involvement"]
    assert found["research_measurement"] and 0 <= found["map_share_percent"] <= 100
    # The setting that masks the 3D CNN's input (the paper has none) changes what it reads.
    masked_net = CovidCTNet(net.classifier, net.denoiser, VolumeSettings(
        **{**settings.to_dict(), "mask_input": True}))
    assert not np.allclose(masked_net.predict(thin_wall.scan).probabilities, prediction.probabilities)


def test_predict_writes_lung_figures_and_outlined_gradcam(tmp_path, run_cli):
    from conftest import save_tiny_bit_model
    from covidct.synth.cohort import CohortSettings, generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, CohortSettings(patients=1, seed=5, matrix=128, slice_mm=(5.0, 5.0),
                                           max_slices=40, formats=("nifti",)), progress=False)
    scan = next(cohort.glob("patients/*/ct.nii.gz"))
    model = save_tiny_bit_model(tmp_path / "bit.pt", seed=0, resize=64, crop=64)
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("predict", scan, "--model", model, "--out", out, timeout=300)
    assert rc == 0, stderr
    result = json.loads((out / "bit.json").read_text())
    lungs = result["lungs"]
    assert lungs["mask"]["found"] and lungs["mask"]["volumes_ml"]["total"] > 500
    found = lungs["involvement"]
    assert found["research_measurement"] and "research measurement" in found["note"]
    assert len(found["zones"]) == 6 and 0 <= found["severity_score"] <= 24
    rows = dict(csv.reader((out / "bit-lungs.csv").read_text().splitlines()[1:]))
    assert float(rows["involved_percent"]) == pytest.approx(found["involved_percent"])
    assert len(result["slices"]) <= lungs["mask"]["n_lung_slices"]
    # Grad-CAM pictures carry the lung outline (cyan) on the plain slice at the left.
    from PIL import Image

    from covidct.explain.plotting import OUTLINE_RGB

    pictures = sorted(out.glob("bit-gradcam-*.png"))
    assert pictures
    with Image.open(pictures[0]) as image:
        rgb = np.asarray(image.convert("RGB"))
    left = rgb[:, : rgb.shape[1] // 2]
    assert (left == OUTLINE_RGB).all(axis=-1).sum() > 50


def test_evaluate_scores_the_lung_mask_and_involvement_on_a_synthetic_cohort(tmp_path, run_cli):
    from conftest import save_tiny_bit_model
    from covidct.synth.cohort import CohortSettings, generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, CohortSettings(patients=5, seed=8, matrix=96, slice_mm=(5.0, 5.0),
                                           max_slices=40, split=(1.0, 0.0, 0.0),
                                           formats=("nifti", "covidx")), progress=False)
    model = save_tiny_bit_model(tmp_path / "bit.pt", seed=0, resize=64, crop=64)
    out = tmp_path / "eval"
    rc, stdout, stderr = run_cli("evaluate", cohort / "covidx", "--model", model, "--split", "train",
                                 "--n-boot", "20", "--out", out, timeout=300)
    assert rc == 0, stderr
    assert "Lung mask on 5 scans" in stdout and "MAE" in stdout
    lungs = json.loads((out / "lungs.json").read_text())
    assert lungs["synthetic"] and lungs["n_scans"] == 5 and len(lungs["per_scan"]) == 5
    # Patients by the same salted names as the scores, not by their ids in labels.csv.
    ids = {line.split(",")[0] for line in (cohort / "labels.csv").read_text().splitlines()[1:]}
    named = {e["patient_id"] for e in lungs["per_scan"]}
    assert not named & ids and all(n.startswith("patient-") for n in named)
    assert not any(i in (out / "lungs.json").read_text() for i in ids)
    assert lungs["dice"]["mean"] >= 0.9
    versus = lungs["involvement_vs_truth"]
    assert versus["mae_percent_points"] >= 0 and "pearson_r" in versus
    # The report shows it, with a prediction's lung figures and lung picture beside it.
    scan = next(cohort.glob("patients/*/ct.nii.gz"))
    rc, _, stderr = run_cli("predict", scan, "--model", model, "--out", tmp_path / "prediction",
                            timeout=300)
    assert rc == 0, stderr
    rc, _, stderr = run_cli("report", tmp_path, "--out", tmp_path / "report.html", timeout=300)
    assert rc == 0, stderr
    page = (tmp_path / "report.html").read_text()
    for text in ("Lungs: mask and involvement", "Lung mask Dice vs true lungs",
                 "Lung with infection-like density (research measurement)",
                 "Lung mask used by both methods"):
        assert text in page, text


def test_a_cohort_without_volumes_is_evaluated_without_lung_scores(tmp_path, run_cli):
    # `covidct synth --formats covidx` writes slices only: labels.csv has the lungs column but
    # no lung files; evaluate scores the model and skips lungs.json instead of failing at the end.
    from conftest import save_tiny_bit_model
    from covidct.lungs_eval import find_truth
    from covidct.synth.cohort import CohortSettings, generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, CohortSettings(patients=3, seed=8, matrix=64, slice_mm=(5.0, 5.0),
                                           max_slices=20, split=(1.0, 0.0, 0.0),
                                           formats=("covidx",)), progress=False)
    assert find_truth(cohort / "covidx") is None
    model = save_tiny_bit_model(tmp_path / "bit.pt", seed=0, resize=64, crop=64)
    out = tmp_path / "eval"
    rc, _, stderr = run_cli("evaluate", cohort / "covidx", "--model", model, "--split", "train",
                            "--n-boot", "20", "--out", out, timeout=300)
    assert rc == 0, stderr
    assert (out / "results.json").is_file() and not (out / "lungs.json").exists()


def _one_scan_tiny_config(tmp_path, **options):
    """One SYNTHETIC patient's NIfTI scan, a tiny CovidCTNet TrainConfig with ``options``, and
    a private array cache (torch seeded)."""
    import torch

    from covidct.covidctnet.cache import ArrayCache
    from covidct.covidctnet.train import TrainConfig
    from covidct.synth.cohort import CohortSettings, generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, CohortSettings(patients=1, seed=9, matrix=96, slice_mm=(5.0, 5.0),
                                           max_slices=40, formats=("nifti",)), progress=False)
    config = TrainConfig(data=str(cohort), out=str(tmp_path / "run"), slice_size=40,
                         volume_slices=34, max_denoised_slices=20, denoiser_width=4, **options)
    torch.manual_seed(0)
    return next(cohort.glob("patients/*/ct.nii.gz")), config, ArrayCache(tmp_path / "cache")


def test_lung_masked_ablation_row_reads_masked_inputs_from_files(tmp_path):
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.settings import INPUT_INFECTION
    from covidct.covidctnet.train import _comparison, _new_model

    scan_file, config, cache = _one_scan_tiny_config(tmp_path, lung_ablation=True)
    plain = _new_model(config, INPUT_INFECTION, BCDUNet(4), cache)
    masked = _new_model(config, INPUT_INFECTION, plain.denoiser, cache, mask_input=True)
    assert masked.settings.mask_input and not plain.settings.mask_input
    raw, _ = plain.input_for_file(scan_file)
    inside, _ = masked.input_for_file(scan_file)
    outside_lung = inside == 0
    assert outside_lung.mean() > 0.5 and np.abs(raw[outside_lung]).sum() > 0
    np.testing.assert_array_equal(inside[~outside_lung], raw[~outside_lung])
    rows = _comparison({"classifier": {"val": {"accuracy": 0.5}},
                        "lung_masked": {"val": {"accuracy": 0.6}}})["rows"]
    assert [r["model"].split(" (")[0] for r in rows] == [
        "3D CNN on infection maps", "3D CNN on lung-masked infection maps"]


def test_input_floor_and_mask_erode_change_what_the_3d_cnn_reads_not_the_map(tmp_path):
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.settings import INPUT_INFECTION, INPUT_VOLUME, VolumeSettings
    from covidct.covidctnet.train import _new_model
    from covidct.errors import ModelError
    from covidct.models import load_model

    scan_file, config, cache = _one_scan_tiny_config(tmp_path, mask_input=True, input_floor=0.02)
    masked = _new_model(config, INPUT_INFECTION, BCDUNet(4), cache, mask_input=True)
    floored = _new_model(config, INPUT_INFECTION, masked.denoiser, cache, mask_input=True,
                         input_floor=config.input_floor)
    assert floored.settings.input_floor == 0.02 and masked.settings.input_floor is None
    assert config.main_settings() == floored.settings  # what the run's config.json records
    # The ablation reads plain volumes: a floor in CT units would cut the lungs away.
    assert _new_model(config, INPUT_VOLUME, None, cache, input_floor=0.02).settings.input_floor is None
    signed, _ = masked.input_for_file(scan_file)
    reads, _ = floored.input_for_file(scan_file)
    assert (signed < 0).any() and (signed > 0.02).any()
    np.testing.assert_allclose(reads, np.maximum(signed - 0.02, 0), atol=1e-7)
    assert reads.min() == 0 and not np.allclose(reads, signed)
    # The map scored against the lesions and shown is the map, not the floored copy.
    np.testing.assert_array_equal(floored.map_for_file(scan_file), signed)
    # The floor travels in the model file and is applied at prediction.
    path = floored.save(tmp_path / "floored.pt")
    loaded = load_model(path)
    assert loaded.settings.input_floor == 0.02
    from covidct.scanio import load_scan

    prediction = loaded.predict(load_scan(scan_file))
    np.testing.assert_allclose(prediction.probabilities, floored.classify(reads[None])[0], atol=1e-5)
    assert (prediction.maps["infection"] < 0).any()
    # mask_erode shaves the mask's outline (in-plane) off what the 3D CNN reads, not off the map.
    from scipy import ndimage

    eroded = _new_model(config, INPUT_INFECTION, masked.denoiser, cache, mask_input=True,
                        mask_erode=1)
    lungs = masked._lungs_for_file(scan_file, masked._file_content(scan_file)) > 0
    inner = ndimage.binary_erosion(lungs, structure=np.ones((1, 3, 3), bool))
    shaved, _ = eroded.input_for_file(scan_file)
    assert 0 < inner.sum() < lungs.sum() and np.abs(signed[lungs & ~inner]).sum() > 0
    np.testing.assert_array_equal(shaved, signed * inner)
    np.testing.assert_array_equal(eroded.map_for_file(scan_file), signed)
    assert _new_model(config, INPUT_INFECTION, masked.denoiser, cache,
                      mask_erode=1).settings.mask_erode == 0  # no mask, nothing to shave
    with pytest.raises(ModelError, match="input_floor"):
        VolumeSettings(input_floor=-0.1)
    with pytest.raises(ModelError, match="mask_erode"):
        VolumeSettings(mask_erode=-1)


def test_two_channel_input_reads_the_map_and_the_ct_as_the_one_channel_models_do(tmp_path):
    """"infection+volume": channel 0 is exactly what the map-reading 3D CNN reads (floor,
    mask, shaved outline), channel 1 the plain volume inside the same mask, without the
    floor; each channel has its own factor; the model file keeps it and predictions show
    the map alone."""
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.infection_maps import network_batch
    from covidct.covidctnet.settings import INPUT_BOTH, INPUT_INFECTION, INPUT_VOLUME
    from covidct.covidctnet.train import _new_model
    from covidct.models import load_model
    from covidct.scanio import load_scan

    scan_file, config, cache = _one_scan_tiny_config(tmp_path, mask_input=True, input_floor=0.02)
    reading = dict(mask_input=True, input_floor=0.02, mask_erode=1)
    both = _new_model(config, INPUT_BOTH, BCDUNet(4), cache, **reading)
    alone = _new_model(config, INPUT_INFECTION, both.denoiser, cache, **reading)
    plain = _new_model(config, INPUT_VOLUME, None, cache, **reading)
    assert both.settings.channels == 2 and both.classifier.in_channels == 2
    two, _ = both.input_for_file(scan_file)
    assert two.shape == (2, *both.settings.volume_shape)
    np.testing.assert_array_equal(two[0], alone.input_for_file(scan_file)[0])
    np.testing.assert_array_equal(two[1], plain.input_for_file(scan_file)[0])
    assert plain.settings.input_floor is None and two[1].max() > 0  # the CT is not floored
    np.testing.assert_array_equal(both.map_for_file(scan_file), alone.map_for_file(scan_file))
    # Each channel is read times its own factor.
    both.settings = replace(both.settings, input_scale=3.0, volume_scale=0.5)
    batch = network_batch(two[None], both.settings)
    np.testing.assert_allclose(batch[0, 0], two[0] * 3.0)
    np.testing.assert_allclose(batch[0, 1], two[1] * 0.5)
    loaded = load_model(both.save(tmp_path / "both.pt"))
    assert (loaded.settings.input, loaded.settings.volume_scale) == (INPUT_BOTH, 0.5)
    prediction = loaded.predict(load_scan(scan_file))
    np.testing.assert_allclose(prediction.probabilities, both.classify(two[None])[0], atol=1e-5)
    assert prediction.maps["infection"].shape == both.settings.volume_shape
    assert "infection map and CT" in prediction.aggregation
