"""The fast default paths give the same answers: the int8 slice classifier (static quantization
calibrated on training slices) against float32 on SYNTHETIC test slices, and `covidct predict`'s
default runtime against PyTorch for both methods. Parity tests, not timing tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from covidct import export, quantize  # noqa: E402

pytestmark = pytest.mark.xdist_group("int8")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("onnx-cache")
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1",
                COVIDCT_CACHE=str(cache))


def cli(env, *args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "covidct", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return proc.returncode, proc.stdout, proc.stderr


def export_int8(env, model_path, covidx, folder):
    """`covidct export MODEL --int8` on the training split, as a user runs it: (graph, stdout)."""
    out = folder / "bit.onnx"
    rc, stdout, stderr = cli(env, "export", model_path, "--out", out, "--int8",
                             "--calibration", covidx / "train_COVIDx_CT-2A.txt",
                             "--images", covidx / "images")
    assert rc == 0, stderr
    return out, stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny BiT trained briefly on a SYNTHETIC cohort split by patient (half train, half
    test): a model whose calls mean something, unlike a random head's near-ties."""
    from covidct.bit.model import TINY_ARCH
    from covidct.bit.train import TrainConfig, train
    from covidct.synth.cohort import CohortSettings, generate_cohort

    root = tmp_path_factory.mktemp("int8") / "cohort"
    # 16 patients: > 100 test slices.
    generate_cohort(root, CohortSettings(patients=16, seed=3, matrix=64, slice_mm=(2.5, 2.5),
                                         max_slices=30, split=(0.5, 0.0, 0.5),
                                         formats=("nifti", "covidx")), progress=False)
    covidx = root / "covidx"
    result = train(TrainConfig(
        train_split=str(covidx / "train_COVIDx_CT-2A.txt"), images=str(covidx / "images"),
        out=str(root.parent / "run"), arch=TINY_ARCH, init="random", resize=40, crop=32,
        schedule=(5, 40, 60, 70, 80), batch_size=16, lr=0.01, mixup_alpha=0.0, workers=0,
        val_every=80, progress=False))
    return root, Path(result.model_path)


#: The issue's bar (same call on >= 99% of slices, median probability difference <= 0.02) is
#: the export's own check, which `--runtime auto` obeys. A BiT-R50x1 trained 80 steps on a
#: 12-patient synthetic cohort met it on all 91 held-out test slices (same call 100%, median
#: 0.003, max 0.008; by hand: 19 min of training on the shared CPU, too slow for a test). The
#: tiny network trained here for seconds is barely above chance: many of its slices are near
#: ties, which int8's ~0.01 differences flip (91-99% same call, depending on the cohort). So
#: here: the median bound, a bound on the largest difference, and the same call wherever
#: float32's call is clear (top-two margin >= CLEAR_MARGIN).
MAX_MEDIAN_DIFF = 0.02
MAX_DIFF = 0.1
CLEAR_MARGIN = 0.2


