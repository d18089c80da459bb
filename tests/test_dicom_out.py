"""DICOM outputs (SR, SEG, key images): built by `covidct predict --dicom-out`, read back with
highdicom, checked by dciodvfy when dicom3tools is installed (scripts/dicom-tools.sh)."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("highdicom")
torch = pytest.importorskip("torch")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from conftest import (REPO, build_hu_volume, save_tiny_bit_model,  # noqa: E402
                      save_tiny_covidctnet_model)

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PAT-0042"


def covidct(*args, env=None, timeout=120):
    """``python -m covidct ARGS`` with extra environment variables: (rc, stdout, stderr)."""
    import os
    import sys

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "covidct", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=REPO)
    return proc.returncode, proc.stdout, proc.stderr


#: 3 mm pixels make the 64 x 64 phantom a 19 cm chest whose lungs the lung mask finds.
LUNG_SPACING = (2.5, 3.0, 3.0)


def write_series(folder, seed=0, shape=(12, 64, 64), spacing=(2.5, 0.7, 0.7), lesion=False, **kw):
    """A synthetic series; ``lesion`` puts a ground-glass block (-500 HU) into the image-left
    lung (the patient's right)."""
    from covidct.scanio import write_dicom_series

    scan = build_hu_volume(shape=shape, seed=seed, spacing=spacing)
    if lesion:
        voxels = scan.voxels.copy()
        voxels[3:9, 24:32, 16:22] = -500.0
        scan = scan.with_voxels(voxels)
    return write_dicom_series(scan, folder, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return (save_tiny_bit_model(root / "bit.pt", seed=0, resize=72, crop=64),
            save_tiny_covidctnet_model(root / "covidctnet.pt"))


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, models):
    """`covidct predict SERIES --method all --dicom-out DIR --out DIR` on a written series."""
    root = tmp_path_factory.mktemp("predicted")
    write_series(root / "series", spacing=LUNG_SPACING, lesion=True)
    rc, out, err = covidct("predict", root / "series", "--model", models[0], "--model", models[1],
                           "--out", root / "json", "--dicom-out", root / "dicom",
                           env={"COVIDCT_CACHE": str(root / "cache")})
    assert rc == 0, err
    return root, out, err


def _read(folder):
    return {p.name: pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))}


def test_outputs_join_the_source_study_with_new_uids_and_research_labels(predicted):
    root, out, err = predicted
    source = pydicom.dcmread(root / "series" / "slice-0001.dcm")
    objects = _read(root / "dicom")
    kinds = sorted({name.split("-")[0] for name in objects})
    assert kinds == ["key", "ko", "seg", "sr"]
    series_uids = {ds.SeriesInstanceUID for ds in objects.values()}
    assert len(series_uids) == 4 and source.SeriesInstanceUID not in series_uids
    assert len({ds.SOPInstanceUID for ds in objects.values()}) == len(objects)
    for ds in objects.values():
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert (str(ds.PatientName), ds.PatientID) == (PATIENT_NAME, PATIENT_ID)
        assert ds.SeriesDescription.startswith("covidct RESEARCH")
    # Patient identifiers only inside the objects: not in the output, logs or file names.
    for text in (out, err, " ".join(objects), " ".join(p.name for p in (root / "json").iterdir())):
        assert PATIENT_NAME not in text and PATIENT_ID not in text
    assert (root / "dicom").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (root / "dicom").glob("*.dcm"))


def test_sr_holds_each_methods_call_and_probabilities_as_predict_wrote_them(predicted):
    root, _, _ = predicted
    sr = hd.sr.srread(next((root / "dicom").glob("sr-*.dcm")))
    groups = {str(g.tracking_identifier): g for g in sr.content.get_image_measurement_groups()}
    assert set(groups) == {"covidct bit", "covidct covidctnet", "covidct lungs"}
    for method in ("bit", "covidctnet"):
        written = json.loads((root / "json" / f"{method}.json").read_text())
        got = {m.name.meaning.removeprefix("Probability of "): m.value
               for m in groups[f"covidct {method}"].get_measurements()}
        assert got.keys() == written["probabilities"].keys()
        for name, p in written["probabilities"].items():
            assert abs(got[name] - p) < 1e-9
        (call,) = groups[f"covidct {method}"].get_qualitative_evaluations()
        assert call.name.meaning == "covidct call"
        expected = max(written["probabilities"], key=written["probabilities"].get)
        assert call.value.meaning in {expected, "COVID-19", "Pneumonia", "Normal",
                                      "Community acquired pneumonia"}
    text = next((root / "dicom").glob("sr-*.dcm")).read_bytes().decode("latin-1")
    assert "not a medical device" in text and "model sha256" in text
    # The evidence: every source slice.
    source_uids = {pydicom.dcmread(p).SOPInstanceUID for p in (root / "series").glob("*.dcm")}
    ds = pydicom.dcmread(next((root / "dicom").glob("sr-*.dcm")))
    evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == source_uids


