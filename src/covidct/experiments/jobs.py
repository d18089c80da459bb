"""One run of a grid: train with the library, score the test split, return a result row.

Each job trains into ``RUN_DIR/train`` (the library's own run folder, so a killed run is
resumed from its last checkpoint) and returns a flat dict that becomes one row of the
experiment's CSV; the runner writes it to ``RUN_DIR/result.json``, which marks the run done.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..constants import BIT_INITS, SLICE_CLASSES, VOLUME_CLASSES
from ..covidx import class_counts, read_split, write_split
from ..devices import choose_device
from ..errors import CovidctError
from ..evaluation import metrics_for
from ..metrics.tables import figure_parts
from ..models import load_model
from ..bit.schedule import parse_resolution, parse_schedule
from ..bit.train import TrainConfig, train
from ..bit.weights import resolve
from ..covidctnet.volume_data import load_cohort
from ..covidctnet.train import TrainConfig as VolumeTrainConfig, train as train_covidctnet
from .datasets import ExperimentData
from .presets import HYPERRULE, HYPERRULE_SMALL, TINY_RESOLUTIONS, TINY_SCHEDULES

log = logging.getLogger(__name__)

#: mixup's Beta(alpha, alpha) parameter when a run says ``mixup: true`` (BiT-HyperRule).
MIXUP_ALPHA = 0.1
#: Settings of CovidCTNet runs that only the classifier stage reads (the denoiser is shared).
CLASSIFIER_ONLY = ("binary", "epochs", "batch_size", "patience")
_FIGURES = (("sensitivity", "sn"), ("ppv", "ppv"), ("specificity", "sp"), ("npv", "npv"))


# -- the slice classifier ------------------------------------------------------------------

def resolution_of(value: Any, scale: str) -> tuple[int, int]:
    """(resize, crop): a paper preset (by crop size) shrinks at tiny scale; pairs are as given."""
    if isinstance(value, (list, tuple)):
        return parse_resolution(tuple(value))
    if scale == "tiny" and str(value) in TINY_RESOLUTIONS:
        return TINY_RESOLUTIONS[str(value)]
    return parse_resolution(str(value))


def schedule_of(value: Any, scale: str, train_images: int) -> tuple[int, ...]:
    if value == HYPERRULE:
        value = "bit-500" if train_images < HYPERRULE_SMALL else "bit-10000"
    if scale == "tiny" and isinstance(value, str) and value in TINY_SCHEDULES:
        return TINY_SCHEDULES[value]
    return parse_schedule(value if isinstance(value, (list, tuple)) else str(value))


def mixup_alpha_of(value: Any) -> float:
    if isinstance(value, bool):
        return MIXUP_ALPHA if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CovidctError(f"mixup {value!r}: use true, false or a Beta alpha such as 0.1") from None


def per_class_of(value: Any) -> int | None:
    if value in (None, "full", "all", 0):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CovidctError(f"per_class {value!r}: a number of images per class or 'full'") from None


def init_of(init: str, arch: str, scale: str) -> tuple[str, str | None]:
    """(init to train from, note). At tiny scale a named initialisation without a local
    weights file for the architecture becomes ``random`` and the note says so."""
    if scale != "tiny" or init == "random" or init not in BIT_INITS:
        return init, None
    try:
        source = resolve(init, arch)
    except CovidctError:
        source = None
    if source is not None and source.kind == "file":
        return init, None
    return "random", (f"tiny scale: no local {init} weights file for {arch}, so this run "
                      "started from random weights")


def _train_images(data: ExperimentData, per_class: int | None) -> int:
    counts = class_counts(read_split(data.split("train")))
    return sum(min(n, per_class) if per_class else n for n in counts.values())


def run_slice_job(params: dict[str, Any], run_dir: Path, data: ExperimentData) -> dict[str, Any]:
    scale = params["scale"]
    resize, crop = resolution_of(params["resolution"], scale)
    per_class = per_class_of(params.get("per_class"))
    schedule = schedule_of(params["schedule"], scale, _train_images(data, per_class))
    init, init_note = init_of(str(params["init"]), params["arch"], scale)
    out = run_dir / "train"
    config = TrainConfig(
        train_split=str(data.split("train")), images=str(data.images), out=str(out),
        val_split=str(data.split("val")), arch=params["arch"], init=init, resize=resize, crop=crop,
        schedule=schedule, batch_size=int(params["batch_size"]), lr=float(params["lr"]),
        mixup_alpha=mixup_alpha_of(params["mixup"]), workers=int(params["workers"]),
        val_every=int(params["val_every"]), max_val=params.get("max_val"),
        max_train_per_class=per_class, seed=int(params["seed"]), device=str(params["device"]),
        resume=(out / "checkpoints" / "last.pt").is_file(), progress=False,
        synthetic=True if data.synthetic else None,
        command=f"covidct experiment (run {run_dir.name})")
    summary = _finished_summary(out)
    if summary is None:
        result = train(config)
        if not result.summary.get("finished"):
            raise CovidctError("training stopped before its last step", out)
        summary = result.summary
    # Score the test split where training ran (a 25k-slice split at 480 px needs the GPU).
    model = load_model(out / "model.pt").to(choose_device(config.device))
    test_split, test_note = _test_split(data, params.get("max_test"), run_dir)
    scores = model.score_dataset(test_split, data.images, batch_size=config.batch_size,
                                 workers=config.workers)
    metrics = metrics_for(scores, n_boot=int(params["n_boot"]), seed=int(params["seed"]))
    note = "; ".join(n for n in (init_note, test_note) if n)
    return _slice_row(params, summary, metrics, init, note, (resize, crop), schedule, per_class,
                      _val_curve(out))


def _test_split(data: ExperimentData, max_test: Any, run_dir: Path) -> tuple[Path, str | None]:
    """The test split, or a fixed random subset of ``max_test`` slices (same for every run)."""
    import numpy as np

    records = read_split(data.split("test"))
    if not max_test or len(records) <= int(max_test):
        return data.split("test"), None
    keep = np.sort(np.random.default_rng(4243).choice(len(records), int(max_test), replace=False))
    path = write_split(run_dir / "test_subset.txt", [records[i] for i in keep])
    return path, f"test accuracy on a fixed random {int(max_test)} of {len(records)} test slices"


def _finished_summary(out: Path) -> dict[str, Any] | None:
    path = out / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    return summary if summary.get("finished") else None


def _val_curve(out: Path) -> list[list[float]]:
    """[[step, val_acc], ...] from the run's history.csv (the paper's Fig. 7)."""
    import csv

    with open(out / "history.csv", newline="", encoding="utf-8") as fh:
        return [[int(r["step"]), float(r["val_acc"])] for r in csv.DictReader(fh) if r.get("val_acc")]


def _value(figure: Any) -> float | None:
    value = figure_parts(figure)[0]
    return None if value is None else float(value)


def _slice_row(params, summary, metrics, init, init_note, resolution, schedule, per_class,
               curve) -> dict[str, Any]:
    slice_level, patient_level = metrics["slice"], metrics["patient"]
    row: dict[str, Any] = {
        "arch": params["arch"], "init": params["init"], "init_used": init,
        "resize": resolution[0], "crop": resolution[1], "mixup_alpha": mixup_alpha_of(params["mixup"]),
        "steps": schedule[-1], "schedule": ",".join(map(str, schedule)),
        "per_class": per_class if per_class else "full", "seed": params["seed"],
        "train_images": summary["data"]["train"]["slices"],
        "val_acc": summary.get("best_val_acc"), "final_val_acc": summary.get("final_val_acc"),
        "best_step": summary.get("best_step"),
        "test_acc": _value(slice_level["accuracy"]),
        "test_acc_ci_low": _ci(slice_level["accuracy"], 1), "test_acc_ci_high": _ci(slice_level["accuracy"], 2),
        "test_acc_patient": _value(patient_level["accuracy"]),
        "test_slices": slice_level.get("n_slices"), "test_patients": slice_level.get("n_patients"),
    }
    for cls in SLICE_CLASSES:
        per = slice_level["per_class"].get(cls, {})
        for name, short in _FIGURES:
            row[f"{short}_{cls}"] = _value(per.get(name))
    row["train_seconds"] = summary.get("train_seconds_this_session")
    row["note"] = init_note or ""
    row["val_curve"] = curve
    return row


def _ci(figure: Any, index: int) -> float | None:
    value = figure_parts(figure)[index]
    return None if value is None else float(value)


# -- CovidCTNet ------------------------------------------------------------------------------

def volume_config(params: dict[str, Any], data: ExperimentData, out: Path, stage: str,
                  denoiser_file: str | None = None):
    names = set(VolumeTrainConfig.__dataclass_fields__)
    fixed = {k: v for k, v in params.items() if k in names and k not in ("data", "out", "stage")}
    source = str(data.root)
    if params.get("max_patients_per_class"):
        # runs/<id>/train -> the experiment folder, shared by the denoiser and classifier runs
        source = str(patient_subset(data, params, out.parent.parent.parent / "cohorts"))
    return VolumeTrainConfig(data=source, out=str(out), stage=stage, ablation=True,
                       denoiser_file=denoiser_file, resume=True, progress=False, **fixed)


def patient_subset(data: ExperimentData, params: dict[str, Any], folder: Path) -> Path:
    """A labels CSV of at most ``max_patients_per_class`` random patients per class (seeded),
    without a split column, so they are split per class as the method did (its Fig. 1 used 50
    cases per class). The same settings always give the same file."""
    import csv
    import io

    import numpy as np

    limit, seed = int(params["max_patients_per_class"]), int(params.get("seed", 0))
    cohort = load_cohort(data.root, seed, float(params.get("val_fraction", 0.15)),
                         float(params.get("test_fraction", 0.15)))
    rng = np.random.default_rng([seed, 5050])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["patient_id", "volume_label", "path", "synthetic"])
    for label in VOLUME_CLASSES:
        members = sorted((i for i in cohort.items if i.label == label), key=lambda i: i.patient_id)
        keep = sorted(rng.choice(len(members), min(limit, len(members)), replace=False).tolist())
        for k in keep:
            item = members[k]
            writer.writerow([item.patient_id, item.label, str(Path(item.path).resolve()),
                             "yes" if (data.synthetic or cohort.synthetic) else "no"])
    return write_text(folder / f"max{limit}-per-class-seed{seed}.csv", buf.getvalue())


def run_denoiser_job(params: dict[str, Any], run_dir: Path, data: ExperimentData) -> dict[str, Any]:
    out = run_dir / "train"
    summary = train_covidctnet(volume_config(params, data, out, "denoiser"))
    facts = summary.get("denoiser") or {}
    return {"model": "BCDU-Net denoiser", "denoiser_file": str(out / "denoiser.pt"),
            "epochs_run": facts.get("epochs_run"), "best_val_loss": facts.get("best_loss"),
            "train_slices": facts.get("train_slices"), "seed": params.get("seed")}


def run_covidctnet_job(params: dict[str, Any], run_dir: Path, data: ExperimentData,
                       denoiser_file: Path) -> dict[str, Any]:
    if not denoiser_file.is_file():
        raise CovidctError("the shared denoiser run did not finish", denoiser_file)
    out = run_dir / "train"
    summary = train_covidctnet(volume_config(params, data, out, "classifier", str(denoiser_file)))
    history = _volume_history(out / "history.csv")
    models = []
    for key, label in (("classifier", "with BCDU-Net + Perlin noise"),
                       ("ablation", "without BCDU-Net / Perlin noise"),
                       ("lung_masked", "infection maps inside the lung mask (not in the paper)")):
        if key not in summary:
            continue
        result = summary.get(key) or {}
        row = {"model": label, "stage": key, "mode": summary.get("mode"),
               "binary": bool(params.get("binary")), "seed": params.get("seed"),
               "epochs_run": result.get("epochs_run"), "best_val_loss": result.get("best_loss")}
        for split in ("val", "test"):
            figures = result.get(split) or {}
            binary = figures.get("binary") or {}
            row[f"{split}_acc"] = _value(figures.get("accuracy"))
            row[f"{split}_covid_auc"] = _value(binary.get("auc"))
            row[f"{split}_covid_sn"] = _value(binary.get("sensitivity"))
            row[f"{split}_covid_sp"] = _value(binary.get("specificity"))
            row[f"{split}_n"] = figures.get("n_slices")
        row["curve"] = history.get(key, [])
        models.append(row)
    return {"models": models, "mode": summary.get("mode")}


def _volume_history(path: Path) -> dict[str, list[list[float | None]]]:
    """stage -> [[epoch, train_loss, val_loss, val_accuracy], ...] (the method's Fig. 1)."""
    import csv

    out: dict[str, list[list[float | None]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out.setdefault(r["stage"], []).append(
                [int(r["epoch"]), *(float(r[k]) if r.get(k) not in (None, "") else None
                                    for k in ("train_loss", "val_loss", "val_accuracy"))])
    return out