@pytest.mark.slow
def test_int8_export_matches_float32_on_synthetic_test_slices(trained, env, tmp_path):
    root, model_path = trained
    covidx = root / "covidx"
    out, stdout = export_int8(env, model_path, covidx, tmp_path)
    int8 = quantize.int8_path(out)
    assert int8.is_file() and "int8 check" in stdout
    recorded = quantize.read_parity(int8)
    assert recorded["slices"] >= 10 and recorded["calibration_slices"] >= 10
    assert recorded["passed"] == (recorded["same_call"] >= quantize.MIN_AGREEMENT
                                  and recorded["median_prob_diff"] <= quantize.MAX_MEDIAN_DIFF)

    # On slices of patients the model and the calibration never saw.
    from covidct.models import load_model

    model = load_model(model_path)
    test = quantize.training_inputs(model, covidx / "test_COVIDx_CT-2A.txt", covidx / "images",
                                    n=10 ** 6)
    assert len(test) >= 100
    check = quantize.parity(out, int8, test, threads=1)
    assert check["median_prob_diff"] <= MAX_MEDIAN_DIFF, check
    assert 0 < check["max_prob_diff"] <= MAX_DIFF, check  # > 0: a different graph indeed
    x = torch.from_numpy(test)
    reference = torch.softmax(export.OnnxNetwork(out, 1)(x), 1).numpy()
    quantized = torch.softmax(export.OnnxNetwork(int8, 1)(x), 1).numpy()
    top2 = np.sort(reference, 1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= CLEAR_MARGIN
    assert clear.sum() >= 0.3 * len(test), "the test model makes too few clear calls"
    same = reference.argmax(1) == quantized.argmax(1)
    assert same[clear].mean() >= 0.99, (same[clear].mean(), check)
    assert int8.stat().st_size < 0.5 * out.stat().st_size

    # predict: --runtime onnx-int8 runs it; auto picks it only if its check passed.
    first = sorted((root / "patients").iterdir())[0] / "ct.nii.gz"
    expected_auto = "onnx-int8" if recorded["passed"] else "onnx"
    for runtime, shown in (("onnx-int8", "onnx-int8"), ("auto", expected_auto)):
        rc, stdout, stderr = cli(env, "predict", first, "--model", model_path, "--runtime", runtime)
        assert rc == 0, stderr
        assert f"bit: runtime {shown}" in stderr


@pytest.mark.slow
def test_train_bit_ends_with_an_int8_check_that_auto_follows(trained, tmp_path, monkeypatch):
    """What `train-bit` does last (unless --no-int8): the int8 classifier calibrated on the
    training slices, checked on held-out ones, cached for the model file; auto follows it."""
    from covidct.quantize import check_model_file
    from covidct.models import load_model

    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path))
    root, model_path = trained
    covidx = root / "covidx"
    line = check_model_file(model_path, split=str(covidx / "train_COVIDx_CT-2A.txt"),
                            images=str(covidx / "images"))
    assert line.startswith("int8 check on ") and len(line.splitlines()) == 1
    model = load_model(model_path)
    cached = export._cached_int8(model, require_pass=False)
    assert cached is not None and cached.parent == tmp_path / "onnx"
    record = quantize.read_parity(cached)
    assert ("passed: --runtime auto runs int8 on ONNX Runtime" in line) == record["passed"]
    assert export.choose_runtime(model, "auto") == ("onnx-int8" if record["passed"] else "onnx")
    if "openvino" in quantize.check_engines():
        assert ("on OpenVINO: same call" in line) and "openvino" in record
        monkeypatch.setenv("COVIDCT_INT8_ENGINE", "openvino")
        expected = ("openvino-int8" if record["openvino"]["passed"]
                    else "onnx-int8" if record["passed"] else "onnx")
        assert export.choose_runtime(model, "auto") == expected


