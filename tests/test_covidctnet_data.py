"""CovidCTNet cohorts (folder per class, labels CSV, patient splits) and the array cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidct.errors import DatasetError
from covidct.scan import Scan
from covidct.digest import file_digest
from covidct.covidctnet.cache import ArrayCache, scan_digest
from covidct.covidctnet.volume_data import load_cohort


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def folder_cohort(root: Path, per_class: int = 10) -> Path:
    for folder in ("Control", "CAP", "Covid"):
        for k in range(per_class):
            if k % 2:  # a DICOM series folder
                touch(root / folder / f"{folder} patient {k}" / "1.dcm")
            else:
                touch(root / folder / f"{folder}-{k}.nii.gz")
    touch(root / "Control" / "notes.txt")          # not a scan: ignored
    touch(root / "Control" / ".DS_Store")          # hidden: ignored
    return root


def test_folder_per_class_layout_with_a_stratified_patient_split(tmp_path):
    cohort = load_cohort(folder_cohort(tmp_path), seed=1)
    assert cohort.layout == "folders" and len(cohort.items) == 30
    labels = {i.label for i in cohort.items}
    assert labels == {"Control", "CAP", "COVID-19"}
    assert {i.patient_id for i in cohort.items if i.label == "Control"} >= {"Control-0", "Control patient 1"}
    counts = cohort.counts()
    for label in labels:  # 10 per class: 7 train, 1-2 val, 1-2 test, every class in every split
        assert counts["train"][label] >= 6 and counts["val"][label] >= 1 and counts["test"][label] >= 1
    # Patients never straddle splits, and the split is reproducible from the seed.
    assert len({i.patient_id for i in cohort.items}) == 30
    again = load_cohort(tmp_path, seed=1)
    assert [(i.patient_id, i.split) for i in again.items] == [(i.patient_id, i.split) for i in cohort.items]
    other = load_cohort(tmp_path, seed=2)
    assert {(i.patient_id, i.split) for i in other.items} != {(i.patient_id, i.split) for i in cohort.items}
    assert "seed 1" in cohort.split_from


def test_class_folders_list_only_files_load_scan_can_read_as_a_volume(tmp_path):
    folder_cohort(tmp_path, per_class=3)
    touch(tmp_path / "CAP" / "old.mha")      # load_scan cannot read MetaImage or NRRD
    touch(tmp_path / "CAP" / "old.nrrd")
    touch(tmp_path / "CAP" / "series.zip")
    touch(tmp_path / "Covid" / "one.IMA")    # a DICOM suffix, any case
    ids = {i.patient_id for i in load_cohort(tmp_path).items}
    assert {"series", "one"} <= ids and not {"old", "old.mha", "old.nrrd"} & ids
    assert len(ids) == 11


def test_labels_csv_with_paths_labels_and_splits(tmp_path):
    touch(tmp_path / "scans" / "a.nii.gz")
    touch(tmp_path / "scans" / "b" / "1.dcm")
    touch(tmp_path / "scans" / "c.nii.gz")
    csv_path = touch(tmp_path / "labels.csv",
                     "patient_id,volume_label,split,path,synthetic\n"
                     "a,Normal,train,scans/a.nii.gz,true\n"
                     "b,ncp,validation,scans/b,true\n"
                     "c,Common pneumonia,test,scans/c.nii.gz,true\n")
    cohort = load_cohort(csv_path)
    assert [(i.patient_id, i.label, i.split) for i in cohort.items] == [
        ("a", "Control", "train"), ("b", "COVID-19", "val"), ("c", "CAP", "test")]
    assert cohort.items[1].path == tmp_path / "scans" / "b"
    assert cohort.synthetic and cohort.split_from == "file"
    assert load_cohort(tmp_path).layout == "csv"  # the folder holding labels.csv


def test_synth_layout_is_found_without_a_path_column(tmp_path):
    touch(tmp_path / "covidctnet" / "Covid" / "SYN0001.nii.gz")
    touch(tmp_path / "patients" / "SYN0002" / "ct.nii.gz")
    touch(tmp_path / "labels.csv", "patient_id,label,volume_label,split\n"
                                   "SYN0001,NCP,COVID-19,train\nSYN0002,Normal,Control,test\n")
    items = load_cohort(tmp_path).items
    assert items[0].path == tmp_path / "covidctnet" / "Covid" / "SYN0001.nii.gz"
    assert items[1].path == tmp_path / "patients" / "SYN0002" / "ct.nii.gz"


@pytest.mark.parametrize("rows, message", [
    ("a,Flu,train,a.nii.gz\n", "unknown volume label 'Flu'"),
    ("a,Control,later,a.nii.gz\n", "unknown split 'later'"),
    ("a,Control,train,missing.nii.gz\n", "not found"),
    ("a,Control,train,a.nii.gz\nb,CAP,,a.nii.gz\n", "no split while others have one"),
    ("a,Control,train,a.nii.gz\na,CAP,train,a.nii.gz\n", "two labels or splits"),
])
def test_bad_labels_files_are_refused_with_the_line(tmp_path, rows, message):
    touch(tmp_path / "a.nii.gz")
    csv_path = touch(tmp_path / "labels.csv", "patient_id,volume_label,split,path\n" + rows)
    with pytest.raises(DatasetError, match=message) as info:
        load_cohort(csv_path)
    assert "labels.csv" in str(info.value)


def test_not_a_cohort(tmp_path):
    with pytest.raises(DatasetError, match="no such"):
        load_cohort(tmp_path / "nowhere")
    touch(tmp_path / "x" / "readme.txt")
    with pytest.raises(DatasetError, match="class folders"):
        load_cohort(tmp_path / "x")
    touch(tmp_path / "y" / "Control" / "p.nii.gz")
    touch(tmp_path / "y" / "Covid" / "p.nii.gz")
    with pytest.raises(DatasetError, match="more than one class"):
        load_cohort(tmp_path / "y")


# -- the cache -----------------------------------------------------------------------------------

def test_cache_round_trip_and_keys(tmp_path):
    cache = ArrayCache(tmp_path)
    key = ArrayCache.key("volume", "abc", {"slice_size": 128})
    assert key != ArrayCache.key("volume", "abc", {"slice_size": 64})
    assert key != ArrayCache.key("volume", "abd", {"slice_size": 128})
    assert cache.load(key) is None
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.save(key, array, {"synthetic": True})
    loaded, meta = cache.load(key)
    np.testing.assert_array_equal(loaded, array)
    assert meta == {"synthetic": True}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


def test_a_damaged_entry_is_a_miss_not_a_crash(tmp_path):
    cache = ArrayCache(tmp_path)
    key = ArrayCache.key("volume", "abc", {})
    cache.save(key, np.zeros(3))
    entry = next(tmp_path.rglob("*.npz"))
    entry.write_bytes(b"not a zip")
    assert cache.load(key) is None


def test_cache_can_be_switched_off(monkeypatch, tmp_path):
    monkeypatch.setenv("COVIDCT_CACHE", "off")
    cache = ArrayCache.default()
    assert not cache.enabled
    cache.save("volume-x", np.zeros(2))
    assert cache.load("volume-x") is None
    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path / "c"))
    assert ArrayCache.default().root == tmp_path / "c"


def test_digests_follow_content_and_geometry(tmp_path):
    a = Scan(np.zeros((2, 4, 4), np.float32), spacing=(1, 1, 1), units="HU")
    b = Scan(np.zeros((2, 4, 4), np.float32), spacing=(2, 1, 1), units="HU")
    c = Scan(np.ones((2, 4, 4), np.float32), spacing=(1, 1, 1), units="HU")
    assert len({scan_digest(a), scan_digest(b), scan_digest(c)}) == 3
    assert scan_digest(a) == scan_digest(Scan(np.zeros((2, 4, 4), np.float32), spacing=(1, 1, 1),
                                              units="HU"))
    folder = tmp_path / "series"
    touch(folder / "1.dcm", "one")
    first = file_digest(folder)
    touch(folder / "2.dcm", "two")
    assert file_digest(folder) != first
    assert file_digest(folder / "1.dcm") != file_digest(folder / "2.dcm")


def test_training_augmentation_flips_and_shifts_without_inventing_content():
    """Each input is flipped left-right or not and shifted by at most the bound (zero fill);
    what stays in view is the input's own content, and draws vary between inputs."""
    from covidct.covidctnet.train import augment

    rng = np.random.default_rng(0)
    x = rng.random((16, 6, 10, 12)).astype(np.float32) + 1.0  # no zeros of its own
    out = augment(x, np.random.default_rng(1), shift=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    flipped = 0
    for item, moved in zip(x, out):
        found = None
        for flip in (False, True):
            source = item[..., ::-1] if flip else item
            for dz in range(-2, 3):
                for dy in range(-2, 3):
                    for dx in range(-2, 3):
                        back = np.roll(moved, (-dz, -dy, -dx), axis=(0, 1, 2))
                        kept = back > 0
                        if kept.mean() > 0.4 and np.array_equal(back[kept], source[kept]):
                            found = flip
        assert found is not None
        flipped += found
    assert 0 < flipped < len(x)
    for item, same in zip(x, augment(x, np.random.default_rng(2), shift=0)):
        assert np.array_equal(same, item) or np.array_equal(same, item[..., ::-1])
    # Two channels (--cnn-input infection+volume) move together: the same draws as one channel.
    two = augment(np.stack([x, 2 * x], axis=1), np.random.default_rng(1), shift=2)
    assert two.shape == (16, 2, 6, 10, 12)
    np.testing.assert_array_equal(two[:, 0], out)
    np.testing.assert_array_equal(two[:, 1], 2 * out)


def test_zoom_augmentation_scales_about_the_centre_within_its_bound_and_channels_alike():
    """--augment-zoom z: a centred block grows or shrinks by a factor in [1 - z, 1 + z] along
    each axis and stays centred; both channels move together; z = 0 draws as before."""
    from covidct.covidctnet.train import augment

    x = np.zeros((24, 2, 21, 21, 21), np.float32)
    x[:, :, 6:15, 6:15, 6:15] = 1.0          # a 9-voxel cube at the centre
    x[:, 1] *= 3.0
    out = augment(x, np.random.default_rng(4), shift=0, zoom=0.2)
    np.testing.assert_allclose(out[:, 1], 3.0 * out[:, 0], rtol=1e-5, atol=1e-6)
    extents = []
    for item in out[:, 0]:
        for axis in range(3):
            profile = item.sum(axis=tuple(a for a in range(3) if a != axis))
            extents.append(profile.sum() / profile.max())                 # width along the axis
            centre = (profile * np.arange(21)).sum() / profile.sum()
            assert abs(centre - 10.0) < 0.3
    extents = np.array(extents) / 9.0
    assert extents.min() > 0.8 - 0.06 and extents.max() < 1.2 + 0.06
    assert extents.min() < 0.9 and extents.max() > 1.1                     # it does scale
    np.testing.assert_array_equal(augment(x, np.random.default_rng(4), shift=2, zoom=0.0),
                                  augment(x, np.random.default_rng(4), shift=2))
