"""The Experiments and Training sections: each `covidct experiment` folder and each training run
(settings, finished or not, training curves)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..explain.curves import plot_training_curves, read_history
from ..explain.plotting import figure_bytes
from .common import method_title, run_method
from .discover import Findings
from .guide import HOW
from .html import esc, figure, img, key_values, missing, note, pct, section, table


def experiments_section(found: Findings) -> str:
    """Each `covidct experiment` folder: its table (published rows marked) and its figure."""
    if not found.experiments:
        return section("experiments", "Experiments", missing(
            "No paper experiments found", "experiment.json written by covidct experiment"))
    parts = []
    for exp in found.experiments:
        content = exp.content
        badge = ' <span class="badge syn">SYNTHETIC</span>' if exp.synthetic else ""
        parts.append(f"<h3>{esc(content.get('title') or content['experiment'])} "
                     f"<code>{esc(found.relative(exp.path))}</code>{badge}</h3>")
        runs = content.get("runs") or []
        failed = [r for r in runs if r.get("status") == "failed"]
        data = content.get("data") or {}
        parts.append(key_values([("reproduces", content.get("paper")), ("scale", content.get("scale")),
                                 ("data", data.get("description")),
                                 ("runs", f"{len(runs) - len(failed)} finished, {len(failed)} failed")],
                                columns=2))
        table_spec = content["table"]
        parts.append(table(table_spec.get("header") or [], table_spec.get("rows") or [],
                           caption=table_spec.get("caption", "")))
        for text in content.get("notes") or []:
            parts.append(note(text))
        for run in failed:
            parts.append(note(f"Failed run {run.get('id')}: {run.get('error')}"))
        if exp.figure is not None and exp.figure.is_file():
            parts.append(figure(img(exp.figure.read_bytes(), "image/png", content["experiment"]),
                                f"{content.get('title')} ({content.get('paper')})", HOW["experiments"]))
    return section("experiments", "Experiments", "".join(parts))


#: Settings shown for a run, when present (slice classifier, then CovidCTNet).
_RUN_KEYS = ("arch", "init", "weights", "resize", "crop", "schedule", "batch_size", "lr", "momentum",
             "mixup_alpha", "balanced", "jitter", "stage", "binary", "slice_size", "volume_slices",
             "max_denoised_slices", "denoiser_epochs", "denoiser_lr", "epochs", "patience",
             "ablation", "seed", "device", "processes")


def training_section(found: Findings) -> str:
    # An experiment's runs are summarised in its own section; dozens of curves would bury the rest.
    runs = [r for r in found.runs if not any(e.path in r.path.parents for e in found.experiments)]
    skipped = len(found.runs) - len(runs)
    skipped_note = note(f"{skipped} training run(s) of the experiments above are not drawn one by one "
                        "(see the Experiments section; each run folder holds its history.csv).") if skipped else ""
    if not runs:
        return section("training", "Training", skipped_note or missing(
            "No training runs found", "folders with config.json and history.csv"))
    parts, histories = [skipped_note], {}
    for run in runs:
        name = found.relative(run.path)
        badge = ' <span class="badge syn">SYNTHETIC</span>' if run.synthetic else ""
        method = run_method(run)
        parts.append(f"<h3>{esc(method_title(method) + ': ' if method else '')}run "
                     f"<code>{esc(name)}</code>{badge}</h3>")
        summary = run.summary or {}
        facts = [(k.replace("_", " "), _plain(run.config[k])) for k in _RUN_KEYS if k in run.config]
        # summary.json is written last by both methods' training, so it marks a finished run.
        finished = run.summary is not None and summary.get("finished", True)
        facts += [("finished", "yes" if finished else "no (no summary.json yet)"),
                  ("best validation accuracy", pct(summary["best_val_acc"]) if isinstance(summary.get("best_val_acc"), (int, float)) else None),
                  ("model weights", summary.get("model_weights")),
                  ("training time", f"{summary['train_seconds_this_session']:.0f} s"
                   if isinstance(summary.get("train_seconds_this_session"), (int, float)) else None)]
        parts.append(key_values(facts, columns=3))
        try:
            history = read_history(run.path / "history.csv")
            fig = plot_training_curves(history, synthetic=run.synthetic)
        except Exception as exc:  # a half-written or foreign history must not sink the report
            parts.append(note(f"history.csv could not be plotted ({exc})."))
            continue
        histories[name] = history
        parts.append(figure(img(figure_bytes(fig, "svg"), "image/svg+xml", "training curves"),
                            "Training curves: loss, learning rate and validation accuracy over steps",
                            HOW["curves"]))
    with_acc = {k: {c: v for c, v in h.items() if c in ("step", "epoch", "val_acc")}
                for k, h in histories.items() if "val_acc" in h and np.isfinite(h["val_acc"]).any()}
    if len(with_acc) > 1:
        fig = plot_training_curves(with_acc, title="Validation accuracy of all runs", synthetic=found.synthetic)
        parts.append(figure(img(figure_bytes(fig, "svg"), "image/svg+xml", "validation accuracy"),
                            "Validation accuracy of every run (as the BiT paper's Fig. 7)",
                            "one line per run; higher and earlier is better."))
    return section("training", "Training", "".join(parts))


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
