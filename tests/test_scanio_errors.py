"""Bad input gives a ScanError naming the file, and `covidct info` turns it into one line on
stderr with exit code 2. Every scan here is a tiny SYNTHETIC volume."""
from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from covidct.errors import ScanError
from covidct.scanio import archive, load_scan, write_dicom_series


def _series(folder: Path, make_hu_volume, n: int = 4, **kwargs) -> list[Path]:
    return write_dicom_series(make_hu_volume((n, 16, 16)), folder, **kwargs)


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


# Each case builds a bad input under tmp_path and returns (path to load, file the message names,
# words the message says).

def _empty_folder(tmp, mk):
    (tmp / "empty").mkdir()
    return tmp / "empty", tmp / "empty", "empty folder"


def _text_files(tmp, mk):
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("not a scan")
    (tmp / "notes" / "data.csv").write_text("a,b\n")
    return tmp / "notes", tmp / "notes", "none of the 2 files"


def _truncated_dicom(tmp, mk):
    files = _series(tmp / "s", mk)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 200])
    return tmp / "s", tmp / "s", "file 3 of 4 in name order: truncated"


def _no_pixel_data(tmp, mk):
    files = _series(tmp / "s", mk)
    _edit(files[1], lambda ds: delattr(ds, "PixelData"))
    return tmp / "s", tmp / "s", "file 2 of 4 in name order: DICOM file has no pixel data"


def _mr_series(tmp, mk):
    files = _series(tmp / "s", mk, extra={"Modality": "MR"})
    return tmp / "s", tmp / "s", "file 1 of 4 in name order: modality is MR, not CT"


def _mixed_picture_sizes(tmp, mk):
    folder = tmp / "pics"
    folder.mkdir()
    for n, size in ((1, 32), (2, 32), (3, 24), (4, 32)):
        Image.fromarray(np.zeros((size, size), np.uint8)).save(folder / f"slice{n}.png")
    return folder, folder, "file 3 of 4 in name order: picture size 24x24 differs from the 32x32"


def _mixed_dicom_sizes(tmp, mk):
    files = _series(tmp / "s", mk)
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    write_dicom_series(mk((1, 20, 16)), tmp / "odd", series_uid=series_uid)
    odd = (tmp / "odd" / "slice-0001.dcm").rename(tmp / "s" / "odd.dcm")
    _edit(odd, lambda ds: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid()))
    return tmp / "s", tmp / "s", "file 1 of 5 in name order: slice size 20x16 differs"


def _zip_escaping(tmp, mk):
    path = tmp / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("series/slice-0001.dcm", b"x")
        zf.writestr("../evil", b"owned")
    return path, path, "outside the folder"


def _missing_path(tmp, mk):
    return tmp / "nope" / "scan.nii.gz", tmp / "nope" / "scan.nii.gz", "no such file"


CASES = {f.__name__.lstrip("_"): f for f in (
    _empty_folder, _text_files, _truncated_dicom, _no_pixel_data, _mr_series,
    _mixed_picture_sizes, _mixed_dicom_sizes, _zip_escaping, _missing_path)}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_a_scan_error_naming_the_file(tmp_path, make_hu_volume, case):
    path, named, words = CASES[case](tmp_path, make_hu_volume)
    with pytest.raises(ScanError) as info:
        load_scan(path)
    assert info.value.path == str(named)
    assert words in str(info.value) and str(named) in str(info.value)


@pytest.mark.parametrize("case", [
    "empty_folder", "text_files", "truncated_dicom", "no_pixel_data", "mr_series",
    "mixed_picture_sizes", "zip_escaping", "missing_path"])
def test_cli_info_reports_bad_input_in_one_line(tmp_path, make_hu_volume, run_cli, case):
    path, named, words = CASES[case](tmp_path, make_hu_volume)
    rc, out, err = run_cli("info", path)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("covidct: error: ")
    assert str(named) in err and words in err and "Traceback" not in err
    assert out == ""


