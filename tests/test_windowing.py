"""The two windows and the automatic body crop, on real slices (bounds checked by eye on
overlays of the mask and box) and on a tiny SYNTHETIC HU phantom."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidct.errors import ScanError
from covidct.windowing import COVIDCTNET, COVIDX_LUNG, body_box, body_mask, get_window


def test_covidx_lung_window_maps_center_600_width_1500_to_8_bits():
    assert (COVIDX_LUNG.center, COVIDX_LUNG.width) == (-600, 1500)
    hu = np.array([-2000, -1350, -600, 150, 3000], np.float32)
    assert COVIDX_LUNG.to_uint8(hu).tolist() == [0, 0, 128, 255, 255]
    back = COVIDX_LUNG.from_uint8(COVIDX_LUNG.to_uint8(np.linspace(-1350, 150, 101)))
    assert np.abs(back - np.linspace(-1350, 150, 101)).max() <= 1500 / 255 / 2 + 1e-3


def test_covidctnet_range_maps_minus_1000_400_to_unit_interval():
    out = COVIDCTNET.to_unit(np.array([-1200, -1000, -300, 400, 900]))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    assert out.dtype == np.float32


def test_unknown_window_name_is_a_clear_error():
    assert get_window("covidx-lung") is COVIDX_LUNG
    with pytest.raises(ScanError, match="unknown window 'bone'"):
        get_window("bone")


def _outside(box, x, y) -> bool:
    x0, y0, x1, y1 = box
    return not (x0 <= x <= x1 and y0 <= y <= y1)


def test_body_box_on_the_real_covid_slice_holds_the_body_not_the_table(shared_dir):
    pixels = np.asarray(Image.open(shared_dir / "data" / "real-ct-examples" / "ex-covid-ct.png"))
    box = body_box(pixels)
    x0, y0, x1, y1 = box
    # Body edges read off the image: skin at x=36 and x=424 on row 250, y=94 (front) and
    # y=415 (back) on column 256; the table's top line runs at y=432-435 under the patient.
    assert 25 <= x0 <= 36 and 85 <= y0 <= 94
    assert 424 <= x1 <= 436 and 415 <= y1 < 430
    mask = body_mask(pixels)
    assert mask[250, 40] and mask[250, 420] and mask[100, 256] and mask[410, 256]
    assert mask[250, 150]  # the lung is inside the body: holes are filled
    for x, y in ((256, 433), (20, 384), (20, 415), (480, 373)):  # table and its curved edges
        assert not mask[y, x]
    assert _outside(box, 256, 433)
    assert not mask[60, 256]  # blanket folds above the chest


def test_body_box_on_the_real_jpeg_series_middle_slice(shared_dir):
    folder = shared_dir / "data" / "real-ct-examples" / "volume_example"
    pixels = np.asarray(Image.open(folder / "IMG-0001-00032.jpg"))[..., 0]
    x0, y0, x1, y1 = body_box(pixels)
    # Skin at x=52 and x=466 on row 250, breasts' tops near y=87, back at y=422 on column
    # 256; the table's lines lie at y=448-466.
    assert 40 <= x0 <= 52 and 80 <= y0 <= 92
    assert 466 <= x1 <= 480 and 422 <= y1 < 440
    mask = body_mask(pixels)
    for x, y in ((150, 450), (360, 448), (256, 458)):
        assert not mask[y, x]


def test_body_box_on_a_synthetic_hu_slice(make_hu_volume):
    scan = make_hu_volume((1, 128, 128), (1.0, 1.0, 1.0), seed=0)
    hu = scan.voxels[0]
    table_rows = np.flatnonzero((hu > 200).mean(axis=1) > 0.9)
    body_rows = np.flatnonzero((hu > -500).any(axis=1) & ((hu > 200).mean(axis=1) < 0.9))
    body_cols = np.flatnonzero((hu[: table_rows[0]] > -500).any(axis=0))
    x0, y0, x1, y1 = body_box(hu, units="HU")
    assert y0 <= body_rows[0] and y1 >= body_rows[-1] and y1 < table_rows[0]
    assert x0 <= body_cols[0] and x1 >= body_cols[-1]
    windowed = COVIDX_LUNG.to_uint8(hu)
    assert body_box(windowed) == pytest.approx((x0, y0, x1, y1), abs=2)


def test_body_box_falls_back_to_the_whole_slice_and_needs_2d():
    assert body_box(np.zeros((20, 30), np.uint8)) == (0, 0, 29, 19)
    with pytest.raises(ScanError, match="2D slice"):
        body_mask(np.zeros((2, 20, 30), np.uint8))
