"""The lung mask (covidct.lungs) on harder-than-default phantoms and on the real JPG series.

Thresholds (documented in README, "Lungs first"): on SYNTHETIC phantoms Dice >= 0.95
against the phantom's lungs, left/right agreement >= 0.97, and >= 90% of COVID-19-like (NCP)
lesion voxels inside the mask; a juxta-pleural consolidation (30 HU) keeps >= 80% of its core
(the outermost pixel column is partial volume) and >= 65% of all its voxels.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from covidct.errors import ModelError
from covidct.lungs import LEFT, RIGHT, involvement, lung_mask
from covidct.scan import Scan
from covidct.synth import anatomy
from covidct.synth.cohort import true_lung_labels
from covidct.synth.patient import make_patient
from covidct.windowing import COVIDX_LUNG

MATRIX = 160


@functools.lru_cache(maxsize=None)
def phantom(label="NCP", seed=3, variants=(), slice_mm=5.0):
    return make_patient(label, seed=seed, difficulty=0.5, matrix=MATRIX, slice_mm=slice_mm,
                        variants=variants)


def dice(a, b):
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def scores(patient, mask):
    truth = true_lung_labels(patient)
    infection = patient.infection & patient.lung
    return {"dice": dice(mask.lung, truth > 0),
            "side": float((mask.labels[truth > 0] == truth[truth > 0]).mean()),
            "coverage": float((infection & mask.lung).sum() / max(1, infection.sum()))}


def consolidated_right_base(whole: float, back_half: float):
    """SYNTHETIC: a normal phantom (seed 5, 2.5 mm slices) whose right lung is consolidated
    (20 +- 15 HU) in all of its lowest ``whole`` share of slices and in the back half of the
    slices above them up to ``back_half``; returns (true labels, lesion, HU, lung_mask)."""
    patient = phantom("Normal", seed=5, slice_mm=2.5)
    truth = true_lung_labels(patient)
    right = truth == RIGHT
    zs = np.flatnonzero(right.any(axis=(1, 2)))  # a phantom's slice 0 is the abdomen end
    n_whole, n_back = int(whole * zs.size), int(back_half * zs.size)
    lesion = np.zeros(right.shape, bool)
    lesion[zs[:n_whole]] = right[zs[:n_whole]]
    for k in zs[n_whole:n_back]:  # y runs to the back
        rows = np.flatnonzero(right[k].any(axis=1))
        lesion[k, (rows[0] + rows[-1]) // 2:] = right[k, (rows[0] + rows[-1]) // 2:]
    hu = patient.scan.voxels.copy()
    hu[lesion] = 20.0 + np.random.default_rng(1).normal(0, 15, int(lesion.sum()))
    return truth, lesion, hu, lung_mask(patient.scan.with_voxels(hu))


@pytest.mark.parametrize("variant", anatomy.VARIANTS)
def test_harder_anatomy_keeps_the_lungs(variant):
    patient = phantom(variants=(variant,))
    got = scores(patient, lung_mask(patient.scan))
    assert got["dice"] >= 0.95, (variant, got)
    assert got["side"] >= 0.97, (variant, got)
    assert got["coverage"] >= 0.85, (variant, got)


def test_variants_change_the_anatomy_as_named():
    plain = phantom()
    edge = phantom(variants=("fov-edge",))
    k = plain.scan.n_slices // 2
    assert not (plain.scan.voxels[k, :, -1] > -500).any()  # default: room beside the body
    assert (edge.tissue[k, :, -1] == anatomy.FAT).any()     # the body crosses the edge
    thin = phantom(variants=("thin-wall",))
    assert thin.tissue.size and (thin.tissue == anatomy.FAT).sum() < 0.5 * (plain.tissue == anatomy.FAT).sum()
    gas = phantom(variants=("stomach-gas",))
    assert (gas.tissue == anatomy.GAS).sum() > 0


def test_stomach_gas_and_trachea_stay_out():
    patient = phantom(variants=("stomach-gas",))
    mask = lung_mask(patient.scan)
    stomach = patient.tissue == anatomy.GAS
    assert stomach.sum() > 100
    assert (mask.lung & stomach).sum() == 0
    # Airway lumen outside the lungs (trachea, main bronchi) is not lung.
    from scipy import ndimage

    away = ndimage.distance_transform_edt(~patient.lung, sampling=patient.scan.spacing) > 5
    airway = (patient.scan.voxels < -950) & away & (patient.tissue != anatomy.AIR) \
        & (patient.tissue != anatomy.FOAM) & ~stomach
    assert airway.sum() > 20
    assert (mask.lung & airway).sum() <= 0.1 * airway.sum()


def test_juxta_pleural_consolidation_stays_inside():
    from scipy import ndimage

    patient = phantom("Normal", seed=5, slice_mm=2.5)
    hu = patient.scan.voxels.copy()
    truth = true_lung_labels(patient)
    # A consolidation (30 HU) 15 mm deep, 40 mm long and 30 mm high on the right lung's
    # lateral pleura.
    pixel = patient.scan.spacing[1]
    zs = np.flatnonzero((truth == RIGHT).sum(axis=(1, 2)) > 0)
    zs = zs[len(zs) // 3: len(zs) // 3 + int(40 / patient.scan.spacing[0])]
    lesion = np.zeros(hu.shape, bool)
    for k in zs:
        cols = np.flatnonzero((truth[k] == RIGHT).any(axis=0))
        rows = np.flatnonzero((truth[k] == RIGHT).any(axis=1))
        mid = (rows[0] + rows[-1]) // 2
        band = slice(cols[0], cols[0] + int(15 / pixel))
        span = slice(mid - int(15 / pixel), mid + int(15 / pixel))
        lesion[k, span, band] = truth[k, span, band] == RIGHT
    hu[lesion] = 30.0 + np.random.default_rng(0).normal(0, 15, lesion.sum())
    scan = patient.scan.with_voxels(hu)
    mask = lung_mask(scan)
    assert lesion.sum() > 500
    # The outermost pixel column is partial volume with the chest wall (at 2.9 mm pixels it
    # is a fifth of this lesion): the lesion's core must be in, the whole mostly.
    core = lesion & ndimage.binary_erosion(truth > 0, structure=np.ones((1, 3, 3), bool))
    assert (mask.labels[core] == RIGHT).mean() >= 0.8
    assert (mask.labels[lesion] == RIGHT).mean() >= 0.65
    assert dice(mask.lung, truth > 0) >= 0.95


def test_lobar_consolidation_stays_inside():
    """SYNTHETIC: the back half of the right lung's lower 40% turned to consolidation (a lower
    lobe without air): the pleural closing alone kept under a fifth of it (hu-v1)."""
    truth, lesion, _, mask = consolidated_right_base(whole=0.0, back_half=0.4)
    assert lesion.sum() > 0.1 * (truth == RIGHT).sum()
    assert (mask.labels[lesion] == RIGHT).mean() >= 0.8
    # Little else came with it: without the lesion 3% of the mask lies outside the true
    # lungs (partial volume at 2.9 mm pixels), with it 5.7% (the heart's back part next to
    # the consolidated rows, a known limit of step 6); a leak into the heart or abdomen at
    # large fails this.
    assert (mask.lung & (truth == 0)).sum() <= 0.07 * (truth > 0).sum()
    assert dice(mask.lung, truth > 0) >= 0.95


def test_airless_base_of_a_consolidated_lower_lobe_is_followed():
    """SYNTHETIC: the right lung's lowest 20% of slices wholly consolidated (no air left) and
    the back half of the next 25%: step 6 finds the back half (it walks from the lung's air),
    step 7 follows it down into the airless slices (none of which step 6 can reach: 0% there
    without step 7, 61-63% with it on seeds 5-7; the front of the airless slices, under no
    find, stays out)."""
    truth, lesion, hu, mask = consolidated_right_base(whole=0.2, back_half=0.45)
    zs = np.flatnonzero((truth == RIGHT).any(axis=(1, 2)))
    in_airless = lesion.copy()
    in_airless[zs[int(0.2 * zs.size)]:] = False
    assert (hu[in_airless] >= -400).all()  # no air left there: step 6 cannot reach it
    assert (mask.labels[in_airless] == RIGHT).mean() >= 0.5
    assert (mask.labels[lesion] == RIGHT).mean() >= 0.85
    # The liver below and the heart beside it stay out: 4.5% of the mask outside the true
    # lungs without step 7 (partial volume, the back of the heart), 6.5% with it.
    assert (mask.lung & (truth == 0)).sum() <= 0.08 * (truth > 0).sum()
    assert dice(mask.lung, truth > 0) >= 0.95


def test_thin_and_thick_slices_and_a_single_slice():
    for slice_mm in (1.0, 5.0):
        patient = phantom(seed=4, slice_mm=slice_mm)
        assert scores(patient, lung_mask(patient.scan))["dice"] >= 0.95
    patient = phantom(seed=4)
    k = int(np.argmax(patient.lung.sum(axis=(1, 2))))
    one = patient.scan.with_voxels(patient.scan.voxels[k:k + 1].copy())
    mask = lung_mask(one)
    truth = true_lung_labels(patient)[k:k + 1]
    assert mask.found and set(np.unique(mask.labels)) == {0, RIGHT, LEFT}
    assert dice(mask.lung, truth > 0) >= 0.95


def test_small_cohort_dice_and_lesion_coverage():
    """SYNTHETIC: 6 phantoms, three classes, mixed harder variants, 1.25-5 mm slices."""
    results = []
    for i, (label, variants) in enumerate([("NCP", ("thin-wall", "table-close")),
                                           ("NCP", ("off-centre", "stomach-gas")),
                                           ("NCP", ()), ("CP", ("fov-edge",)), ("CP", ()),
                                           ("Normal", ("thin-wall", "stomach-gas"))]):
        patient = make_patient(label, seed=20 + i, difficulty=0.5, matrix=MATRIX,
                               slice_mm=(1.25, 5.0), max_slices=120, variants=variants)
        results.append((label, scores(patient, lung_mask(patient.scan))))
    assert min(r["dice"] for _, r in results) >= 0.95, results
    assert np.mean([r["side"] for _, r in results]) >= 0.97, results
    assert np.mean([r["coverage"] for label, r in results if label == "NCP"]) >= 0.9, results


def test_windowed_pictures_give_the_same_mask():
    patient = phantom(seed=6)
    hu_mask = lung_mask(patient.scan)
    pictures = Scan(voxels=COVIDX_LUNG.to_uint8(patient.scan.voxels), spacing=patient.scan.spacing,
                    units="windowed")
    picture_mask = lung_mask(pictures)
    assert dice(hu_mask.lung, picture_mask.lung) >= 0.97
    assert any("COVIDx lung window" in w for w in picture_mask.warnings)


def test_left_and_right_follow_the_direction():
    patient = phantom(seed=6)
    flipped = patient.scan.with_voxels(patient.scan.voxels[:, :, ::-1].copy(),
                                       direction=np.diag([-1.0, 1.0, 1.0]))
    straight, mirrored = lung_mask(patient.scan), lung_mask(flipped)
    assert (straight.labels[:, :, ::-1] == mirrored.labels).mean() > 0.995
    assert straight.volumes_ml()["right"] == pytest.approx(mirrored.volumes_ml()["right"], rel=0.02)


def test_real_jpg_series_gets_a_plausible_mask(shared_dir):
    from covidct.scanio import load_scan

    scan = load_scan(shared_dir / "data" / "real-ct-examples" / "volume_example")
    mask = lung_mask(scan)
    volumes = mask.volumes_ml()  # 1 mm voxels assumed: pixel counts, not real mL
    assert mask.found and not mask.geometry_known
    assert 800 < volumes["total"] < 1800, volumes
    # No lobe without air here: the consolidation step (6) adds (next to) nothing to the
    # 1134 pixel-mL the mask had before it (hu-v1).
    assert volumes["total"] == pytest.approx(1134.0, rel=0.02), volumes
    assert 0.85 < volumes["right"] / volumes["left"] < 1.4, volumes  # the right lung is larger
    assert len(mask.lung_slices()) >= 40
    assert mask.details["airway_at_start"]  # slice 0 is the neck end of this series
    # Every lung slice holds both lungs, right on the image's left (radiological view).
    for k in range(5, 45):
        xs_right = np.flatnonzero((mask.labels[k] == RIGHT).any(axis=0))
        xs_left = np.flatnonzero((mask.labels[k] == LEFT).any(axis=0))
        assert xs_right.size and xs_left.size and xs_right.mean() < xs_left.mean(), k
    # The trachea (a small pure-air region in the middle of slice 12) is not lung.
    # (rows 250-264, columns 252-266 of slice 12, found by eye on a picture of the mask)
    assert np.median(scan.voxels[12, 250:264, 252:266]) < 80
    assert not mask.lung[12, 250:264, 252:266].any()
    report = involvement(scan, mask)
    assert 0 < report["involved_percent"] < 30 and 0 <= report["severity_score"] <= 24


def test_involvement_tracks_the_true_lesion_fraction():
    """SYNTHETIC: more lesion, more involvement. A normal phantom at this coarse matrix reads
    about 4% (blurred hilar vessels, the mask's mediastinal edge): the floor of the rule."""
    normal = phantom("Normal", seed=7)
    ill = make_patient("NCP", seed=7, difficulty=0.0, matrix=MATRIX, slice_mm=5.0)
    low = involvement(normal.scan, lung_mask(normal.scan))
    high = involvement(ill.scan, lung_mask(ill.scan))
    assert low["involved_percent"] < 6 and low["severity_score"] <= 6
    assert high["involved_percent"] > low["involved_percent"] + 2
    assert abs(high["involved_percent"] - 100 * ill.lesion_fraction) < 10
    assert len(high["zones"]) == 6 and high["severity_score"] == sum(z["score"] for z in high["zones"])
    assert high["research_measurement"] is True
    share = involvement(ill.scan, lung_mask(ill.scan),
                        infection_map=np.where(ill.infection, 0.5, 0.0)[::2, ::2, ::2])
    assert share["map_share_percent"] == pytest.approx(100 * ill.lesion_fraction, abs=3)


@pytest.mark.slow  # lungmask's U-Net on CPU: 10-30 s
def test_cache_keys_name_the_mask_rule_and_the_backend(tmp_path):
    """A cached lung grid is keyed by what made it: the HU rule's version, or the lungmask
    backend with its weights file (a changed file is another key; a missing one a clear error)."""
    from covidct.lungs import RULE_VERSION, mask_rule, use_backend

    weights = tmp_path / "unet_r231.pth"
    weights.write_bytes(b"weights")
    try:
        assert mask_rule() == RULE_VERSION
        use_backend("lungmask", weights)
        first = mask_rule()
        assert first.startswith("lungmask:") and RULE_VERSION not in first
        weights.write_bytes(b"other weights")
        assert mask_rule() != first
        use_backend("lungmask", tmp_path / "missing.pth")
        with pytest.raises(ModelError, match="not found"):
            mask_rule()
    finally:
        use_backend("hu")
    assert mask_rule() == RULE_VERSION


def test_lungmask_backend_reads_a_local_weights_file(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("lungmask")
    from lungmask.resunet import UNet

    def no_download(*args, **kwargs):
        raise AssertionError("lungmask tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    torch.manual_seed(0)
    net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
    weights = tmp_path / "unet_test.pth"
    torch.save(net.state_dict(), weights)
    patient = phantom(seed=6)
    k = int(np.argmax(patient.lung.sum(axis=(1, 2))))
    scan = patient.scan.with_voxels(patient.scan.voxels[k:k + 1].copy())
    mask = lung_mask(scan, backend="lungmask", weights=weights)
    assert mask.labels.shape == scan.shape and mask.backend == "lungmask"
    assert set(np.unique(mask.labels)) <= {0, RIGHT, LEFT}
    with pytest.raises(ModelError, match="never downloads"):
        lung_mask(scan, backend="lungmask")
    with pytest.raises(ModelError, match="not found"):
        lung_mask(scan, backend="lungmask", weights=tmp_path / "missing.pth")


def test_synth_variants_option(tmp_path, run_cli):
    from covidct.synth.cohort import CohortSettings, patient_variants

    assert patient_variants(CohortSettings(), 0) == ()
    picked = [patient_variants(CohortSettings(variants=anatomy.VARIANTS), i) for i in range(20)]
    assert 0 < sum(len(p) for p in picked) < 20 * len(anatomy.VARIANTS)
    rc, _, stderr = run_cli("synth", "--out", tmp_path / "c", "--patients", "2", "--matrix", "64",
                            "--slice-mm", "5", "5", "--max-slices", "12", "--formats", "nifti",
                            "--variants", "thin-wall,stomach-gas", "--no-progress")
    assert rc == 0, stderr
    assert json.loads((tmp_path / "c" / "synth.json").read_text())["variants"] == [
        "thin-wall", "stomach-gas"]
    rc, _, stderr = run_cli("synth", "--out", tmp_path / "d", "--variants", "bogus")
    assert rc == 2 and "--variants: unknown bogus" in stderr and "Traceback" not in stderr