@pytest.mark.slow
def test_openvino_runs_the_same_graphs_with_a_check_of_its_own(trained, env, tmp_path):
    """OpenVINO runs the exported graphs as they are: float32 with ONNX Runtime's (so
    PyTorch's) answers, the int8 graph within the int8 bars on held-out SYNTHETIC test slices,
    checked on its own when the graph is made (its numbers differ slightly from ONNX
    Runtime's); `--runtime auto` takes it only where that check passed."""
    pytest.importorskip("openvino")
    root, model_path = trained
    covidx = root / "covidx"
    out, stdout = export_int8(env, model_path, covidx, tmp_path)
    int8 = quantize.int8_path(out)
    recorded = quantize.read_parity(int8)
    on_ov = recorded["openvino"]
    assert on_ov["passed"] == (on_ov["same_call"] >= quantize.MIN_AGREEMENT
                               and on_ov["median_prob_diff"] <= quantize.MAX_MEDIAN_DIFF)
    assert "on OpenVINO: same call" in stdout

    from covidct.models import load_model

    model = load_model(model_path)
    test = quantize.training_inputs(model, covidx / "test_COVIDx_CT-2A.txt", covidx / "images",
                                    n=10 ** 6)
    x = torch.from_numpy(test)

    def probabilities(path, engine):
        return torch.softmax(export.OnnxNetwork(path, 1, engine=engine)(x), 1).numpy()

    reference = probabilities(out, "onnxruntime")
    assert np.abs(probabilities(out, "openvino") - reference).max() < 1e-4
    on_openvino, on_onnxruntime = probabilities(int8, "openvino"), probabilities(int8, "onnxruntime")
    gap = np.abs(on_openvino - reference).max(1)
    assert np.median(gap) <= MAX_MEDIAN_DIFF and 0 < gap.max() <= MAX_DIFF, gap
    assert np.abs(on_openvino - on_onnxruntime).max() > 0  # OpenVINO's own numbers indeed
    top2 = np.sort(reference, 1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= CLEAR_MARGIN
    assert (reference.argmax(1) == on_openvino.argmax(1))[clear].mean() >= 0.99

    # As a user runs it: by name, and by auto where OpenVINO is the int8 engine.
    first = sorted((root / "patients").iterdir())[0] / "ct.nii.gz"
    expected = ("openvino-int8" if on_ov["passed"]
                else "onnx-int8" if recorded["passed"] else "onnx")
    summaries = {}
    for runtime, engine, shown in (("openvino-int8", "onnxruntime", "openvino-int8"),
                                   ("openvino", "onnxruntime", "openvino"),
                                   ("onnx", "onnxruntime", "onnx"),
                                   ("auto", "openvino", expected)):
        rc, _, stderr = cli({**env, "COVIDCT_INT8_ENGINE": engine}, "predict", first, "--model",
                            model_path, "--runtime", runtime, "--no-pictures",
                            "--out", tmp_path / runtime)
        assert rc == 0, stderr
        assert f"bit: runtime {shown}\n" in stderr + "\n", stderr
        summaries[runtime] = json.loads((tmp_path / runtime / "summary.json").read_text())
    probs = {r: np.array(list(s["results"]["bit"]["probabilities"].values()))
             for r, s in summaries.items()}
    assert np.abs(probs["openvino"] - probs["onnx"]).max() < 1e-3
    # What OpenVINO compiled is kept beside the ONNX cache, for the next cold process.
    assert any((Path(env["COVIDCT_CACHE"]) / "openvino").glob("*.blob"))
    assert np.abs(probs["openvino-int8"] - probs["onnx"]).max() <= MAX_DIFF


def test_int8_needs_calibration_slices(tmp_path, env, make_hu_volume):
    from conftest import save_tiny_bit_model
    from covidct.scanio import save_scan

    model = save_tiny_bit_model(tmp_path / "bit.pt", seed=0, resize=40, crop=32)
    rc, _, stderr = cli(env, "export", model, "--int8")
    assert rc == 2 and "--calibration" in stderr and "Traceback" not in stderr
    # No int8 graph made for this model: asking for one is a one-line error saying how.
    scan = save_scan(make_hu_volume(shape=(8, 48, 48)), tmp_path / "scan.nii.gz")
    rc, _, stderr = cli(env, "predict", scan, "--model", model, "--runtime", "onnx-int8")
    assert rc == 2 and "export MODEL --int8" in stderr and "Traceback" not in stderr


def test_cli_runtime_choices_match_the_library():
    from covidct.cli.predict import RUNTIME_CHOICES

    assert RUNTIME_CHOICES == export.RUNTIME_CHOICES


@pytest.mark.slow
def test_default_runtime_gives_torch_answers_for_both_methods(env, tmp_path, make_hu_volume):
    """`covidct predict` (default runtime: ONNX Runtime) against `--runtime torch`, both methods,
    on one SYNTHETIC scan: same calls, probabilities within 1e-3."""
    from conftest import save_tiny_bit_model
    from covidct.scanio import save_scan
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    bit = save_tiny_bit_model(tmp_path / "bit.pt", seed=2, resize=40, crop=32)
    torch.manual_seed(0)
    volumes = tmp_path / "covidctnet.pt"
    CovidCTNet.build(VolumeSettings(slice_size=40, volume_slices=34, denoiser_width=8),
                     denoiser=BCDUNet(8)).save(volumes)
    scan = save_scan(make_hu_volume(shape=(20, 64, 64), seed=4), tmp_path / "scan.nii.gz")
    results = {}
    for runtime in ("torch", "auto"):
        out = tmp_path / runtime
        rc, _, stderr = cli(env, "predict", scan, "--model", bit, "--model", volumes,
                            "--out", out, "--no-pictures", "--runtime", runtime)
        assert rc == 0, stderr
        results[runtime] = json.loads((out / "summary.json").read_text())["results"]
        if runtime == "auto":
            assert "bit: runtime onnx" in stderr and "covidctnet: runtime onnx" in stderr
    for method in ("bit", "covidctnet"):
        a, b = results["torch"][method], results["auto"][method]
        assert a["label"] == b["label"]
        pa, pb = (np.array(list(r["probabilities"].values())) for r in (a, b))
        assert np.abs(pa - pb).max() < 1e-3


def test_covidctnet_int8_needs_its_training_data(tmp_path, env, make_hu_volume):
    """CovidCTNet's int8 denoiser is opt-in and made from its training cohort: without one,
    one line saying how (no traceback); asked for before it exists, float32 with a warning
    saying how (as before it existed, so `--method all --runtime onnx-int8` still runs)."""
    from conftest import save_tiny_covidctnet_model
    from covidct.scanio import save_scan

    model = save_tiny_covidctnet_model(tmp_path / "covidctnet.pt")
    rc, _, stderr = cli(env, "export", model, "--out", tmp_path / "cc.onnx", "--int8")
    assert rc == 2 and "--calibration DATA" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "cc.bcdunet.int8.onnx").exists()
    rc, _, stderr = cli(env, "export", model, "--out", tmp_path / "cc.onnx", "--int8",
                        "--calibration", tmp_path / "no-such-cohort")
    assert rc == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    scan = save_scan(make_hu_volume(shape=(20, 64, 64), seed=4), tmp_path / "scan.nii.gz")
    rc, _, stderr = cli(env, "predict", scan, "--model", model, "--runtime", "onnx-int8")
    assert "export MODEL --int8" in stderr and "--calibration DATA" in stderr, stderr
    assert "Traceback" not in stderr
    assert rc == 0 and "covidctnet: runtime onnx" in stderr and "runtime onnx-int8" not in stderr
