"""The SYNTHETIC phantom generator and cohort writer (`covidct synth`)."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from covidct.constants import SYNTHETIC_NOTICE, SYNTHETIC_TAG, VOLUME_CLASS_FOLDERS
from covidct.errors import CovidctError
from covidct.synth import anatomy as A
from covidct.synth import make_patient
from covidct.synth.cohort import CohortSettings, generate_cohort, patient_seed
from covidct.synth.findings import CONSOLIDATION, GGO, INFECTION

pytestmark = pytest.mark.xdist_group("synth")

SMALL = dict(matrix=96, slice_mm=5.0, max_slices=40)
COHORT_ARGS = ("--patients", 6, "--seed", 11, "--matrix", 96, "--slice-mm", 5, 5,
               "--max-slices", 16, "--no-progress")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, run_cli) -> Path:
    """A tiny cohort written once through the command line."""
    out = tmp_path_factory.mktemp("synth") / "cohort"
    rc, stdout, stderr = run_cli("synth", "--out", out, *COHORT_ARGS, timeout=300)
    assert rc == 0, stderr
    assert "SYNTHETIC" in stdout and "patients: 6" in stdout
    return out


def _labels(cohort: Path) -> list[dict]:
    with open(cohort / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _split_lines(cohort: Path) -> dict[str, list[list[str]]]:
    return {s: [line.split() for line in (cohort / "covidx" / f"{s}_COVIDx_CT-2A.txt")
                .read_text().splitlines()] for s in ("train", "val", "test")}


# --- the phantom ------------------------------------------------------------------------


def test_tissues_have_plausible_hounsfield_units():
    p = make_patient("Normal", seed=1, **SMALL)
    hu, tissue = p.scan.voxels, p.tissue
    assert p.scan.is_hu and p.scan.synthetic and hu.dtype == np.float32
    assert np.array_equal(hu, np.rint(hu))
    lung_mean = float(hu[p.lung].mean())
    assert -930 <= lung_mean <= -770, lung_mean
    inner = ndimage.binary_erosion(tissue == A.FAT, iterations=1)
    assert -140 <= np.median(hu[inner]) <= -60
    assert 15 <= np.median(hu[ndimage.binary_erosion(tissue == A.MUSCLE)]) <= 75
    assert np.median(hu[tissue == A.CORTEX]) >= 250           # ribs, spine, sternum
    assert np.median(hu[tissue == A.AIR]) <= -950
    assert np.median(hu[tissue == A.TABLE]) >= 0               # the table is dense
    noise = hu[tissue == A.AIR][:20000]
    assert 6 <= noise.std() <= 25                              # CT-like noise


def test_lungs_taper_so_the_scan_has_slices_without_lung():
    p = make_patient("Normal", seed=2, **SMALL)
    area = p.lung.sum(axis=(1, 2))
    assert area[0] == 0 and area[-1] == 0                      # upper abdomen, thoracic inlet
    peak = int(np.argmax(area))
    assert 0 < peak < len(area) - 1
    assert area[peak // 2] < area[peak] and area[(peak + len(area)) // 2] < area[peak]
    both = (p.tissue == A.LUNG_L).any() and (p.tissue == A.LUNG_R).any()
    assert both


def test_matrix_scales_pixels_and_keeps_the_field_of_view():
    small = make_patient("Normal", seed=3, matrix=64, slice_mm=5.0, max_slices=20)
    large = make_patient("Normal", seed=3, matrix=128, slice_mm=5.0, max_slices=20)
    assert small.scan.shape[1:] == (64, 64) and large.scan.shape[1:] == (128, 128)
    assert small.scan.spacing[1] == pytest.approx(2 * large.scan.spacing[1])
    assert 0.6 * 512 <= small.scan.spacing[1] * 64 <= 1.0 * 512 + 1e-6
    # max_slices widens the spacing instead of cutting the scan short
    assert small.scan.n_slices <= 20 and small.scan.spacing[0] > 5.0


def test_same_seed_same_patient_and_anatomy_independent_of_class():
    a = make_patient("NCP", seed=5, matrix=64, slice_mm=5.0, max_slices=24)
    b = make_patient("NCP", seed=5, matrix=64, slice_mm=5.0, max_slices=24)
    assert np.array_equal(a.scan.voxels, b.scan.voxels)
    assert np.array_equal(a.lesions, b.lesions)
    normal = make_patient("Normal", seed=5, matrix=64, slice_mm=5.0, max_slices=24)
    assert np.array_equal(normal.tissue, a.tissue)             # same person, healthy
    assert not np.array_equal(normal.scan.voxels, a.scan.voxels)
    other = make_patient("NCP", seed=6, matrix=64, slice_mm=5.0, max_slices=24)
    assert other.scan.shape != a.scan.shape or not np.array_equal(other.scan.voxels, a.scan.voxels)


def test_lesion_hounsfield_ranges_per_class():
    ggo, cons = [], []
    for seed in range(3):
        ncp = make_patient("NCP", seed=seed, difficulty=0.0, **SMALL)
        cp = make_patient("CP", seed=seed, difficulty=0.0, **SMALL)
        assert not np.isin(make_patient("Normal", seed=seed, difficulty=0.0, matrix=64,
                                        slice_mm=5.0, max_slices=20).lesions, INFECTION).any()
        for p in (ncp, cp):
            assert p.infection.any() and 0 < p.lesion_fraction < 0.6
            assert not (p.infection & ~p.lung).any()           # lesions stay in the lungs
        ggo.append(np.median(ncp.scan.voxels[ncp.lesions == GGO]))
        cons.append(np.median(cp.scan.voxels[cp.lesions == CONSOLIDATION]))
    assert all(-700 <= v <= -300 for v in ggo), ggo
    assert all(-100 <= v <= 50 for v in cons), cons


def _distribution(p) -> tuple[float, float, float]:
    """(share of the infection in the less involved lung, mean depth from the lung edge in mm,
    how far behind the lungs' centre the infection lies in mm)."""
    inf = p.infection
    left = int((inf & (p.tissue == A.LUNG_L)).sum())
    right = int((inf & (p.tissue == A.LUNG_R)).sum())
    minor = min(left, right) / max(1, left + right)
    depth = np.stack([ndimage.distance_transform_edt(s, sampling=p.scan.spacing[1:])
                      for s in p.lung])
    y = np.arange(p.lung.shape[1])[None, :, None] * p.scan.spacing[1]
    behind = float(np.broadcast_to(y, inf.shape)[inf].mean()
                   - np.broadcast_to(y, p.lung.shape)[p.lung].mean())
    return minor, float(depth[inf].mean()), behind


def test_covid_is_bilateral_peripheral_posterior_and_cp_is_not():
    ncp = [_distribution(make_patient("NCP", seed=s, difficulty=0.0, **SMALL)) for s in range(4)]
    cp = [_distribution(make_patient("CP", seed=s, difficulty=0.0, **SMALL)) for s in range(4)]
    assert sum(minor >= 0.1 for minor, _, _ in ncp) >= 3       # both lungs involved
    assert np.mean([m for m, _, _ in cp]) < np.mean([m for m, _, _ in ncp])
    assert np.mean([d for _, d, _ in ncp]) < np.mean([d for _, d, _ in cp])   # subpleural
    assert np.mean([b for _, _, b in ncp]) > 0                  # posterior predominance


def test_difficulty_shrinks_covid_lesions():
    easy = [make_patient("NCP", seed=s, difficulty=0.0, matrix=64, slice_mm=5.0,
                         max_slices=24).lesion_fraction for s in range(4)]
    hard = [make_patient("NCP", seed=s, difficulty=1.0, matrix=64, slice_mm=5.0,
                         max_slices=24).lesion_fraction for s in range(4)]
    assert np.mean(hard) < 0.6 * np.mean(easy)
    assert all(h > 0 for h in hard)                            # still visibly ill


@pytest.mark.parametrize("kwargs, words", [
    (dict(label="Flu"), "unknown class"),
    (dict(label="NCP", difficulty=1.5), "difficulty"),
    (dict(label="NCP", max_slices=3), "max slices"),
    (dict(label="NCP", slice_mm=(5.0, 1.0)), "slice spacing"),
])
def test_bad_phantom_settings_are_clear_errors(kwargs, words):
    with pytest.raises(CovidctError, match=words):
        make_patient(**kwargs)


# --- the cohort -------------------------------------------------------------------------


def test_cohort_layout_and_labels(cohort):
    rows = _labels(cohort)
    assert [r["label"] for r in rows].count("Normal") == 2
    assert sorted({r["label"] for r in rows}) == ["CP", "NCP", "Normal"]
    for r in rows:
        assert {"Normal": "Control", "CP": "CAP", "NCP": "COVID-19"}[r["label"]] == r["volume_label"]
        assert (cohort / r["dicom"]).is_dir() and len(list((cohort / r["dicom"]).iterdir())) == int(r["n_slices"])
        assert (cohort / r["nifti"]).is_file() and (cohort / r["lesions"]).is_file()
        assert (float(r["lesion_fraction"]) > 0) == (r["label"] != "Normal")
        folder = VOLUME_CLASS_FOLDERS[["Normal", "CP", "NCP"].index(r["label"])]
        linked = cohort / "covidctnet" / folder / f"{r['patient_id']}.nii.gz"
        assert linked.read_bytes() == (cohort / r["nifti"]).read_bytes()
    assert (cohort / "montage.png").is_file()


def test_covidctnet_reload_with_geometry_and_lesion_masks(cohort):
    from covidct.scanio import load_scan

    r = next(r for r in _labels(cohort) if r["label"] == "NCP")
    ct = load_scan(cohort / r["nifti"])
    dicom = load_scan(cohort / r["dicom"])
    lesions = load_scan(cohort / r["lesions"])
    spacing = tuple(float(r[f"spacing_{a}"]) for a in "zyx")
    assert ct.shape == dicom.shape == lesions.shape
    assert ct.spacing == pytest.approx(spacing, abs=1e-3)
    assert dicom.spacing == pytest.approx(spacing, abs=1e-3)
    assert np.array_equal(ct.voxels, dicom.voxels)
    assert set(np.unique(lesions.voxels)) <= {0, 1, 2, 3, 4, 5}
    assert np.isin(lesions.voxels, INFECTION).any()
    lungs = load_scan(cohort / r["lungs"]).voxels
    assert lungs.shape == ct.shape and set(np.unique(lungs)) == {0, 1, 2}
    # Label 2 is the patient's left lung: larger x in the LPS grid; lesions lie in the lungs.
    xs = np.nonzero(lungs)[2]
    assert xs[lungs[np.nonzero(lungs)] == 2].mean() > xs[lungs[np.nonzero(lungs)] == 1].mean()
    assert (lungs[np.isin(lesions.voxels, INFECTION)] > 0).all()


def test_split_files_have_the_exact_covidx_format(cohort):
    from PIL import Image

    from covidct.covidx import read_split

    for split, lines in _split_lines(cohort).items():
        records = read_split(cohort / "covidx" / f"{split}_COVIDx_CT-2A.txt")
        assert len(records) == len(lines)
        for parts in lines:
            assert len(parts) == 6
            name, label, xmin, ymin, xmax, ymax = parts[0], *map(int, parts[1:])
            assert label in (0, 1, 2)
            assert name.split("_")[0] == ("Normal", "CP", "NCP")[label]
            assert 0 <= xmin < xmax <= 511 and 0 <= ymin < ymax <= 511
        for record in records[:3]:
            image = Image.open(cohort / "covidx" / "images" / record.filename)
            assert image.size == (512, 512) and image.mode == "L"


def test_boxes_contain_the_body_and_exclude_the_table(cohort):
    from PIL import Image

    rows = {r["covidx_prefix"]: (i, r) for i, r in enumerate(_labels(cohort))}
    checked = 0
    for lines in _split_lines(cohort).values():
        for parts in lines[::5]:
            name, xmin, ymin, xmax, ymax = parts[0], *map(int, parts[2:])
            prefix, k = name[:-9], int(name[-8:-4])
            i, r = rows[prefix]
            p = make_patient(r["label"], seed=patient_seed(11, i), difficulty=0.3, matrix=96,
                             slice_mm=(5.0, 5.0), max_slices=16)
            codes = np.asarray(Image.fromarray(p.tissue[k]).resize((512, 512), Image.NEAREST))
            body = ~np.isin(codes, (A.AIR, A.TABLE, A.FOAM))
            ys, xs = np.nonzero(body)
            assert xmin <= xs.min() + 2 and xs.max() - 2 <= xmax
            assert ymin <= ys.min() + 2 and ys.max() - 2 <= ymax
            # The box stops above the table under the patient (its curved rims may rise
            # beside the body, as on real scanners).
            centre = int(np.median(xs))
            under = np.nonzero(codes[:, centre] == A.TABLE)[0]
            assert under.size and ys.max() < under.min() and ymax < under.min()
            checked += 1
    assert checked >= 3


def test_splits_are_by_patient_and_diseased_slices_show_lesions(cohort):
    from covidct.covidx import patient_id
    from covidct.scanio import load_scan

    lines = _split_lines(cohort)
    patients = {s: {patient_id(parts[0]) for parts in ls} for s, ls in lines.items()}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    rows = {r["covidx_prefix"]: r for r in _labels(cohort)}
    masks = {}
    counted = {prefix: 0 for prefix in rows}
    for split, ls in lines.items():
        for parts in ls:
            prefix, k = parts[0][:-9], int(parts[0][-8:-4])
            r = rows[prefix]
            assert r["split"] == split
            counted[prefix] += 1
            if r["label"] != "Normal":
                if prefix not in masks:
                    masks[prefix] = load_scan(cohort / r["lesions"]).voxels
                assert np.isin(masks[prefix][k], INFECTION).any(), parts[0]
    assert all(counted[p] == int(r["covidx_slices"]) > 0 for p, r in rows.items())


def test_every_output_says_synthetic(cohort):
    import nibabel as nib
    import pydicom

    readme = (cohort / "README.md").read_text()
    assert SYNTHETIC_NOTICE in readme and "seed: 11" in readme
    assert "| train |" in readme and "labels.csv" in readme
    r = _labels(cohort)[0]
    first = sorted((cohort / r["dicom"]).iterdir())[0]
    ds = pydicom.dcmread(first)
    assert SYNTHETIC_TAG in ds.SeriesDescription
    assert str(ds.PatientName) == "SYNTHETIC^PHANTOM" and ds.PatientID == r["patient_id"]
    assert SYNTHETIC_TAG.encode() in nib.load(cohort / r["nifti"]).header["descrip"].tobytes()
    from PIL import Image
    png = next((cohort / "covidx" / "images").iterdir())
    assert SYNTHETIC_TAG in Image.open(png).text.get("Comment", "")


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_writes_identical_files(tmp_path):
    settings = CohortSettings(patients=2, seed=4, matrix=64, slice_mm=(5.0, 5.0), max_slices=10,
                              formats=("nifti", "covidx"))
    # One process and two worker processes (patients finishing out of order) write the same.
    generate_cohort(tmp_path / "a", settings, progress=False, workers=1)
    generate_cohort(tmp_path / "b", settings, progress=False, workers=2)
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b and any(k.endswith(".png") for k in a) and any(k.endswith(".nii.gz") for k in a)
    assert not (tmp_path / "a" / "patients" / "SYN0001" / "dicom").exists()   # formats honoured
    # A rerun into an earlier cohort replaces it; a foreign folder is refused, untouched.
    smaller = CohortSettings(patients=1, seed=4, matrix=64, slice_mm=(5.0, 5.0), max_slices=10,
                             formats=("nifti",))
    generate_cohort(tmp_path / "a", smaller, progress=False)
    assert len(_labels(tmp_path / "a")) == 1 and not (tmp_path / "a" / "covidx").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(CovidctError, match="not a covidct synth cohort"):
        generate_cohort(foreign, smaller, progress=False)
    assert (foreign / "keep.txt").read_text() == "precious"


def test_workers_keep_the_callers_private_file_modes(tmp_path):
    """private_files() is per thread; worker processes must write with the caller's modes."""
    import stat

    from covidct.atomic import private_files

    settings = CohortSettings(patients=2, seed=4, matrix=32, slice_mm=(5.0, 5.0), max_slices=8,
                              formats=("nifti", "covidx"))
    with private_files():
        generate_cohort(tmp_path / "one", settings, progress=False, workers=1)
        generate_cohort(tmp_path / "two", settings, progress=False, workers=2)

    def modes(folder):
        return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
                for p in folder.rglob("*") if p.is_file()}

    one, two = modes(tmp_path / "one"), modes(tmp_path / "two")
    assert one == two and one["patients/SYN0001/ct.nii.gz"] == 0o600


def test_a_worker_that_cannot_start_is_an_error_not_a_hang(tmp_path):
    """A script without a main guard makes each spawned worker rerun it and die: the cohort
    fails at once with a one-line reason, and nothing is left behind."""
    import os
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "from covidct.synth.cohort import CohortSettings, generate_cohort\n"
        "generate_cohort(sys.argv[1], CohortSettings(patients=2, matrix=32, slice_mm=(5.0, 5.0),"
        " max_slices=8, formats=('nifti',)), progress=False, workers=2)\n")
    out = tmp_path / "cohort"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                          timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert proc.returncode != 0 and "rerun with --workers 1" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (("--patients", "0"), "--patients"),
    (("--difficulty", "2"), "--difficulty"),
    (("--formats", "dicom,jpeg"), "--formats"),
    (("--split", "0", "0", "0"), "--split"),
    (("--workers", "0"), "--workers"),
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args, words):
    from covidct.cli import main

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["synth", "--out", str(tmp_path / "x"), *args])
    assert rc == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "x").exists()