def test_cli_info_describes_a_good_scan(tmp_path, make_hu_volume, run_cli):
    write_dicom_series(make_hu_volume((5, 48, 48), (2.5, 0.7, 0.7)), tmp_path / "s",
                       patient_name="Doe^Jane", patient_id="PID-555")
    rc, out, err = run_cli("info", tmp_path / "s")
    assert rc == 0, err
    assert "5x48x48 HU axial scan, spacing 2.50x0.70x0.70 mm [synthetic]" in out
    assert "body box:" in out and "series_uid_hash:" in out
    assert "Doe" not in out + err and "PID-555" not in out + err
    rc, out, _ = run_cli("info", tmp_path / "s", "--json")
    import json
    facts = json.loads(out)
    assert facts["shape"] == [5, 48, 48] and facts["metadata"]["synthetic"] is True
    x0, y0, x1, y1 = facts["body_box_middle_slice"]["xmin_ymin_xmax_ymax"]
    assert 0 < x0 < x1 < 47 and 0 < y0 < y1 < 47


# More bad input, library level ---------------------------------------------------------

def test_duplicated_slice_positions(tmp_path, make_hu_volume):
    files = _series(tmp_path / "s", make_hu_volume)
    position = pydicom.dcmread(files[1]).ImagePositionPatient
    _edit(files[2], lambda ds: setattr(ds, "ImagePositionPatient", position))
    with pytest.raises(ScanError, match="duplicated slice position .*: file 2 of 4 in name "
                                        "order and file 3 of 4"):
        load_scan(tmp_path / "s")


def test_same_instance_twice_is_dropped_not_an_error(tmp_path, make_hu_volume):
    files = _series(tmp_path / "s", make_hu_volume)
    (tmp_path / "s" / "copy.dcm").write_bytes(files[1].read_bytes())
    scan = load_scan(tmp_path / "s")
    assert scan.n_slices == 4
    assert "file 3 of 5 in name order is a copy of file 1 of 5 in name order; ignored" in \
        scan.metadata["warnings"]


def test_unsupported_and_unreadable_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ScanError, match="unsupported file type"):
        load_scan(tmp_path / "a.txt")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ScanError, match="not a readable NIfTI"):
        load_scan(tmp_path / "bad.nii.gz")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ScanError, match="not a readable picture"):
        load_scan(tmp_path / "bad.png")
    (tmp_path / "bad.zip").write_bytes(b"PK nonsense")
    with pytest.raises(ScanError, match="not a readable zip"):
        load_scan(tmp_path / "bad.zip")


def test_colour_and_16_bit_pictures_are_refused(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ScanError, match="colour picture"):
        load_scan(tmp_path / "colour.png")
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(ScanError, match="expects 8-bit windowed slices"):
        load_scan(tmp_path / "wide.png")


def test_nifti_time_series_is_refused(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(ScanError, match="expected a 3D volume"):
        load_scan(tmp_path / "4d.nii")


@pytest.mark.parametrize("name", ["/etc/evil", "a/../../evil", "..\\evil", "C:/evil"])
def test_zip_entries_outside_the_folder_are_refused(tmp_path, name):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(name, b"owned")
    with pytest.raises(ScanError, match="outside the folder"):
        load_scan(path)


def test_zip_symlinks_and_bombs_are_refused(tmp_path, monkeypatch):
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("series/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ScanError, match="symbolic link"):
        load_scan(link)

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", bytes(2_000_000))
    with pytest.raises(ScanError, match="more than the"):
        archive.extract_zip(bomb, tmp_path / "out", max_bytes=1_000_000)
    monkeypatch.setattr(archive, "_RATIO_FLOOR", 100_000)
    with pytest.raises(ScanError, match="zip bomb"):
        load_scan(bomb)


def test_errors_inside_a_zip_name_the_entry_not_the_temporary_copy(tmp_path, make_hu_volume):
    files = _series(tmp_path / "s", make_hu_volume)
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-50])
    path = tmp_path / "scan.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in files:
            zf.write(f, f"CT/{f.name}")
    with pytest.raises(ScanError) as info:
        load_scan(path)
    assert info.value.path == str(path)  # the entry by position: its name may identify
    assert "file 2 of 4 in name order: truncated" in info.value.message
