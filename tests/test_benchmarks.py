"""The benchmark suite runs end to end at tiny sizes (no timing assertions: the CPU is shared)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `benchmarks` lives at the repository root, beside src/
    sys.path.insert(0, str(REPO))

pytest.importorskip("onnxruntime")

pytestmark = [pytest.mark.xdist_group("benchmarks"), pytest.mark.slow]


def test_tiny_benchmarks_produce_every_row(tmp_path, monkeypatch):
    from benchmarks.run import main

    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path / "cache"))
    md, js = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    # --max-load -1: every load is "too high", so every row must come out marked LOADED.
    assert main(["--tiny", "--threads", "1", "--md", str(md), "--json", str(js),
                 "--workdir", str(tmp_path / "work"), "--max-load", "-1", "--allow-loaded"]) == 0
    result = json.loads(js.read_text())
    assert result["loaded"] and set(result["section_load"]) >= {"inference", "startup", "web"}
    variants = result["inference"]["variants"]
    assert variants[0]["variant"].endswith("(baseline)") and variants[0]["speedup"] == 1.0
    assert all(v["slices_per_s"] > 0 and v["peak_fraction"] > 0 for v in variants)
    assert result["inference"]["gflops_per_slice"] > 0
    patient = result["patient"]
    assert 0 < patient["scored_slices"] <= result["sizes"]["max_slices"] <= patient["lung_slices"]
    accuracy = result["capped_vs_every_slice"]
    assert accuracy["synthetic"] and 0 <= accuracy["label_agreement_all_patients"] <= 1
    volumes = result["covidctnet"]
    assert volumes["memory"].get("peak_rss_during_predict_gb", 0) > 0, volumes["memory"]
    assert volumes["predict_onnx_s"] > 0 and volumes["preprocess_fast_s"] > 0
    assert volumes["int8_denoiser"]["int8_vs_float32"] > 0
    assert result["loader"]["images_per_s_per_worker"] > 0
    assert result["training_cpu"]["images_per_s"] > 0 and "training_cuda" not in result
    assert patient["baseline_every_slice_eager_s"] > 0  # run, not estimated
    assert result["inference"]["int8_vs_float32_onnx"] > 0
    # OpenVINO runs the same two graphs, and counts in the best-of-each int8/float32 ratio.
    import importlib.util

    if importlib.util.find_spec("openvino") is not None:
        names = [v["variant"] for v in variants]
        assert sum(n.startswith("OpenVINO") for n in names) == 4, names
        assert result["inference"]["int8_best"] in names
        assert volumes["int8_denoiser"]["openvino_int8_vs_float32"] > 0
        assert "BCDU-Net on OpenVINO" in md.read_text()
    # The default-runtime row's model file had its int8 check run; auto followed it, and this
    # CPU's int8 speed (covidct.devices.int8_is_fast), which the row records.
    check = volumes["default_runtime"]["int8_check"]
    assert "skipped" not in check and check["rule_version"] == 2, check
    fast = volumes["default_runtime"]["int8_fast_cpu"]
    assert volumes["default_runtime"]["runtime"] == (
        "onnx-int8" if check["passed"] and fast else "onnx")
    row = next(ln for ln in md.read_text().splitlines() if "default runtime (" in ln)
    assert ("int8 check passed" if check["passed"] else "int8 check FAILED") in row
    assert ("without wide int8 instructions" in row) == (not fast), row
    assert volumes["default_runtime"]["read_s"] > 0
    assert 0 < result["startup"]["python_s"] < result["startup"]["help_s"]
    loading = result["model_loading"]
    assert loading["auto"]["bit_runtime"] == "onnx" and loading["auto"]["covidctnet_runtime"] == "onnx"
    assert result["cold_predict"]["auto"]["runtimes"] == ["onnx", "onnx"]
    assert result["cold_predict"]["torch"]["peak_rss_gb"] > 0
    # ... and on model files whose int8 check ran, as a trained model's, auto follows each check
    # (BCDU-Net's only on a CPU with wide int8 instructions).
    from covidct.devices import int8_is_fast

    checked = json.loads((tmp_path / "work" / "int8-models" / "checks.json").read_text())["checks"]
    expected = ["onnx-int8" if checked[m].get("passed") and (m == "bit" or int8_is_fast()) else "onnx"
                for m in ("bit", "covidctnet")]
    assert result["cold_predict"]["auto_int8_checked"]["runtimes"] == expected, checked
    assert result["web"]["int8_checked"]["seconds"] > 0
    assert sum("model files whose int8 check ran" in ln for ln in md.read_text().splitlines()) == 2
    assert result["web"]["seconds"] > 0 and result["web"]["slices"] == result["sizes"]["cold_series"][0]
    assert result["archive"]["workers_2"]["scans_per_s"] > 0
    text = md.read_text()
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| #")]
    for row in range(12):
        assert any(ln.startswith(f"| {row} |") for ln in table), row
    assert all("LOADED" in ln for ln in table)
    assert "not measured here" in text and "SYNTHETIC" in text


def test_a_loaded_machine_is_refused(tmp_path, capsys):
    from benchmarks.run import main

    md = tmp_path / "BENCHMARKS.md"
    assert main(["--tiny", "--max-load", "-1", "--md", str(md)]) == 3
    assert "--allow-loaded" in capsys.readouterr().err and not md.exists()


def test_cuda_request_without_a_gpu_is_refused(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from benchmarks.run import main

    assert main(["--tiny", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_op_profile_splits_each_graphs_time_by_operator(tmp_path, monkeypatch, capsys):
    from benchmarks.opprofile import main, profile_row1

    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path / "cache"))
    result = profile_row1(tiny=True, threads=1, workdir=tmp_path)
    float32, int8 = result["graphs"]["float32"], result["graphs"]["int8"]
    assert "Conv" in float32["op_shares"] and "QLinearConv" in int8["op_shares"]
    assert "QLinearConv" not in float32["op_shares"]
    for graph in (float32, int8):
        assert graph["seconds_per_slice"] > 0
        assert abs(sum(graph["op_shares"].values()) - 1) < 1e-6
    assert main(["--tiny", "--workdir", str(tmp_path / "cli")]) == 0
    assert "int8:" in capsys.readouterr().out


def test_op_profile_refuses_a_thread_count_below_one(capsys):
    from benchmarks.opprofile import main

    with pytest.raises(SystemExit) as stop:
        main(["--tiny", "--threads", "0"])
    assert stop.value.code == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
