"""Scan I/O: round trips keep values and geometry; DICOM ordering, series choice, orientation;
the real example slice and JPEG series load. All volumes here are tiny and SYNTHETIC unless
read from the shared real-data folder."""
from __future__ import annotations

import logging
import os
import random
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from covidct.constants import SYNTHETIC_TAG
from covidct.errors import ScanError
from covidct.scan import Scan
from covidct.scanio import load_scan, save_scan, write_dicom_series, write_nifti, write_png_slices
from covidct.windowing import COVIDCTNET, COVIDX_LUNG

PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-98765", "PatientBirthDate": "19610203",
       "StudyDate": "20200314"}


def assert_same_geometry(a: Scan, b: Scan) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


# DICOM ---------------------------------------------------------------------------------

def test_dicom_round_trip_keeps_values_and_geometry(tmp_path, make_hu_volume):
    scan = make_hu_volume((12, 64, 48), (2.5, 0.7, 0.8), seed=1)
    files = write_dicom_series(scan, tmp_path / "dicom")
    assert [f.name for f in files[:2]] == ["slice-0001.dcm", "slice-0002.dcm"]
    assert len(files) == 12 and not list(tmp_path.glob(".*"))  # no leftover temp folder

    loaded = load_scan(tmp_path / "dicom")
    assert loaded.units == "HU" and loaded.voxels.dtype == np.float32
    assert loaded.shape == (12, 64, 48)
    np.testing.assert_array_equal(loaded.voxels, np.rint(scan.voxels))
    assert_same_geometry(loaded, scan)
    assert loaded.orientation == "axial" and loaded.geometry_known
    meta = loaded.metadata
    assert meta["modality"] == "CT" and meta["source_format"] == "dicom"
    assert meta["n_slices"] == 12 and meta["synthetic"] is True
    assert len(meta["series_uid_hash"]) == 12 and meta["warnings"] == []


def test_written_dicom_is_valid_for_pydicom_and_simpleitk(tmp_path, make_hu_volume):
    scan = make_hu_volume((6, 32, 40), (2.0, 0.6, 0.6), seed=2)
    files = write_dicom_series(scan, tmp_path / "s", extra={"ImageComments": "hello"})
    ds = pydicom.dcmread(files[3])
    assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.pixel_array.dtype == np.int16
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
    assert [float(v) for v in ds.PixelSpacing] == [0.6, 0.6]
    assert float(ds.SliceThickness) == 2.0 and ds.InstanceNumber == 4
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                               np.add(scan.origin, (0, 0, 3 * 2.0)))
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert ds.ImageComments == "hello" and SYNTHETIC_TAG in ds.SeriesDescription
    assert str(ds.PatientName) == "ANONYMOUS"
    np.testing.assert_array_equal(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds),
                                  np.rint(scan.voxels[3]))

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    image = reader.Execute()
    np.testing.assert_allclose(image.GetSpacing(), (0.6, 0.6, 2.0), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), scan.origin, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), np.rint(scan.voxels))


def test_dicom_uids_follow_the_given_series_uid(tmp_path, make_hu_volume):
    scan = make_hu_volume((3, 16, 16))
    uid = pydicom.uid.generate_uid(entropy_srcs=["covidct-test"])
    first, again = ([pydicom.dcmread(f).SOPInstanceUID
                     for f in write_dicom_series(scan, tmp_path / name, series_uid=uid)]
                    for name in ("a", "b"))
    assert first == again and len(set(first)) == 3
    assert pydicom.dcmread(tmp_path / "a" / "slice-0001.dcm").SeriesInstanceUID == uid


@pytest.mark.parametrize("extra", [{}, {"InstitutionName": "Hôpital Å", "StationName": "CT1"},
                                   {"SmallestImagePixelValue": 0}])   # "US or SS": pydicom's path
def test_dicom_series_encoder_writes_what_pydicom_writes(tmp_path, make_hu_volume, monkeypatch,
                                                         extra):
    """Shared elements are encoded once per series; every file must still be byte for byte
    what pydicom's save_as writes (non-ASCII text under ISO_IR 100 included)."""
    from covidct.scanio import dicom_write

    scan = make_hu_volume(shape=(4, 16, 16))
    kwargs = dict(patient_id="P1", patient_name="Müller^Zoë", series_uid="1.2.826.0.1.3680043.2.1",
                  extra=extra)
    fast = write_dicom_series(scan, tmp_path / "fast", **kwargs)
    monkeypatch.setattr(dicom_write._SeriesEncoder, "can_encode", staticmethod(lambda base: False))
    plain = write_dicom_series(scan, tmp_path / "plain", **kwargs)
    assert [p.read_bytes() for p in fast] == [p.read_bytes() for p in plain]
    assert pydicom.dcmread(fast[1]).PatientName == "Müller^Zoë"