def test_seg_is_on_the_source_frame_of_reference_and_key_images_are_marked(predicted):
    root, _, _ = predicted
    source = pydicom.dcmread(root / "series" / "slice-0001.dcm")
    seg = hd.seg.segread(next((root / "dicom").glob("seg-*.dcm")))
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    types = [seg.get_segment_description(n).segmented_property_type.value for n in seg.segment_numbers]
    assert types[:2] == ["3341006", "44029006"]  # right and left lung (SNOMED CT)
    keys = [pydicom.dcmread(p) for p in sorted((root / "dicom").glob("key-*.dcm"))]
    assert len(keys) == 6  # three slices per method
    source_uids = {pydicom.dcmread(p).SOPInstanceUID for p in (root / "series").glob("*.dcm")}
    for ds in keys:
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in source_uids
        assert "RESEARCH USE ONLY - NOT FOR DIAGNOSIS" in ds.ImageComments
        band = ds.pixel_array[:20].reshape(-1, 3).astype(int)
        yellow = (band[:, 0] > 200) & (band[:, 1] > 200) & (band[:, 2] < 60)
        assert yellow.sum() > 100  # the burnt-in text, drawn in yellow in the top band
    # A Key Object Selection flags them for viewers that list key images.
    (ko,) = [pydicom.dcmread(p) for p in (root / "dicom").glob("ko-*.dcm")]
    flagged = {i.ReferencedSOPInstanceUID for s in ko.CurrentRequestedProcedureEvidenceSequence
               for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert flagged == {ds.SOPInstanceUID for ds in keys}
    assert ko.ConceptNameCodeSequence[0].CodeMeaning == "For Research"


@pytest.mark.skipif(not shutil.which("dciodvfy"), reason="dicom3tools' dciodvfy not installed "
                    "(scripts/dicom-tools.sh installs it)")
def test_every_object_passes_dciodvfy(predicted):
    root, _, _ = predicted
    for path in sorted((root / "dicom").glob("*.dcm")):
        proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"
    if shutil.which("dcmdump"):
        proc = subprocess.run(["dcmdump", "-q", *map(str, sorted((root / "dicom").glob("*.dcm")))],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and "E:" not in proc.stderr


def test_seg_and_sr_carry_a_given_lung_mask_and_involvement(tmp_path, models):
    from covidct.dicom_out import LungFindings, predict_to_dicom
    from covidct.models import load_model
    from covidct.scanio import load_scan

    write_series(tmp_path / "series", seed=1)
    scan = load_scan(tmp_path / "series")
    mask = np.zeros(scan.shape, np.uint8)
    mask[2:10, 20:40, 10:30] = 1
    mask[2:10, 20:40, 34:54] = 2
    lungs = LungFindings.from_lungs(mask, {"involved_percent": 17.5, "by_lung": {
        "right": {"involved_percent": 10.0}, "left": {"involved_percent": 25.0}}})
    predict_to_dicom(tmp_path / "series", [load_model(models[0])], tmp_path / "dicom", lungs=lungs)
    seg = hd.seg.segread(next((tmp_path / "dicom").glob("seg-*.dcm")))
    names = [seg.get_segment_description(n).segmented_property_type.meaning for n in seg.segment_numbers]
    assert names == ["Right lung", "Left lung"]
    volume = seg.get_volume(combine_segments=False)
    # Back on the source grid, slice for slice (SEG frames sorted as the source slices).
    right = np.asarray(volume.array[..., 0]) > 0
    assert right.sum() == (mask == 1).sum()
    sr = hd.sr.srread(next((tmp_path / "dicom").glob("sr-*.dcm")))
    (lung_group,) = [g for g in sr.content.get_image_measurement_groups()
                     if str(g.tracking_identifier) == "covidct lungs"]
    values = {(m.name.meaning, m.finding_sites[0].value.meaning): m.value
              for m in lung_group.get_measurements()}
    voxel_ml = np.prod(scan.spacing) / 1000
    assert values[("Volume", "Right lung")] == pytest.approx((mask == 1).sum() * voxel_ml, abs=0.05)
    assert values[("Fraction of lung volume involved", "Left lung")] == pytest.approx(25.0)
    assert values[("Fraction of lung volume involved", "Lung")] == pytest.approx(17.5)


def test_seg_and_sr_carry_the_lung_mask_and_involvement_predict_computed(predicted):
    """`predict --dicom-out`: the SEG's lungs are lung_mask(scan) voxel for voxel, the SR's
    volumes are the mask's and its involvement figures are those predict wrote."""
    from covidct.lungs import involvement, lung_mask
    from covidct.scanio import load_scan

    root, _, _ = predicted
    scan = load_scan(root / "series")
    mask = lung_mask(scan)
    assert mask.found
    seg = hd.seg.segread(next((root / "dicom").glob("seg-*.dcm")))
    names = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert names[:2] == ["Right lung", "Left lung"]
    volume = np.asarray(seg.get_volume(combine_segments=False).array)
    for k, label in enumerate((1, 2)):
        assert int((volume[..., k] > 0).sum()) == int((mask.labels == label).sum()) > 0
    sr = hd.sr.srread(next((root / "dicom").glob("sr-*.dcm")))
    (group,) = [g for g in sr.content.get_image_measurement_groups()
                if str(g.tracking_identifier) == "covidct lungs"]
    values = {(m.name.meaning, m.finding_sites[0].value.meaning): m.value
              for m in group.get_measurements()}
    sites = {"right": "Right lung", "left": "Left lung", "total": "Lung"}
    for side, ml in mask.volumes_ml().items():
        assert values[("Volume", sites[side])] == pytest.approx(ml, abs=1e-6)
    measured = involvement(scan, mask)
    assert measured["by_lung"]["right"]["involved_percent"] > 1  # the lesion is seen
    for side in ("right", "left"):
        assert values[("Fraction of lung volume involved", sites[side])] == pytest.approx(
            measured["by_lung"][side]["involved_percent"])
    assert values[("Six-zone CT severity score (0-24)", "Lung")] == measured["severity_score"]
    written = json.loads((root / "json" / "covidctnet.json").read_text())["lungs"]["involvement"]
    assert values[("Fraction of lung in CovidCTNet infection map", "Lung")] == pytest.approx(
        written["map_share_percent"])
    text = next((root / "dicom").glob("sr-*.dcm")).read_bytes().decode("latin-1")
    assert "research measurement" in text


def test_one_lung_mask_serves_both_methods_and_the_dicom_outputs(tmp_path, models, monkeypatch):
    import covidct.lungs as lungs
    from covidct.dicom_out import predict_to_dicom
    from covidct.models import load_model

    calls = []
    real = lungs.lung_mask
    monkeypatch.setattr(lungs, "lung_mask", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    write_series(tmp_path / "series", seed=3, spacing=LUNG_SPACING)
    predict_to_dicom(tmp_path / "series", [load_model(m) for m in models], tmp_path / "dicom")
    assert len(calls) == 1
    seg = hd.seg.segread(next((tmp_path / "dicom").glob("seg-*.dcm")))
    assert len(seg.segment_numbers) >= 2


def test_seg_marks_the_infection_map_above_the_lung_map_threshold_inside_the_lungs(predicted):
    from covidct.dicom_out import build_seg, lung_findings, source_datasets
    from covidct.lungs import MAP_THRESHOLD
    from covidct.scanio import load_scan

    root, _, _ = predicted
    scan = load_scan(root / "series")
    sources = source_datasets(root / "series", scan)
    found = lung_findings(scan, [])
    right = found.mask == 1
    infection = np.zeros(scan.shape, np.float32)
    z, y, x = np.nonzero(right)
    infection[z[:40], y[:40], x[:40]] = MAP_THRESHOLD + 0.01  # counted
    infection[z[40:80], y[40:80], x[40:80]] = MAP_THRESHOLD  # not above: not counted
    infection[:, :3, :3] = 0.9  # outside the lungs: not counted
    seg = build_seg(sources, scan, infection, found, synthetic=True)
    (number,) = [n for n in seg.segment_numbers
                 if seg.get_segment_description(n).segmented_property_type.value == "52988006"]
    assert seg.get_segment_description(number).segment_label == \
        f"CovidCTNet infection map > {MAP_THRESHOLD}"
    volume = np.asarray(seg.get_volume(combine_segments=False).array)
    assert int((volume[..., number - 1] > 0).sum()) == 40


def test_infection_map_returns_to_the_scan_grid_where_the_network_saw_it():
    """A map made from the pre-processed volume itself lands back on the scan's bright blob,
    also for a scan stored feet-first and right-to-left (the canonical flips are undone)."""
    from covidct.scan import Scan
    from covidct.covidctnet.infection_maps import map_to_scan_grid
    from covidct.covidctnet.preprocess import preprocess_volume, resize_depth
    from covidct.covidctnet.settings import VolumeSettings

    settings = VolumeSettings(slice_size=40, volume_slices=34)
    voxels = np.full((20, 64, 64), -1000.0, np.float32)
    voxels[3:7, 8:20, 40:56] = 300.0
    for direction in (np.eye(3), np.diag([-1.0, 1.0, -1.0])):
        scan = Scan(voxels=voxels, spacing=(2.5, 0.8, 0.8), units="HU", direction=direction)
        volume = preprocess_volume(scan, settings)
        back = map_to_scan_grid(resize_depth(volume, 34), len(volume), scan.shape, direction)
        assert back.shape == scan.shape
        inside, mirrored = back[4:6, 10:18, 42:54].mean(), back[13:17, 8:20, 8:24].mean()
        assert inside > 0.7 and mirrored < 0.05


def test_dicom_out_refuses_non_dicom_input_in_one_line(tmp_path, models):
    from PIL import Image

    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "slice.png")
    rc, _, err = covidct("predict", tmp_path / "slice.png", "--model", models[0],
                         "--dicom-out", tmp_path / "dicom")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "slice.png" in err and "DICOM" in err
    assert not (tmp_path / "dicom").exists()
