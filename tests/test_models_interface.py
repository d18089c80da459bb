"""Both methods implement covidct.models.Model the same way, and give results in the scan's
geometry, so callers never ask which method they hold."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import build_hu_volume, save_tiny_bit_model, save_tiny_covidctnet_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from covidct.models import load_model

    folder = tmp_path_factory.mktemp("models")
    return [load_model(save_tiny_bit_model(folder / "bit.pt", seed=3, resize=48, crop=40)),
            load_model(save_tiny_covidctnet_model(folder / "covidctnet.pt"))]


def _protocol_members() -> set[str]:
    from covidct.models import Model

    own = {n for n in vars(Model) if not n.startswith("_")}
    return own | set(Model.__annotations__)


def test_both_models_have_every_member_of_the_protocol(models):
    members = _protocol_members()
    assert {"describe", "predict", "score", "networks", "slice_scores", "viewer_arrays"} <= members
    for model in models:
        missing = sorted(m for m in members if not hasattr(model, m))
        assert not missing, f"{model.method} lacks {missing}"
        assert model.runtime == "torch" and model.overlay in ("gradcam", "infection")


def test_describe_has_one_shape_for_both_methods(models):
    for model in models:
        described = model.describe()
        assert described["method"] == model.method
        assert described["file"] == model.file and len(described["file"]["sha256"]) == 16
        assert described["file"]["name"] == f"{model.method}.pt"
        assert described["covidct_version"] and "version" not in described
        assert described["class_names"] == list(model.class_names)


def test_results_come_back_per_scan_slice(models):
    # A scan whose direction flips every axis: the map must still land on the right slices.
    from covidct.covidctnet.mapback import map_slice_of

    scan = build_hu_volume((24, 64, 64), spacing=(2.5, 1.2, 1.2), seed=5)
    scan.direction = -np.eye(3)
    bit, net = models
    for model in models:
        prediction = model.predict(scan)
        scores = model.slice_scores(prediction)
        assert len(scores) == scan.n_slices
        assert all(s is None or 0.0 <= s <= 1.0 for s in scores)
    scored = net.predict(scan)
    on_scan = net.viewer_arrays(scored)["infection"]
    assert on_scan.shape == (scan.n_slices, 40, 40)
    # z runs against LPS here: the scan's first slice lies under the map's last slices,
    # and each map slice is turned in plane the same way.
    infection = scored.maps["infection"]
    depth = scored.scan["preprocessed_shape"][0]
    under = [map_slice_of(k, scan.n_slices, scan.direction, depth, len(infection)) for k in (0, 23)]
    assert under[0] > under[1] and under[0] >= len(infection) - 2 and under[1] <= 1
    np.testing.assert_array_equal(on_scan[0], infection[under[0]][::-1, ::-1])
    assert bit.viewer_arrays(bit.predict(scan)) == {}
    heat = bit.slice_heat(scan.voxels[12], True, class_index=2)
    assert heat.shape == (64, 64) and 0.0 <= heat.min() and heat.max() <= 1.0


def test_scan_summary_is_one_function_without_phi(models):
    scan = build_hu_volume((24, 64, 64), spacing=(2.5, 1.2, 1.2), seed=6)
    scan.phi = {"PatientName": "DOE^JANE"}
    for model in models:
        summary = model.predict(scan).scan
        assert {"summary", "shape", "spacing_mm", "units", "orientation", "synthetic",
                "warnings"} <= set(summary)
        assert "DOE" not in repr(summary)