def test_dicom_slices_sorted_by_position_not_file_name(tmp_path, make_hu_volume):
    scan = make_hu_volume((10, 32, 32), (3.0, 0.8, 0.8), seed=3)
    files = write_dicom_series(scan, tmp_path / "s")
    # Reverse the numbering: slice-0001 becomes the top slice's name, and so on.
    for f in files:
        f.rename(f.with_name(f.name + ".tmp"))
    for k, f in enumerate(files):
        f.with_name(f.name + ".tmp").rename(files[-1 - k])
    loaded = load_scan(tmp_path / "s")
    np.testing.assert_array_equal(loaded.voxels, np.rint(scan.voxels))
    assert_same_geometry(loaded, scan)

    # Random names too: nothing about the names matters.
    names = [f"IM{n}" for n in random.Random(0).sample(range(1000), len(files))]
    for f, name in zip(sorted((tmp_path / "s").iterdir()), names):
        f.rename(f.with_name(name))
    np.testing.assert_array_equal(load_scan(tmp_path / "s").voxels, np.rint(scan.voxels))


def test_bit_stored_head_first_sort_along_the_normal(tmp_path, make_hu_volume):
    """A series whose z axis points down (direction column -S) is still ordered along its normal."""
    scan = make_hu_volume((6, 24, 24), (2.0, 1.0, 1.0), seed=4)
    flipped = scan.with_voxels(scan.voxels, direction=np.diag([1.0, 1.0, -1.0]))
    write_dicom_series(flipped, tmp_path / "s")
    loaded = load_scan(tmp_path / "s")
    # Row x column = +S for this IOP, so slices are ordered bottom to top: reversed.
    np.testing.assert_array_equal(loaded.voxels, np.rint(scan.voxels[::-1]))
    assert loaded.direction[2, 2] == pytest.approx(1.0)
    assert loaded.origin[2] == pytest.approx(scan.origin[2] - 5 * 2.0)


def test_anisotropic_spacing_comes_from_positions_not_slice_thickness(tmp_path, make_hu_volume):
    scan = make_hu_volume((8, 40, 40), (2.5, 0.7, 0.7), seed=5)
    write_dicom_series(scan, tmp_path / "s", extra={"SliceThickness": "5.0"})
    loaded = load_scan(tmp_path / "s")
    assert loaded.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert loaded.metadata["slice_thickness"] == 5.0


def test_rescale_is_applied_per_slice(tmp_path, make_hu_volume):
    scan = make_hu_volume((4, 16, 16), seed=6)
    files = write_dicom_series(scan, tmp_path / "s")
    ds = pydicom.dcmread(files[2])
    hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-2000"
    ds.PixelData = np.rint((hu + 2000) / 2).astype("<i2").tobytes()
    ds.save_as(files[2])
    loaded = load_scan(tmp_path / "s")
    np.testing.assert_array_equal(loaded.voxels[2], np.rint((hu + 2000) / 2) * 2 - 2000)
    np.testing.assert_array_equal(loaded.voxels[1], np.rint(scan.voxels[1]))


@pytest.mark.parametrize("storage", ["rle-compressed", "12-bit-unsigned", "12-bit-signed"])
def test_other_pixel_encodings_read_the_same_hu(tmp_path, make_hu_volume, storage):
    """RLE goes through SimpleITK; with 12 stored bits, junk in the 4 high bits is ignored."""
    scan = make_hu_volume((3, 16, 16), seed=7)
    for f in write_dicom_series(scan, tmp_path / "s"):
        ds = pydicom.dcmread(f)
        if storage == "rle-compressed":
            ds.compress(pydicom.uid.RLELossless)
        elif storage == "12-bit-unsigned":
            stored = ds.pixel_array.astype(np.int32).clip(0, 4095).astype(np.uint16)
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
            ds.PixelData = (stored | 0xF000).astype("<u2").tobytes()
        else:  # two's complement in 12 bits, intercept 0
            hu = (ds.pixel_array.astype(np.int32) - 1024).clip(-2048, 2047)
            ds.RescaleIntercept, ds.BitsStored, ds.HighBit = "0", 12, 11
            ds.PixelData = ((hu & 0x0FFF) | 0x5000).astype("<u2").tobytes()
        ds.save_as(f)
    expected = np.rint(scan.voxels)
    if storage == "12-bit-unsigned":
        expected = expected.clip(-1024, 4095 - 1024)
    elif storage == "12-bit-signed":
        expected = expected.clip(-2048, 2047)
    np.testing.assert_array_equal(load_scan(tmp_path / "s").voxels, expected)


