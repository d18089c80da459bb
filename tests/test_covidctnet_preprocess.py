"""CovidCTNet pre-processing: range, geometry, the fast path against the method's route,
orientation, 8-bit pictures, and scans the method must refuse."""
from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import ScanError
from covidct.scan import Scan
from covidct.covidctnet.infection_maps import denoise_indices
from covidct.synth.phantom import chest_phantom
from covidct.covidctnet.preprocess import (WINDOWED_WARNING, check_scan, preprocess_reference,
                                        preprocess_volume, resize_depth)
from covidct.covidctnet.settings import VolumeSettings
from covidct.windowing import COVIDX_LUNG

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def phantom():
    scan, lesions = chest_phantom("COVID-19", n_slices=20, size=96, spacing=(2.5, 0.7, 0.7), seed=3)
    return scan, lesions


def test_output_range_dtype_and_shape_for_a_known_geometry(phantom):
    scan, _ = phantom
    volume = preprocess_volume(scan)
    # 20 slices of 2.5 mm -> round(50 mm / 1 mm) slices; every slice 128 x 128.
    assert volume.shape == (50, 128, 128)
    assert volume.dtype == np.float32
    assert volume.min() >= 0.0 and volume.max() <= 1.0
    assert volume.min() < 0.05 and volume.max() > 0.95  # air and bone reach the window ends
    thin = Scan(scan.voxels[:7], spacing=(0.6, 0.7, 0.7), units="HU")
    assert preprocess_volume(thin, VolumeSettings(slice_size=64)).shape == (4, 64, 64)


def test_window_maps_hu_linearly(phantom):
    flat = Scan(np.full((4, 16, 16), -300.0, np.float32), spacing=(1, 1, 1), units="HU")
    np.testing.assert_allclose(preprocess_volume(flat), (-300 + 1000) / 1400, atol=1e-6)
    hot = Scan(np.full((4, 16, 16), 900.0, np.float32), spacing=(1, 1, 1), units="HU")
    np.testing.assert_allclose(preprocess_volume(hot), 1.0)


def test_fast_path_matches_the_methods_route():
    # A chest-CT geometry: 320 mm field of view, so the method's 1-mm grid (256 x 1.25 = 320
    # pixels) lies between the scan's and the final 128 x 128, as it does for real series.
    scan, _ = chest_phantom("CAP", n_slices=12, size=256, spacing=(2.5, 1.25, 1.25), seed=4)
    fast = preprocess_volume(scan)
    reference = preprocess_reference(scan.voxels, scan.spacing)
    assert fast.shape == reference.shape == (30, 128, 128)
    difference = np.abs(fast - reference)
    assert difference.mean() < 0.005
    assert np.percentile(difference, 99) < 0.05
    assert np.corrcoef(fast.ravel(), reference.ravel())[0, 1] > 0.995


def test_small_field_of_view_goes_through_the_coarse_one_mm_grid(phantom):
    # 96 pixels of 0.7 mm: the method's 1-mm grid has 67 pixels, fewer than 128.
    scan, _ = phantom
    difference = np.abs(preprocess_volume(scan) - preprocess_reference(scan.voxels, scan.spacing))
    assert difference.mean() < 0.01


def test_axes_running_against_lps_are_flipped(phantom):
    scan, _ = phantom
    mirrored = Scan(scan.voxels[::-1, :, ::-1].copy(), spacing=scan.spacing, units="HU",
                    direction=np.diag([-1.0, 1.0, -1.0]))
    np.testing.assert_allclose(preprocess_volume(mirrored), preprocess_volume(scan), atol=1e-6)


def test_eight_bit_pictures_are_read_with_approximate_hu_and_a_warning(phantom):
    scan, _ = phantom
    pictures = Scan(COVIDX_LUNG.to_uint8(scan.voxels), spacing=scan.spacing, units="windowed")
    assert WINDOWED_WARNING in check_scan(pictures)
    from_pictures = preprocess_volume(pictures)
    from_hu = preprocess_volume(scan)
    lungs = from_hu < 0.3  # aerated lung and air: inside both windows
    assert np.abs(from_pictures - from_hu)[lungs].mean() < 0.01
    # COVIDx pictures saturate at 150 HU: bone no longer reaches the top of [-1000, 400].
    assert from_pictures.max() <= (150 + 1000) / 1400 + 0.01


@pytest.mark.parametrize("make, message", [
    (lambda s: Scan(s.voxels[:1], spacing=s.spacing, units="HU"), "at least 2 slices"),
    (lambda s: Scan(s.voxels, spacing=s.spacing, units="HU", orientation="coronal"), "axial"),
    (lambda s: Scan(s.voxels, spacing=s.spacing, units="HU", metadata={"modality": "MR"}),
     "modality is MR"),
])
def test_unfit_scans_are_refused_with_a_clear_error(phantom, make, message):
    bad = make(phantom[0])
    with pytest.raises(ScanError, match=message) as info:
        preprocess_volume(bad)
    assert "CovidCTNet" in str(info.value)


def test_resize_depth_keeps_the_plane_and_averages_along_z():
    ramp = np.broadcast_to(np.linspace(0, 1, 200, dtype=np.float32)[:, None, None], (200, 8, 8))
    out = resize_depth(ramp, 50)
    assert out.shape == (50, 8, 8)
    assert np.all(np.diff(out[:, 0, 0]) > 0)
    assert abs(out.mean() - ramp.mean()) < 0.01
    assert resize_depth(out, 50) is not None and resize_depth(out, 50).shape == (50, 8, 8)


def test_denoise_indices_cap_the_slices_evenly():
    np.testing.assert_array_equal(denoise_indices(30, 100), np.arange(30))
    np.testing.assert_array_equal(denoise_indices(30, 0), np.arange(30))
    chosen = denoise_indices(750, 100)
    assert len(chosen) == 100 and chosen[0] == 0 and chosen[-1] == 749
    assert np.ptp(np.diff(chosen)) <= 1  # evenly spaced
