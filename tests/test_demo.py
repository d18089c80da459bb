"""`covidct demo` end to end at toy sizes: every stage's output, the summary, reuse."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from covidct.cli import main as cli_main  # noqa: E402
from covidct.constants import SYNTHETIC_NOTICE  # noqa: E402
from covidct.demo import DemoSettings, run_demo  # noqa: E402
from covidct.errors import CovidctError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]

TOY = DemoSettings(patients=9, matrix=64, bit_resolution=(40, 32), bit_schedule=(2, 6, 8, 9, 10),
                   bit_batch_size=8, slice_size=40, volume_slices=34, denoiser_width=8,
                   slices_per_scan=8, denoiser_epochs=1, epochs=2, patience=2, n_boot=50)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(1)
    said: list[str] = []
    mp = pytest.MonkeyPatch()  # the demo's int8 graphs go to the ONNX cache: a private one
    mp.setenv("COVIDCT_CACHE", str(tmp_path_factory.mktemp("demo-cache")))
    # auto's choice by the stored check alone, on any CPU (the CPU rule has its own test)
    mp.setenv("COVIDCT_INT8_CPU", "fast")
    result = run_demo(tmp_path_factory.mktemp("demo") / "out", TOY, progress=False, say=said.append)
    yield result, said
    mp.undo()


def test_every_stage_writes_its_output(demo):
    result, said = demo
    out = result.out
    for name in ("cohort/labels.csv", "runs/bit/summary.json", "runs/covidctnet/summary.json",
                 "models/bit.pt", "models/covidctnet.pt", "evaluation/bit/results.json",
                 "evaluation/bit/explain.json", "evaluation/covidctnet/results.json",
                 "evaluation/covidctnet/explain.json", "evaluation/bit/localisation.json",
                 "evaluation/covidctnet/localisation.json", "evaluation/covidctnet/localisation.png",
                 "report.html", "demo.json"):
        assert (out / name).is_file(), name
    stages = [line for line in said if line.startswith("[")]
    assert len(stages) == 16 and said[-1].startswith("[8/8] write the report: done")
    assert result.report == out / "report.html"


def test_demo_models_read_what_the_demo_settings_chose(demo):
    """The demo's input choices (the lungs' box in the lung-detail-wide window; the lung mask
    less its outline) are in its model files, so evaluation and prediction read the same."""
    from covidct.models import load_model

    result, _ = demo
    bit = load_model(result.out / "models" / "bit.pt")
    assert (bit.crop_rule, bit.rewindow) == (TOY.bit_crop_rule, TOY.bit_rewindow) == ("lungs", "lung-detail-wide")
    covidctnet = load_model(result.out / "models" / "covidctnet.pt")
    assert covidctnet.settings.mask_input and covidctnet.settings.mask_erode == TOY.mask_erode == 1
    # ... and the run's records say so (they once recorded the plain settings: no mask, no erosion).
    run = result.out / "runs" / "covidctnet"
    for record in (json.loads((run / "config.json").read_text()), json.loads((run / "summary.json").read_text())):
        assert (record["settings"]["mask_input"], record["settings"]["mask_erode"]) == (True, 1)
    # The denoiser kept is the epoch whose map best finds the validation pseudo-infection.
    facts = json.loads((run / "summary.json").read_text())["denoiser"]
    assert TOY.denoiser_select == "map-auc"
    assert facts["selected_by"] == ("map-auc" if facts["val_slices"] else "loss"), facts
    # The map is scored as shown (inside the lung mask) and as the method makes it (no mask).
    found = json.loads((result.out / "evaluation" / "covidctnet" / "localisation.json").read_text())
    for auc in (found["auc"], found["method_map"]["auc"]):
        assert auc is None or 0.0 <= auc <= 1.0, found


def test_demo_models_get_checked_int8_graphs(demo):
    """Both models' int8 graphs were made and checked; `predict --runtime auto` follows each
    check (float32 where it failed), as for a model from train-bit/train-covidctnet."""
    from covidct import export, quantize
    from covidct.models import load_model

    result, said = demo
    lines = [line for line in said if line.startswith("  ") and "int8" in line]
    assert [line.split(":")[0].strip() for line in lines] == ["bit", "covidctnet"]
    for method in ("bit", "covidctnet"):
        model = load_model(result.out / "models" / f"{method}.pt")
        record = quantize.read_parity(export._cached_int8(model, require_pass=False))
        expected = "onnx-int8" if export.passed_check(model, record) else "onnx"
        assert export.choose_runtime(model, "auto") == expected, (method, record)


def test_summary_is_labelled_synthetic_and_names_a_held_out_patient(demo):
    result, _ = demo
    summary = json.loads((result.out / "demo.json").read_text())
    assert summary["synthetic"] is True and summary["synthetic_notice"] == SYNTHETIC_NOTICE
    example = summary["example"]
    labels = (result.out / "cohort" / "labels.csv").read_text().splitlines()
    row = next(line for line in labels if line.startswith(example["patient"] + ","))
    assert ",test," in row + ","
    assert set(example["calls"]) == {"bit", "covidctnet"}
    test_patients = sum(",test," in line + "," for line in labels[1:])
    for method, row in summary["test_results"].items():
        assert 0.0 <= row["accuracy"]["value"] <= 1.0, method
        assert row["n_patients"] == test_patients >= 2, method  # both methods: the same patients
    # The slice classifier is also scored as a hospital runs it: one call per whole series.
    series = summary["test_results"]["bit"]["series"]
    assert series["level"] == "series" and series["n_patients"] == test_patients
    assert "series" not in summary["test_results"]["covidctnet"]
    assert sum("bit         whole-series accuracy" in line for line in result.lines) == 1
    assert result.lines[0] == SYNTHETIC_NOTICE
    html = result.report.read_text()
    assert "SYNTHETIC" in html and "Grad-CAM" in html
    assert "without the lung mask (the method&#x27;s map" in html or "without the lung mask (the method's map" in html


def test_second_run_reuses_every_stage(demo):
    result, _ = demo
    model_time = (result.out / "models" / "bit.pt").stat().st_mtime
    said: list[str] = []
    run_demo(result.out, TOY, progress=False, say=said.append)
    reused = [line for line in said if line.endswith(": reused")]
    assert len(reused) == 7 and said[-1].startswith("[8/8] write the report: done")
    assert (result.out / "models" / "bit.pt").stat().st_mtime == model_time


def test_foreign_folder_is_refused_untouched(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CovidctError, match="not a covidct demo folder"):
        run_demo(tmp_path, TOY, progress=False, say=lambda _: None)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert cli_main(["demo", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "not a covidct demo folder" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [(["--difficulty", "1.5"], "--difficulty must be between 0 and 1"),
                                         (["--patients", "6"], "--patients must be at least 9")])
def test_bad_demo_options_exit_2_before_any_work(tmp_path, capsys, args, words):
    out = tmp_path / "out"
    assert cli_main(["demo", "--out", str(out), "--no-progress", *args]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_slice_classifier_crop_rule_and_window_reach_its_training(tmp_path):
    from dataclasses import replace

    from covidct.demo import bit_train_config

    def config(settings):
        return bit_train_config(settings, tmp_path / "train.txt", tmp_path, tmp_path / "run",
                                False, "test")

    assert (config(DemoSettings()).crop_rule, config(DemoSettings()).rewindow) == ("lungs", "lung-detail-wide")
    chosen = config(replace(DemoSettings(), bit_crop_rule="box", bit_rewindow=None))
    assert (chosen.crop_rule, chosen.rewindow) == ("box", None)


def test_demo_help_states_the_patients_the_demo_uses(run_cli):
    # the help text is written without importing covidct.demo (start-up time), so this ties
    # its stated default to DemoSettings
    rc, out, _ = run_cli("demo", "--help")
    assert rc == 0
    assert f"(default: {DemoSettings().patients})" in " ".join(out.split())