def test_single_dicom_file_and_zip_of_series(tmp_path, make_hu_volume):
    scan = make_hu_volume((5, 24, 24), (1.5, 0.9, 0.9), seed=8)
    files = write_dicom_series(scan, tmp_path / "series")
    one = load_scan(files[2])
    assert one.shape == (1, 24, 24) and one.spacing == pytest.approx((1.5, 0.9, 0.9))
    np.testing.assert_array_equal(one.voxels[0], np.rint(scan.voxels[2]))

    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"export/CT/{f.name}")
    zipped = load_scan(archive)
    assert zipped.source == str(archive)
    np.testing.assert_array_equal(zipped.voxels, np.rint(scan.voxels))
    assert_same_geometry(zipped, scan)


def test_folder_with_two_series_picks_the_larger_and_series_uid_selects(tmp_path, make_hu_volume,
                                                                         caplog):
    big, small = make_hu_volume((7, 16, 16), seed=9), make_hu_volume((3, 16, 16), seed=10)
    small_uid = pydicom.uid.generate_uid(entropy_srcs=["small"])
    write_dicom_series(big, tmp_path / "mixed" / "a")
    write_dicom_series(small, tmp_path / "mixed" / "b", series_uid=small_uid)
    with caplog.at_level(logging.WARNING, logger="covidct"):
        chosen = load_scan(tmp_path / "mixed")
    assert chosen.n_slices == 7
    assert any("2 series" in w for w in chosen.metadata["warnings"])
    assert "2 series found" in caplog.text
    by_uid = load_scan(tmp_path / "mixed", series_uid=small_uid)
    np.testing.assert_array_equal(by_uid.voxels, np.rint(small.voxels))
    by_hash = load_scan(tmp_path / "mixed", series_uid=by_uid.metadata["series_uid_hash"])
    assert by_hash.n_slices == 3
    with pytest.raises(ScanError, match="no series"):
        load_scan(tmp_path / "mixed", series_uid="1.2.3.4")


def test_ct_series_preferred_over_a_larger_mr_series(tmp_path, make_hu_volume):
    write_dicom_series(make_hu_volume((3, 16, 16)), tmp_path / "mixed" / "ct")
    write_dicom_series(make_hu_volume((6, 16, 16)), tmp_path / "mixed" / "mr",
                       extra={"Modality": "MR"})
    assert load_scan(tmp_path / "mixed").n_slices == 3


@pytest.mark.parametrize("plane, direction", [
    ("coronal", [[1, 0, 0], [0, 0, 1], [0, -1, 0]]),   # columns: rows along L, down = inferior
    ("sagittal", [[0, 0, -1], [1, 0, 0], [0, -1, 0]]),  # rows along P, down = inferior
])
def test_single_reformatted_image_keeps_its_orientation(tmp_path, make_hu_volume, plane, direction):
    base = make_hu_volume((1, 20, 30), (1.0, 0.8, 0.8))
    scan = base.with_voxels(base.voxels, direction=np.array(direction, float))
    files = write_dicom_series(scan, tmp_path / plane)
    loaded = load_scan(files[0])
    assert loaded.orientation == plane and loaded.metadata["orientation"] == plane
    np.testing.assert_allclose(loaded.direction, scan.direction, atol=1e-6)
    with pytest.raises(ScanError, match=f"needs axial slices, but this scan is {plane}"):
        loaded.require_axial("the slice classifier")


def test_missing_modality_and_optional_tags_only_warn(tmp_path, make_hu_volume, caplog):
    scan = make_hu_volume((3, 16, 16))
    for f in write_dicom_series(scan, tmp_path / "s"):
        ds = pydicom.dcmread(f)
        for keyword in ("Modality", "Manufacturer", "SeriesDescription", "SliceThickness"):
            delattr(ds, keyword)
        ds.save_as(f)
    with caplog.at_level(logging.WARNING, logger="covidct"):
        loaded = load_scan(tmp_path / "s")
    assert loaded.n_slices == 3 and loaded.metadata["modality"] == "CT"
    assert any("Modality" in w for w in loaded.metadata["warnings"])
    assert "Modality tag missing" in caplog.text
    assert loaded.metadata["manufacturer"] is None and loaded.metadata["slice_thickness"] is None


