"""`covidct experiment`: every preset at tiny scale on the SYNTHETIC cohort, resume, failures.

Grids are trimmed through the override mechanism (32-40 px, 2-3 steps, batch 4) so that the
whole file trains about twenty tiny runs in well under a minute and a half on two cores.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from covidct.cli import main as cli_main  # noqa: E402
from covidct.errors import CovidctError  # noqa: E402
from covidct.experiments import PRESETS, parse_set, read_config, run_experiment  # noqa: E402
from covidct.experiments.grid import expand, make_plan  # noqa: E402

pytestmark = pytest.mark.xdist_group("experiments")

#: Small runs for every slice experiment: one 32-px crop, three steps, batch 4.
SMALL = {"resolution": "36,32", "schedule": "1,2,3", "batch_size": 4, "n_boot": 20, "val_every": 2}


def small(**grid) -> dict:
    settings = {k: v for k, v in SMALL.items() if k not in grid}
    return {**settings, **grid}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One torch thread (two test workers share two cores) and a private volume cache."""
    cache = tmp_path_factory.mktemp("experiment-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("COVIDCT_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path_factory.mktemp("experiments")
    torch.set_num_threads(threads)
    mp.undo()


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def experiment(args: list[str], capsys) -> tuple[int, str]:
    rc = cli_main(["experiment", *args])
    return rc, capsys.readouterr().out


@pytest.fixture(scope="module")
def resolution_run(env, synthetic_cohort):
    """The resolution preset through the CLI: 2 resolutions x mixup on/off."""
    args = ["resolution", "--data", str(synthetic_cohort), "--out", str(env), "--scale", "tiny",
            "--set", "resolution=['36,32','40,32']", "--set", "schedule=1,2,3",
            "--set", "batch_size=4", "--set", "n_boot=20"]
    rc = cli_main(["experiment", *args])
    return args, rc, env / "resolution"


@pytest.mark.slow
def test_resolution_preset_writes_csv_table_figure_and_json(resolution_run):
    _, rc, folder = resolution_run
    assert rc == 0
    results = rows(folder / "results.csv")
    assert len(results) == 4 and {r["status"] for r in results} == {"done"}
    assert {(r["resize"], r["crop"], r["mixup_alpha"]) for r in results} == {
        ("36", "32", "0.1"), ("36", "32", "0"), ("40", "32", "0.1"), ("40", "32", "0")}
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 and r["synthetic"] == "True" for r in results)
    table = (folder / "table.md").read_text()
    assert "SYNTHETIC" in table and "(36, 32)" in table and "without mixup" in table
    assert (folder / "figure.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((folder / "experiment.json").read_text())
    assert meta["synthetic"] is True and meta["scale"] == "tiny"
    assert "synthetic cohort" in meta["data"]["description"]
    assert any("tiny scale" in n for n in meta["notes"])
    assert len(meta["table"]["rows"]) == 4


@pytest.mark.slow
def test_rerun_skips_finished_runs(resolution_run, capsys):
    args, _, folder = resolution_run
    before = {p: p.stat().st_mtime_ns for p in folder.glob("runs/*/result.json")}
    rc, out = experiment(args, capsys)
    assert rc == 0
    assert out.count("finished before, skipped") == 4 and "running" not in out
    assert {p: p.stat().st_mtime_ns for p in folder.glob("runs/*/result.json")} == before


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_checkpoint(env, synthetic_cohort):
    from covidct.bit.train import TrainConfig, train

    overrides = small(mixup=[True], resolution=["36,32"])
    specs = expand(make_plan(PRESETS["resolution"], "tiny", overrides), "tiny")
    assert len(specs) == 1
    run_dir = env / "resume" / "resolution" / "runs" / specs[0].id / "train"
    cohort = synthetic_cohort / "covidx"
    # Kill the run after one of its three steps, as a crash would.
    train(TrainConfig(train_split=str(cohort / "train_COVIDx_CT-2A.txt"), images=str(cohort / "images"),
                      out=str(run_dir), val_split=str(cohort / "val_COVIDx_CT-2A.txt"),
                      arch="resnetv2_tiny_bit", init="random", resize=36, crop=32, schedule=(1, 2, 3),
                      batch_size=4, mixup_alpha=0.1, workers=0, val_every=2, stop_after=1,
                      progress=False))
    lines: list[str] = []
    outcome = run_experiment("resolution", synthetic_cohort, env / "resume", "tiny", overrides,
                             echo=lines.append)
    assert not outcome.failed
    history = rows(run_dir / "history.csv")
    assert [r["step"] for r in history] == ["1", "2", "3"]  # steps 2-3 appended, not restarted


@pytest.mark.slow
def test_failed_run_is_reported_and_the_others_go_on(env, synthetic_cohort, capsys):
    args = ["init", "--data", str(synthetic_cohort), "--out", str(env), "--scale", "tiny",
            "--set", "init=[random, bit-m, /no/such/weights.npz]", "--set", "schedule=1,2,3,4",
            "--set", "resolution=36,32", "--set", "batch_size=4", "--set", "n_boot=20"]
    rc, out = experiment(args, capsys)
    assert rc == 1
    assert "FAILED" in out and "weights.npz" in out
    folder = env / "init"
    results = {r["axis_init"]: r for r in rows(folder / "results.csv")}
    assert results["random"]["status"] == "done" and results["bit-m"]["status"] == "done"
    assert results["/no/such/weights.npz"]["status"] == "failed"
    assert "not found" in results["/no/such/weights.npz"]["error"]
    # At tiny scale BiT-M has no local weights file: trained from random, and said so.
    assert results["bit-m"]["init_used"] == "random"
    assert "started from random weights" in out or "instead (no local weights file): bit-m" in out
    table = (folder / "table.md").read_text()
    assert "bit-m (trained from random)" in table and "FAILED run" in table
    assert "| 97.9 | 99.3 |" in table  # BiT-M's published Table 3 values, beside the measured ones
    # Fig. 7: validation accuracy every val_every (2 tiny-scale) steps.
    done = next(folder.glob("runs/init-random-*/result.json"))
    assert [p[0] for p in json.loads(done.read_text())["val_curve"]] == [2, 4]
    assert list(folder.glob("runs/init--no-such-weights.npz-*/error.json"))
    # A rerun retries only the failed run.
    rc, out = experiment(args, capsys)
    assert rc == 1 and out.count("finished before, skipped") == 2 and out.count(": running") == 1


@pytest.mark.slow
def test_schedule_preset(env, synthetic_cohort):
    outcome = run_experiment("schedule", synthetic_cohort, env, "tiny",
                             {**small(schedule=["1,2", "1,2,3"], mixup=[False]), "max_test": 5})
    assert not outcome.failed
    assert sorted(r.result["steps"] for r in outcome.runs) == [2, 3]
    assert {r.result["test_slices"] for r in outcome.runs} == {5}
    assert any("fixed random 5 of" in n for n in outcome.notes)
    assert (env / "schedule" / "figure.png").is_file()
    assert "3 steps (1,2,3)" in (env / "schedule" / "table.md").read_text()


@pytest.mark.slow
def test_data_size_preset_repeats_draws(env, synthetic_cohort):
    outcome = run_experiment("data-size", synthetic_cohort, env, "tiny",
                             small(per_class=[2, "full"], seed=[0, 1]))
    assert not outcome.failed and len(outcome.runs) == 4
    images = {(r.result["per_class"], r.result["seed"]): r.result["train_images"] for r in outcome.runs}
    assert images[(2, 0)] == images[(2, 1)] == 6  # 2 slices x 3 classes
    assert images[("full", 0)] > 6
    meta = json.loads((env / "data-size" / "experiment.json").read_text())
    header, table_rows = meta["table"]["header"], meta["table"]["rows"]
    assert [r[0] for r in table_rows] == ["2", "full"] and all(r[2] == "2" for r in table_rows)
    assert "BiT-M (%), published" in header and table_rows[1][-1] == "99.2"


@pytest.mark.slow
def test_table1_lists_published_and_measured_rows(env, synthetic_cohort):
    outcome = run_experiment("table1", synthetic_cohort, env, "tiny", small(init=["random"]))
    assert not outcome.failed
    table = (env / "table1" / "table.md").read_text()
    assert "| COVID-Net CT-2 L | published | 98.1 | 99.0 | 98.2 | 96.2 |" in table
    assert "| random | measured here (SYNTHETIC) |" in table
    header = table.splitlines()[6]
    assert "Sn NCP (%)" in header and "NPV Normal (%)" in header


@pytest.mark.slow
def test_covidctnet_ablation_preset(env, synthetic_cohort):
    outcome = run_experiment("covidctnet-ablation", synthetic_cohort, env, "tiny",
                             {"binary": [True], "epochs": 2})
    assert not outcome.failed
    assert [r.spec.axes for r in outcome.runs] == [{"stage": "denoiser"}, {"binary": True}]
    results = rows(env / "covidctnet-ablation" / "results.csv")
    models = [r["model"] for r in results if r["stage"] in ("classifier", "ablation")]
    assert models == ["with BCDU-Net + Perlin noise", "without BCDU-Net / Perlin noise"]
    # covidct's own row: the infection maps inside the lung mask (not in the paper).
    assert [r["model"] for r in results if r["stage"] == "lung_masked"] == [
        "infection maps inside the lung mask (not in the paper)"]
    meta = json.loads((env / "covidctnet-ablation" / "experiment.json").read_text())
    assert any(r[-1] == "published" and r[2] == "93.3" for r in meta["table"]["rows"])
    assert (env / "covidctnet-ablation" / "figure.png").is_file()


@pytest.mark.slow
def test_report_has_an_experiments_section(resolution_run):
    from covidct.report import build_report

    _, _, folder = resolution_run
    html = build_report(folder.parent, folder.parent / "report.html").read_text()
    assert 'id="experiments"' in html and "Test accuracy by input resolution" in html
    assert "Zhao et al. Fig. 6A" in html and "SYNTHETIC" in html
    # The experiment's own runs are summarised there, not drawn one by one under Training.
    assert "of the experiments above are not drawn one by one" in html


# -- overrides and bad input (no training) ------------------------------------------------------

def test_overrides_replace_axes_add_axes_and_settings(tmp_path):
    overrides = parse_set(["mixup=[true]", "grid.seed=[0, 1]", "batch_size=16", "schedule=1,2,4"])
    plan = make_plan(PRESETS["resolution"], "paper", overrides)
    assert plan.grid == {"resolution": ["128", "224", "384", "480"], "mixup": [True], "seed": [0, 1]}
    from covidct.cli.experiment import EXPERIMENTS
    assert EXPERIMENTS == tuple(PRESETS)  # the CLI spells the names out to start without torch
    assert plan.settings["batch_size"] == 16 and plan.settings["schedule"] == "1,2,4"
    specs = expand(plan, "paper")
    assert len(specs) == 8 and len({s.id for s in specs}) == 8
    config = tmp_path / "grid.yaml"
    config.write_text("grid:\n  init: [random, bit-m]\nsettings:\n  lr: 0.01\nmax_val: 500\n")
    assert read_config(config) == {"grid.init": ["random", "bit-m"], "lr": 0.01, "max_val": 500}
    # Other settings give other run folders, so an old run is never taken for a new one.
    again = expand(make_plan(PRESETS["resolution"], "paper", {**overrides, "lr": 0.01}), "paper")
    assert {s.id for s in again}.isdisjoint({s.id for s in specs})
    # ...but another device or worker count finds the same runs (to resume them elsewhere).
    moved = expand(make_plan(PRESETS["resolution"], "paper", {**overrides, "device": "cpu",
                                                               "workers": 0}), "paper")
    assert [s.id for s in moved] == [s.id for s in specs]


def test_bad_input_is_one_line_and_exit_2(tmp_path, synthetic_cohort, capsys):
    rc = cli_main(["experiment", "init", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "not a COVIDx-format dataset" in capsys.readouterr().err
    rc = cli_main(["experiment", "init", "--data", str(synthetic_cohort), "--out", str(tmp_path / "o"),
                   "--set", "colour=blue"])
    assert rc == 2 and "unknown setting 'colour'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [1, 2\n")
    rc = cli_main(["experiment", "init", "--data", str(synthetic_cohort), "--out", str(tmp_path / "o"),
                   "--config", str(bad)])
    assert rc == 2 and "bad.yaml" in capsys.readouterr().err
    with pytest.raises(CovidctError, match="CovidCTNet needs CT volumes"):
        run_experiment("covidctnet-ablation", synthetic_cohort / "covidx", tmp_path / "o", "tiny")


def test_find_data_takes_the_kaggle_layout_and_names_what_is_missing(tmp_path):
    from covidct.experiments import find_data

    for split in ("train", "val"):
        (tmp_path / f"{split}_COVIDx_CT-2A.txt").write_text("a.png 0 0 0 10 10\n")
    (tmp_path / "2A_images").mkdir()
    with pytest.raises(CovidctError, match="test_COVIDx_CT-2A.txt"):
        find_data(tmp_path, "slices")
    (tmp_path / "test_COVIDx_CT-2A.txt").write_text("b.png 2 0 0 10 10\n")
    data = find_data(tmp_path, "slices")
    assert data.images == tmp_path / "2A_images" and not data.synthetic
    assert data.description.startswith("COVIDx CT-2A-format slices")


def test_covidctnet_patient_cap_draws_whole_patients_per_class(synthetic_cohort, tmp_path):
    from covidct.experiments import find_data
    from covidct.experiments.jobs import patient_subset
    from covidct.covidctnet.volume_data import load_cohort

    data = find_data(synthetic_cohort, "volumes")
    params = {"max_patients_per_class": 2, "seed": 1, "val_fraction": 0.15, "test_fraction": 0.15}
    path = patient_subset(data, params, tmp_path)
    assert patient_subset(data, params, tmp_path).read_text() == path.read_text()  # seeded
    cohort = load_cohort(path)
    assert sorted(cohort.counts()["train"].values()) == [2, 2, 2] and cohort.synthetic
    assert len({i.patient_id for i in cohort.items}) == 6
