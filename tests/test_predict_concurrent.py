"""Both methods predicting at the same time (covidct.predict with models that
covidct.models.load_models loaded ``concurrent``): the same calls and numbers as one after the
other, each method on its share of the cores, the lung mask computed once. Tiny random models.

"The same numbers": within 1e-6. ONNX Runtime on one thread may round a float32 sum in
another order than on two: the tiny CovidCTNet's probabilities move by 6e-8 (the full-size
networks gave identical outputs on 1 and 2 threads), far inside the 1e-4 bound ONNX Runtime
keeps against PyTorch (tests/test_export.py)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import save_tiny_bit_model, save_tiny_covidctnet_model  # noqa: E402
from covidct import lungs  # noqa: E402
from covidct.models import load_models  # noqa: E402
from covidct.predict import predict  # noqa: E402

pytestmark = pytest.mark.xdist_group("export")

#: Concurrent against sequential predictions (see the module doc).
SAME = 1e-6


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("COVIDCT_CACHE", str(tmp_path_factory.mktemp("cache")))
    folder = tmp_path_factory.mktemp("models")
    yield [save_tiny_bit_model(folder / "bit.pt", seed=0, resize=72, crop=64),
           save_tiny_covidctnet_model(folder / "covidctnet.pt")]
    mp.undo()


def _threads(model) -> set[int]:
    sessions = [getattr(net, "session", None) for net in
                (getattr(model, "net", None), getattr(model, "classifier", None),
                 getattr(model, "denoiser", None))]
    return {s.get_session_options().intra_op_num_threads for s in sessions if s is not None}


def test_concurrent_predictions_equal_sequential_ones(model_files, make_hu_volume, monkeypatch):
    scan = make_hu_volume(shape=(24, 64, 64), spacing=(2.5, 1.2, 1.2))
    sequential = load_models((), model_files, runtime="onnx", threads=2)
    concurrent = load_models((), model_files, runtime="onnx", threads=2, concurrent=True)
    assert not sequential.concurrent and concurrent.concurrent
    assert [_threads(m) for m in sequential] == [{2}, {2}]
    assert [_threads(m) for m in concurrent] == [{1}, {1}]  # a core each

    ran_in, masks = {}, []
    real_mask = lungs.lung_mask
    monkeypatch.setattr(lungs, "lung_mask", lambda *a: masks.append(1) or real_mask(*a))
    for model in concurrent:
        original = model.predict

        def spy(s, original=original, method=model.method):
            ran_in[method] = threading.current_thread().name
            return original(s)
        monkeypatch.setattr(model, "predict", spy)

    first = predict(scan, sequential)
    masks.clear()
    lungs.use_backend("hu")  # forget the mask the sequential run made
    again = predict(scan, concurrent)
    assert len(masks) == 1  # both methods asked; one mask
    assert all(name.startswith("covidct-model") for name in ran_in.values()) and len(ran_in) == 2
    assert [p.method for p in again] == [p.method for p in first] == ["bit", "covidctnet"]
    for a, b in zip(first, again):
        assert a.label == b.label and a.lungs == b.lungs
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=SAME)
    np.testing.assert_allclose(first[0].slice_probabilities, again[0].slice_probabilities,
                               rtol=0, atol=SAME)
    for name, array in first[1].maps.items():
        np.testing.assert_allclose(array, again[1].maps[name], rtol=0, atol=SAME)


def test_torch_models_stay_sequential(model_files):
    assert not load_models((), model_files, runtime="torch", concurrent=True).concurrent


def test_predict_command_gives_the_sequential_numbers(model_files, make_hu_volume, run_cli,
                                                      tmp_path):
    from covidct.scanio import save_scan

    scan = make_hu_volume(shape=(24, 64, 64), spacing=(2.5, 1.2, 1.2))
    path = save_scan(scan, tmp_path / "scan.nii.gz")
    rc, out, err = run_cli("predict", path, "--model", model_files[0], "--model", model_files[1],
                           "--out", tmp_path / "out",
                           extra_env={"COVIDCT_CACHE": str(tmp_path / "cache")})
    assert rc == 0, err
    assert "bit: runtime onnx" in err and "covidctnet: runtime onnx" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reference = predict(path, load_models((), model_files, runtime="onnx"))
    for p in reference:
        assert summary["results"][p.method]["label"] == p.label
        got = summary["results"][p.method]["probabilities"]
        assert list(got.values()) == pytest.approx(list(p.probabilities), abs=SAME)