def test_patient_identity_only_with_keep_phi(tmp_path, make_hu_volume, caplog):
    scan = make_hu_volume((2, 16, 16))
    write_dicom_series(scan, tmp_path / "s", patient_name=PHI["PatientName"],
                       patient_id=PHI["PatientID"],
                       extra={k: PHI[k] for k in ("PatientBirthDate", "StudyDate")})
    with caplog.at_level(logging.DEBUG):
        plain = load_scan(tmp_path / "s")
    text = repr(plain) + str(plain.metadata) + caplog.text
    for value in PHI.values():
        assert value not in text
    assert plain.phi == {}
    assert load_scan(tmp_path / "s", keep_phi=True).phi == PHI


def test_windowed_scan_cannot_become_ct_dicom(tmp_path):
    pictures = Scan(np.zeros((1, 8, 8), np.uint8), (1, 1, 1), "windowed", geometry_known=False)
    with pytest.raises(ScanError, match="only HU scans can be written as CT DICOM"):
        write_dicom_series(pictures, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# NIfTI ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, whole", [("v.nii.gz", False), ("v.nii", True)])
def test_nifti_round_trip(tmp_path, make_hu_volume, name, whole):
    scan = make_hu_volume((9, 30, 20), (2.5, 0.7, 0.6), seed=11)
    if whole:
        scan = scan.with_voxels(np.rint(scan.voxels))
    path = write_nifti(scan, tmp_path / name, description="test")
    assert nib.load(path).get_data_dtype() == (np.int16 if whole else np.float32)
    loaded = load_scan(path)
    np.testing.assert_array_equal(loaded.voxels, scan.voxels)
    assert loaded.spacing == (2.5, 0.7, 0.6)
    assert_same_geometry(loaded, scan)
    assert loaded.units == "HU" and loaded.metadata["synthetic"] is True
    assert loaded.metadata["hu_assumed"] is False  # covidct wrote the units


def test_nifti_stored_in_ras_is_reoriented_to_axial_lps(tmp_path, make_hu_volume):
    """A typical RAS+ NIfTI (as dcm2niix or nibabel write) gives the same LPS arrays as DICOM."""
    scan = make_hu_volume((5, 12, 10), (3.0, 0.5, 0.75), seed=12)
    lps_xyz = scan.voxels.transpose(2, 1, 0)
    ras_xyz = lps_xyz[::-1, ::-1, :]            # x toward R, y toward A
    nx, ny = lps_xyz.shape[:2]
    far_corner = np.array(scan.origin) + [0.75 * (nx - 1), 0.5 * (ny - 1), 0]
    affine = np.diag([0.75, 0.5, 3.0, 1.0])
    affine[:3, 3] = [-far_corner[0], -far_corner[1], far_corner[2]]  # LPS -> RAS
    nib.save(nib.Nifti1Image(ras_xyz, affine), tmp_path / "ras.nii.gz")
    loaded = load_scan(tmp_path / "ras.nii.gz")
    np.testing.assert_array_equal(loaded.voxels, scan.voxels)
    assert_same_geometry(loaded, scan)
    assert loaded.metadata["hu_assumed"] is True


def test_nifti_with_permuted_axes_is_made_axial(tmp_path, make_hu_volume):
    scan = make_hu_volume((6, 10, 8), (2.0, 1.0, 1.0), seed=13)
    # Stored (z, y, x) as NIfTI's first, second, third axes: axis 0 runs along S.
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = -1.0, -1.0, 2.0, 1.0
    nib.save(nib.Nifti1Image(scan.voxels, affine), tmp_path / "zyx.nii")
    loaded = load_scan(tmp_path / "zyx.nii")
    assert loaded.shape == (6, 10, 8) and loaded.orientation == "axial"
    np.testing.assert_array_equal(loaded.voxels, scan.voxels)
    np.testing.assert_allclose(loaded.direction, np.eye(3), atol=1e-6)


def test_windowed_scan_survives_nifti_as_windowed(tmp_path):
    pictures = Scan(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4), (1, 1, 1), "windowed")
    loaded = load_scan(write_nifti(pictures, tmp_path / "w.nii.gz"))
    assert loaded.units == "windowed" and loaded.voxels.dtype == np.uint8
    np.testing.assert_array_equal(loaded.voxels, pictures.voxels)


