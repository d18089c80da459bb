"""The COVIDx CT split format: the real CT-2A files parse with the published counts."""
from pathlib import Path

import pytest

from covidct.covidx import (SliceRecord, check_images, class_counts, parse_line, patient_id,
                            read_split, write_split)
from covidct.errors import DatasetError

SPLITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "covidx-ct-2a-splits"


@pytest.mark.parametrize("name, counts", [
    ("val_COVIDx_CT-2A.txt", {"Normal": 11842, "CP": 7400, "NCP": 6244}),
    ("test_COVIDx_CT-2A.txt", {"Normal": 12245, "CP": 7395, "NCP": 6018}),
])
def test_real_split_files_parse_with_published_counts(name, counts):
    if not SPLITS.is_dir():
        pytest.skip("../shared/data not present")
    records = read_split(SPLITS / name)
    assert class_counts(records) == counts
    assert all(0 <= r.box[0] < r.box[2] and 0 <= r.box[1] < r.box[3] for r in records)


def test_real_splits_are_disjoint_by_patient():
    if not SPLITS.is_dir():
        pytest.skip("../shared/data not present")
    val = {r.patient for r in read_split(SPLITS / "val_COVIDx_CT-2A.txt")}
    test = {r.patient for r in read_split(SPLITS / "test_COVIDx_CT-2A.txt")}
    # COVIDx CT-2A is split by patient; our patient parser must not merge or split patients
    # so badly that the published split looks leaky.
    assert len(val) > 100 and len(test) > 100
    assert not val & test


@pytest.mark.parametrize("filename, patient", [
    ("NCP_1013_2577_0000.png", "NCP_1013"),
    ("Normal_1754_1093_0066.png", "Normal_1754"),
    ("normalcd3_patient433_SR_2_IM00012.png", "normalcd3_patient433"),
    ("137covid_patient76_SR_2_IM00014.png", "137covid_patient76"),
    ("coronacases_010-0075.png", "coronacases_010"),
    ("radiopaedia_4_85506_1-0004.png", "radiopaedia_4_85506_1"),
    ("volume-covid19-A-0573_ct-0010.png", "volume-covid19-A-0573"),
    ("LIDC-IDRI-0234-1.3.6.1.4.1.14519.5.2.1.6279.6001.1786-0019.png", "LIDC-IDRI-0234"),
])
def test_patient_id_of_each_source_naming(filename, patient):
    assert patient_id(filename) == patient


@pytest.mark.parametrize("line, problem", [
    ("a.png 0 1 2 3", "expected"),
    ("a.png x 1 2 3 4", "integers"),
    ("a.png 3 1 2 3 4", "class must be"),
    ("a.png 0 5 5 2 9", "empty"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, problem):
    split = tmp_path / "bad.txt"
    split.write_text("ok.png 0 0 0 10 10\n" + line + "\n")
    with pytest.raises(DatasetError) as err:
        read_split(split)
    assert str(split) in str(err.value) and "line 2" in str(err.value) and problem in str(err.value)


def test_missing_images_are_named_before_training(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "here.png").write_bytes(b"")
    records = [SliceRecord(f"gone{i}.png", 0, (0, 0, 9, 9)) for i in range(7)]
    records.append(SliceRecord("here.png", 1, (0, 0, 9, 9)))
    with pytest.raises(DatasetError, match=r"7 of 8 listed images are missing: gone0.png.*and 2 more"):
        check_images(records, tmp_path / "images")


def test_write_then_read_round_trip(tmp_path):
    records = [SliceRecord("NCP_1_2_0003.png", 2, (1, 2, 30, 40)),
               SliceRecord("CP_5_6_0001.png", 1, (0, 0, 511, 511))]
    write_split(tmp_path / "s.txt", records)
    assert read_split(tmp_path / "s.txt") == records
    assert parse_line("x.png 0 0 0 5 5").class_name == "Normal"


def test_layout_helpers_name_the_split_files_and_images(tmp_path):
    from covidct.covidx import covidx_paths, split_of, split_path

    assert split_path(tmp_path, "val") == tmp_path / "val_COVIDx_CT-2A.txt"
    assert split_of(tmp_path / "test_COVIDx_CT-2A.txt") == "test"
    assert split_of("labels.csv") is None
    assert covidx_paths(tmp_path, "test") == (tmp_path / "test_COVIDx_CT-2A.txt", tmp_path / "images")
    split = tmp_path / "sub" / "mine.txt"
    assert covidx_paths(split, "test") == (split, tmp_path / "sub" / "images")
