"""ONNX export and the ONNX Runtime path of both methods: parity with PyTorch (tiny models)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import save_tiny_bit_model, save_tiny_covidctnet_model  # noqa: E402
from covidct import export  # noqa: E402
from covidct.cli import main as cli_main  # noqa: E402
from covidct.errors import ModelError  # noqa: E402
from covidct.models import load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.xdist_group("export")

#: The issue's bound on probabilities (ONNX Runtime vs PyTorch, float32).
PARITY = 1e-4


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("COVIDCT_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def bit_file(tmp_path_factory, onnx_cache):
    """A tiny BiT slice classifier with a random (non-zero) head, so outputs are not uniform."""
    return save_tiny_bit_model(tmp_path_factory.mktemp("bit") / "bit.pt", seed=0, resize=72, crop=64)


@pytest.fixture(scope="module")
def covidctnet_file(tmp_path_factory, onnx_cache):
    """A small CovidCTNet (as tests/test_covidctnet_pipeline.py sizes it), random weights."""
    return save_tiny_covidctnet_model(tmp_path_factory.mktemp("covidctnet") / "covidctnet.pt")


def _onnx_probs(path, x):
    return torch.softmax(export.OnnxNetwork(path, threads=1)(x), 1)


def test_bit_export_cli_and_parity(bit_file, tmp_path):
    out = tmp_path / "bit.onnx"
    assert cli_main(["export", str(bit_file), "--format", "onnx", "--out", str(out)]) == 0
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["covidct_method"] == "bit" and "NCP" in meta["covidct_class_names"]
    model = load_model(bit_file)
    x = torch.randn(5, 3, 64, 64)  # the batch axis is dynamic: 5 != the traced 1
    with torch.no_grad():
        reference = torch.softmax(model.net(x), 1)
    assert (_onnx_probs(out, x) - reference).abs().max().item() < PARITY
    assert reference.std(1).min() > 1e-3  # a real test: the head is not uniform


def test_onnx_calls_are_capped_to_max_batch_with_the_same_outputs(bit_file, tmp_path):
    """Prediction runs ONNX Runtime one item per call (memory: the runtime's arena keeps the
    largest batch it saw); the outputs are those of one whole-batch call."""
    path = export.export_model(load_model(bit_file), tmp_path / "bit.onnx")["classifier"]
    x = torch.randn(5, 3, 64, 64)
    capped = export.OnnxNetwork(path, threads=1)
    sizes = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def run(self, names, feeds):
            sizes.append(len(feeds["input"]))
            return self.inner.run(names, feeds)

    capped.session = Counting(capped.session)
    whole = export.OnnxNetwork(path, threads=1, max_batch=0)(x)
    out = capped(x)
    assert sizes == [export.MAX_BATCH] * (5 // export.MAX_BATCH) + (
        [5 % export.MAX_BATCH] if 5 % export.MAX_BATCH else [])
    assert out.shape == whole.shape == (5, 3)
    assert (torch.softmax(out, 1) - torch.softmax(whole, 1)).abs().max().item() < 1e-6


def test_weight_standardization_folding_is_exact(bit_file):
    model = load_model(bit_file)
    folded = export.fold_weight_standardization(model.net)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.net(x), rtol=1e-5, atol=1e-4)
    assert not any(type(m).__name__ == "StdConv2d" for m in folded.modules())


def test_bit_predict_on_onnx_runtime_matches_torch(bit_file, make_hu_volume):
    scan = make_hu_volume(shape=(10, 96, 96))
    torch_prediction = load_model(bit_file).predict(scan)
    onnx_model = load_model(bit_file, runtime="onnx", threads=1)
    assert isinstance(onnx_model.net, export.OnnxNetwork)
    onnx_prediction = onnx_model.predict(scan)
    assert np.abs(onnx_prediction.probabilities - torch_prediction.probabilities).max() < PARITY
    assert np.abs(onnx_prediction.slice_probabilities
                  - torch_prediction.slice_probabilities).max() < PARITY
    # The same through covidct.load_model, which reuses the cached export of the model file.
    import covidct

    again = covidct.load_model(bit_file, runtime="onnx").predict(scan)
    assert np.abs(again.probabilities - onnx_prediction.probabilities).max() < 1e-6
    cached = sorted(export.cache_root().glob("bit-*.onnx"))
    assert len(cached) == 1
    load_model(bit_file, runtime="onnx", threads=1)
    assert sorted(export.cache_root().glob("bit-*.onnx")) == cached


def test_a_changed_exporter_misses_the_cache(bit_file, make_hu_volume, monkeypatch):
    """The cached graph's name carries the exporter's version: a new export format or covidct
    version exports afresh instead of serving the graph the old code wrote."""
    import covidct

    scan = make_hu_volume(shape=(6, 64, 64))
    first = load_model(bit_file, runtime="onnx", threads=1)
    before = set(export.cache_root().glob("bit-*.onnx"))
    assert before and export.export_key() in "".join(p.name for p in before)
    for name, value in (("EXPORT_FORMAT", export.EXPORT_FORMAT + 1), ("__version__", "99.0")):
        key = export.export_key()
        monkeypatch.setattr(export if name == "EXPORT_FORMAT" else covidct, name, value)
        assert export.export_key() != key
        model = load_model(bit_file, runtime="onnx", threads=1)
        after = set(export.cache_root().glob("bit-*.onnx"))
        new = after - before
        assert len(new) == 1 and export.export_key() in next(iter(new)).name, (before, after)
        assert model.net.path in new   # the fresh export is the one used
        before = after
        assert np.abs(model.predict(scan).probabilities
                      - first.predict(scan).probabilities).max() < 1e-6


def test_onnx_predict_from_a_cached_graph_never_builds_the_torch_network(bit_file, make_hu_volume,
                                                                         tmp_path):
    """A BiT model file loads without its PyTorch network; on ONNX Runtime with the graph in
    the cache, a fresh process predicts without building it, so timm (and torchvision,
    torch._dynamo: seconds of start-up) is never imported; same answer as PyTorch."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from covidct.scanio import load_scan, save_scan

    scan = make_hu_volume(shape=(10, 96, 96))
    path = save_scan(scan, tmp_path / "scan.nii.gz")
    load_model(bit_file, runtime="onnx", threads=1)  # exports into the test's cache
    code = ("import json, sys\n"
            "from covidct.models import load_model\n"
            "from covidct.scanio import load_scan\n"
            f"model = load_model({str(bit_file)!r}, runtime='onnx', threads=1)\n"
            f"probs = model.predict(load_scan({str(path)!r})).probabilities\n"
            "print(json.dumps({'timm': 'timm' in sys.modules, 'built': model._torch is not None,\n"
            "                  'probs': [float(p) for p in probs]}))\n")
    src = str(Path(export.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["timm"] is False and out["built"] is False
    reference = load_model(bit_file).predict(load_scan(path)).probabilities
    assert np.abs(np.array(out["probs"]) - reference).max() < PARITY


def test_covidctnet_export_both_networks_and_parity(covidctnet_file, tmp_path, make_hu_volume,
                                                    monkeypatch):
    written = export.export_model(load_model(covidctnet_file), tmp_path / "cc.onnx")
    assert set(written) == {"classifier", "denoiser"}
    assert written["denoiser"].name == "cc.bcdunet.onnx"
    model = load_model(covidctnet_file)
    slices = torch.rand(3, 1, 48, 56)  # height and width are dynamic too
    volumes = torch.rand(2, 1, 34, 40, 40)
    with torch.no_grad():
        denoised = model.denoiser(slices)
        probs = torch.softmax(model.classifier(volumes), 1)
    onnx_denoised = export.OnnxNetwork(written["denoiser"], threads=1)(slices)
    assert (onnx_denoised - denoised).abs().max().item() < PARITY
    assert (_onnx_probs(written["classifier"], volumes) - probs).abs().max().item() < PARITY

    monkeypatch.setenv("COVIDCT_CACHE", "off")
    scan = make_hu_volume(shape=(24, 64, 64), spacing=(2.5, 1.2, 1.2))
    reference = load_model(covidctnet_file).predict(scan)
    on_onnx = export.to_runtime(load_model(covidctnet_file), "onnx",
                                onnx_path=written["classifier"], threads=1)
    prediction = on_onnx.predict(scan)
    assert np.abs(prediction.probabilities - reference.probabilities).max() < PARITY


def test_predict_cli_runtime_onnx(bit_file, make_hu_volume, tmp_path, capsys):
    from covidct.scanio import save_scan

    path = save_scan(make_hu_volume(shape=(8, 64, 64)), tmp_path / "scan.nii.gz")
    assert cli_main(["predict", str(path), "--model", str(bit_file), "--runtime", "onnx",
                     "--out", str(tmp_path / "out")]) == 0
    assert "bit:" in capsys.readouterr().out
    assert (tmp_path / "out" / "summary.json").is_file()
    # Grad-CAM pictures come from the PyTorch network the graph was exported from.
    assert list((tmp_path / "out").glob("bit-gradcam-*.png"))


def test_bad_inputs(bit_file, tmp_path):
    with pytest.raises(ModelError, match="runtime"):
        load_model(bit_file, runtime="tensorrt")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="bad.onnx"):
        export.OnnxNetwork(bad)
    with pytest.raises(ModelError, match="covidct export"):
        export.to_runtime(load_model(bit_file), "onnx", onnx_path=tmp_path / "missing.onnx")
    assert cli_main(["export", str(tmp_path / "nope.pt")]) == 2


def test_openvino_sessions_freed_in_any_order_leave_signals_working(bit_file, tmp_path):
    """OpenVINO's CPU plugin gives the compiling thread a signal stack of its own and frees it
    with the compiled model: two sessions freed oldest first once left the thread on a freed
    stack, and the next signal (here a child's exit, as under PyTorch's DataLoader) killed the
    process with SIGSEGV. Run as a user's process would: a fresh interpreter."""
    pytest.importorskip("openvino")
    path = export.export_model(load_model(bit_file), tmp_path / "bit.onnx")["classifier"]
    script = f"""
import gc, os, signal
import numpy as np
from covidct.export import OpenVinoSession, _sigaltstack
before = _sigaltstack()
first, second = OpenVinoSession({str(path)!r}, 1), OpenVinoSession({str(path)!r}, 1)
for session in (first, second):
    session.run(None, {{session.input_name: np.zeros((1, 3, 64, 64), np.float32)}})
del first; gc.collect()
del second; gc.collect()
after = _sigaltstack()
assert (after.ss_sp, after.ss_flags) == (before.ss_sp, before.ss_flags)
signal.signal(signal.SIGCHLD, lambda *args: None)
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print("alive")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0 and proc.stdout.strip() == "alive", (proc.returncode, proc.stderr)