# Pictures ------------------------------------------------------------------------------

def test_png_round_trip_gives_the_windowed_uint8(tmp_path, make_hu_volume):
    scan = make_hu_volume((4, 32, 24), seed=14)
    paths = write_png_slices(scan, tmp_path / "png")
    assert [p.name for p in paths] == [f"slice-{k:04d}.png" for k in range(4)]
    loaded = load_scan(tmp_path / "png")
    assert loaded.units == "windowed" and not loaded.geometry_known
    assert loaded.voxels.dtype == np.uint8 and loaded.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(loaded.voxels, COVIDX_LUNG.to_uint8(scan.voxels))
    assert loaded.metadata["synthetic"] is True  # the PNG text chunk carries the tag

    other = write_png_slices(scan, tmp_path / "png", window=COVIDCTNET, prefix="p7", indices=[1, 3])
    assert [p.name for p in other] == ["p7-0001.png", "p7-0003.png"]
    np.testing.assert_array_equal(load_scan(other[1]).voxels[0],
                                  COVIDCTNET.to_uint8(scan.voxels[3]))
    again = write_png_slices(loaded, tmp_path / "again")  # windowed scans are written as they are
    np.testing.assert_array_equal(load_scan(tmp_path / "again").voxels, loaded.voxels)
    assert len(again) == 4


def test_picture_folder_in_natural_order_and_rgb_gray(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    gray = {n: np.full((6, 5), n, np.uint8) for n in (1, 2, 10)}
    Image.fromarray(np.stack([gray[10]] * 3, axis=-1)).save(folder / "img10.png")  # RGB, gray
    Image.fromarray(gray[2]).save(folder / "img2.jpg")
    Image.fromarray(gray[1]).save(folder / "img1.png")
    (folder / "notes.txt").write_text("ignored")
    loaded = load_scan(folder)
    # JPEG is lossy, but a flat gray stays flat.
    assert [int(np.median(s)) for s in loaded.voxels] == [1, 2, 10]


def test_multipage_tiff_is_a_stack(tmp_path):
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (5, 6, 7)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    loaded = load_scan(tmp_path / "stack.tif")
    assert loaded.shape == (3, 4, 4) and loaded.metadata["source_format"] == "tiff"
    assert loaded.voxels[:, 0, 0].tolist() == [5, 6, 7]


# save_scan -----------------------------------------------------------------------------

def test_save_scan_dispatches_on_the_path(tmp_path, make_hu_volume):
    scan = make_hu_volume((3, 16, 16))
    assert load_scan(save_scan(scan, tmp_path / "v.nii.gz")).metadata["source_format"] == "nifti"
    assert load_scan(save_scan(scan, tmp_path / "dicom")).metadata["source_format"] == "dicom"
    assert load_scan(save_scan(scan, tmp_path / "slices_png")).metadata["source_format"] == "png"
    windowed = load_scan(tmp_path / "slices_png")
    assert load_scan(save_scan(windowed, tmp_path / "folder")).metadata["source_format"] == "png"
    with pytest.raises(ScanError, match="cannot tell the format"):
        save_scan(scan, tmp_path / "v.jpg")


# Real data -----------------------------------------------------------------------------

def test_real_example_slice_loads(shared_dir):
    path = shared_dir / "data" / "real-ct-examples" / "ex-covid-ct.png"
    scan = load_scan(path)
    assert scan.shape == (1, 512, 512) and scan.units == "windowed"
    assert scan.voxels.dtype == np.uint8 and not scan.geometry_known
    assert scan.metadata["synthetic"] is False
    np.testing.assert_array_equal(scan.voxels[0], np.asarray(Image.open(path)))


def test_real_jpeg_series_loads_in_natural_order(shared_dir):
    folder = shared_dir / "data" / "real-ct-examples" / "volume_example"
    scan = load_scan(folder)
    assert scan.shape == (50, 512, 512) and scan.units == "windowed"
    names = sorted(os.listdir(folder), key=lambda n: int(n.rsplit("-", 1)[1].split(".")[0]))
    assert names[0] == "IMG-0001-00007.jpg" and names[-1] == "IMG-0001-00056.jpg"
    for k in (0, 17, 49):
        expected = np.asarray(Image.open(folder / names[k]))[..., 0]
        np.testing.assert_array_equal(scan.voxels[k], expected)
