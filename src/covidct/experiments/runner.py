"""Run an experiment's grid as separate, resumable jobs and write its results.

Folder layout (``OUT/<experiment>/``)::

    experiment.json          what ran: preset, scale, data (and whether synthetic), grid,
                             settings, per-run status, notes, the summary table; the report
                             reads this
    results.csv              one row per run (failed runs too, with their error)
    table.md                 the summary table in the paper's layout, published rows marked
    figure.png               the paper's figure, measured here
    runs/<run id>/spec.json  the run's settings
    runs/<run id>/train/     the library's training run folder (checkpoints: resumable)
    runs/<run id>/result.json  written last: the run is finished and is skipped next time
    runs/<run id>/error.json   why the last attempt failed (retried on the next invocation)
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..atomic import write_json
from ..constants import SYNTHETIC_NOTICE
from ..errors import CovidctError
from . import jobs
from .curve import COHORTS, run_curve_job
from .datasets import ExperimentData, find_data
from .grid import RunSpec, expand, make_plan, run_id
from .presets import KIND_COHORTS, KIND_SLICES, PRESETS, SCALES, Preset

log = logging.getLogger(__name__)

RESULT, ERROR, SPEC = "result.json", "error.json", "spec.json"
EXPERIMENT_FILE = "experiment.json"


@dataclass
class RunStatus:
    spec: RunSpec
    status: str                     # "done", "skipped" (finished before) or "failed"
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Outcome:
    name: str
    folder: Path
    data: ExperimentData
    runs: list[RunStatus] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[RunStatus]:
        return [r for r in self.runs if r.status == "failed"]


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CovidctError(f"unknown experiment {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def run_experiment(name: str, data: str | Path | None, out: str | Path, scale: str = "paper",
                   overrides: dict[str, Any] | None = None,
                   echo: Callable[[str], None] | None = None) -> Outcome:
    """Run (or continue) every run of experiment ``name``; write CSV, table, figure, JSON."""
    # lazy: imports matplotlib, which this module does not need on import
    from .outputs import write_outputs

    preset = get_preset(name)
    if scale not in SCALES:
        raise CovidctError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    echo = echo or (lambda line: None)
    folder = Path(out) / preset.name
    plan = make_plan(preset, scale, overrides or {})
    specs = expand(plan, scale)
    dataset = (_own_cohorts(folder, data) if preset.kind == KIND_COHORTS
               else _given_data(data, preset))
    outcome = Outcome(preset.name, folder, dataset)
    tag = " [SYNTHETIC DATA]" if dataset.synthetic else ""
    echo(f"experiment {preset.name} ({preset.figure}), scale {scale}: {len(specs)} run(s){tag}")
    echo(f"data: {dataset.description}")
    if scale == "tiny" and preset.kind == KIND_SLICES:
        echo(f"tiny scale: {plan.settings.get('arch', 'grid arch')}, small crops and few steps; a "
             "named initialisation without a local weights file trains from random weights")
    if preset.kind == KIND_COHORTS:
        _run_curve(specs, folder, outcome, echo)
    elif preset.kind == KIND_SLICES:
        _run_slices(specs, folder, dataset, outcome, echo)
    else:
        _run_volumes(specs, folder, dataset, outcome, echo)
    outcome.notes = _notes(outcome, scale)
    for note in outcome.notes:
        echo(f"note: {note}")
    outcome.files = write_outputs(preset, outcome, plan, scale, command=_command())
    done = sum(r.status != "failed" for r in outcome.runs)
    echo(f"{done} of {len(outcome.runs)} run(s) finished; results in {folder}")
    for run in outcome.failed:
        echo(f"FAILED {run.spec.id}: {run.error}")
    if dataset.synthetic:
        echo(SYNTHETIC_NOTICE)
    return outcome


def _given_data(data: str | Path | None, preset: Preset) -> ExperimentData:
    if data is None:
        raise CovidctError(f"experiment {preset.name} needs --data (see covidct experiment --help)")
    return find_data(data, preset.kind)


def _own_cohorts(folder: Path, data: str | Path | None) -> ExperimentData:
    if data is not None:
        raise CovidctError("the learning curve makes its own synthetic cohorts (in "
                           f"{folder / COHORTS}); leave out --data")
    return ExperimentData(folder / COHORTS, KIND_COHORTS,
                          "SYNTHETIC cohorts made by the experiment (covidct synth, one per "
                          f"difficulty) in {folder / COHORTS}", True)


def _run_curve(specs: list[RunSpec], folder: Path, outcome: Outcome, echo) -> None:
    """Every run draws its training patients from one pool per difficulty, as large as the
    largest run's (part of each run's settings, so a larger grid reruns every point)."""
    pool = max(int(s.params["train_patients"]) for s in specs)
    for k, spec in enumerate(specs, 1):
        params = {**spec.params, "pool_patients": pool}
        spec = RunSpec(run_id(spec.axes, params), spec.axes, params)
        outcome.runs.append(run_job(spec, folder / "runs",
                                    lambda p, d: run_curve_job(p, d, folder),
                                    f"[{k}/{len(specs)}]", echo))


def _command() -> str:
    return shlex.join(["covidct", *sys.argv[1:]]) if sys.argv and "covidct" in sys.argv[0] else ""


def _run_slices(specs, folder, dataset, outcome, echo) -> None:
    for k, spec in enumerate(specs, 1):
        status = run_job(spec, folder / "runs", lambda p, d: jobs.run_slice_job(p, d, dataset),
                         f"[{k}/{len(specs)}]", echo)
        outcome.runs.append(status)


def _run_volumes(specs, folder, dataset, outcome, echo) -> None:
    """One denoiser per distinct denoiser setting (shared by the 2- and 3-class runs), then
    each classifier run with its ablation."""
    denoisers: dict[str, RunStatus] = {}
    total = len(specs)
    for spec in specs:
        params = {k: v for k, v in spec.params.items() if k not in jobs.CLASSIFIER_ONLY}
        did = run_id({"denoiser": "bcdunet"}, params)
        if did not in denoisers:
            dspec = RunSpec(did, {"stage": "denoiser"}, params)
            denoisers[did] = run_job(dspec, folder / "runs",
                                     lambda p, d: jobs.run_denoiser_job(p, d, dataset),
                                     "[denoiser]", echo)
            outcome.runs.append(denoisers[did])
    for k, spec in enumerate(specs, 1):
        params = {k2: v for k2, v in spec.params.items() if k2 not in jobs.CLASSIFIER_ONLY}
        denoiser = folder / "runs" / run_id({"denoiser": "bcdunet"}, params) / "train" / "denoiser.pt"
        outcome.runs.append(run_job(
            spec, folder / "runs", lambda p, d: jobs.run_covidctnet_job(p, d, dataset, denoiser),
            f"[{k}/{total}]", echo))


def run_job(spec: RunSpec, runs_dir: Path, work: Callable[[dict, Path], dict], label: str,
            echo: Callable[[str], None]) -> RunStatus:
    """Skip a finished run, else run it; an exception fails this run only (recorded)."""
    run_dir = runs_dir / spec.id
    done = run_dir / RESULT
    if done.is_file():
        result = json.loads(done.read_text(encoding="utf-8"))
        echo(f"{label} {spec.id}: finished before, skipped")
        return RunStatus(spec, "skipped", result)
    write_json(run_dir / SPEC, {"id": spec.id, "axes": spec.axes, "params": spec.params})
    echo(f"{label} {spec.id}: running")
    start = time.perf_counter()
    try:
        result = work(spec.params, run_dir)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken run must not stop the grid; it is reported
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CovidctError) else str(exc)
        write_json(run_dir / ERROR, {"error": message, "traceback": traceback.format_exc()})
        log.debug("run %s failed", spec.id, exc_info=True)
        echo(f"{label} {spec.id}: FAILED ({message})")
        return RunStatus(spec, "failed", error=message, seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    result = {"id": spec.id, "axes": spec.axes, "seconds": seconds, **result}
    write_json(done, result)
    (run_dir / ERROR).unlink(missing_ok=True)
    echo(f"{label} {spec.id}: done in {seconds:.0f} s{_headline(result)}")
    return RunStatus(spec, "done", result, seconds=seconds)


def _headline(result: dict[str, Any]) -> str:
    if result.get("test_acc") is not None:
        return f", test accuracy {result['test_acc']:.3f}"
    models = result.get("models") or []
    parts = [f"{m['stage']} test accuracy {m['test_acc']:.3f}" for m in models
             if m.get("test_acc") is not None]
    return (", " + "; ".join(parts)) if parts else ""


def _notes(outcome: Outcome, scale: str) -> list[str]:
    notes = []
    if outcome.data.synthetic:
        notes.append("SYNTHETIC data: these results say nothing about patients.")
    if outcome.data.kind == KIND_COHORTS:
        notes.append("both methods at the demo's sizes (covidct.demo.DemoSettings, with this "
                     "experiment's overrides) whatever --scale says: tiny networks, low "
                     "resolution, from random weights.")
    elif scale == "tiny":
        notes.append("tiny scale: shrunken network, resolution and steps; numbers are a smoke "
                     "test of the pipeline, not a reproduction of the paper.")
    subsets = {str(r.result.get("note")) for r in outcome.runs
               if r.result and "test slices" in str(r.result.get("note"))}
    notes += sorted({n.split("; ")[-1] for n in subsets})
    substituted = sorted({str(r.result.get("init")) for r in outcome.runs
                          if r.result and r.result.get("init_used") not in (None, r.result.get("init"))})
    if substituted:
        notes.append(f"initialisations trained from random weights instead (no local weights "
                     f"file): {', '.join(substituted)}")
    return notes
