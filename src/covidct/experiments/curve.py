"""The learning-curve experiment: both methods at the demo's sizes on SYNTHETIC cohorts that
the experiment makes itself, scored on held-out patients.

Per difficulty one cohort (``OUT/learning-curve/cohorts/``) with a training pool of the
largest number of training patients in the grid and fixed-size validation and test splits,
split by patient and stratified by class. A run of ``train_patients = n`` trains on the first
n pool patients, balanced over the classes (so smaller sets are subsets of larger ones), and
validates and tests on the same patients as every other run at that difficulty; the test
figures are patient-level with 95% patient-bootstrap CIs, as the demo's.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..constants import METHOD_BIT, METHOD_COVIDCTNET, SLICE_CLASSES, VOLUME_CLASS_FOLDERS
from ..covidx import split_path
from ..demo import DemoSettings, _headline, _in_demo_cache, bit_train_config
from ..errors import CovidctError
from ..evaluation import metrics_for, score
from ..models import load_model
from ..bit.train import train as train_slice_classifier
from ..synth.cohort import SETTINGS_FILE, CohortSettings, _settings_json, generate_cohort
from ..covidctnet.train import TrainConfig as VolumeTrainConfig, train as train_covidctnet

COHORTS = "cohorts"
#: Only the layouts the two methods read (no DICOM, no separate NIfTI): quicker to write.
COHORT_FORMATS = ("covidx", "covidctnet")


def cohort_settings(params: dict[str, Any]):
    pool, val, test = (int(params[k]) for k in ("pool_patients", "val_patients", "test_patients"))
    return CohortSettings(patients=pool + val + test, seed=int(params["seed"]),
                          difficulty=float(params["difficulty"]), matrix=int(params["matrix"]),
                          max_slices=params.get("max_slices"), split=(pool, val, test),
                          formats=COHORT_FORMATS)


def ensure_cohort(params: dict[str, Any], folder: Path) -> Path:
    """The cohort of this run's difficulty under ``folder``, generated unless an identical one
    (same synth.json) is there already."""
    settings = cohort_settings(params)
    root = folder / (f"difficulty-{settings.difficulty:g}_seed-{settings.seed}_"
                     f"pool-{params['pool_patients']}")
    wanted = json.loads(json.dumps(_settings_json(settings)))
    try:
        if json.loads((root / SETTINGS_FILE).read_text(encoding="utf-8")) == wanted:
            return root
    except (OSError, ValueError):
        pass
    generate_cohort(root, settings, progress=False)
    return root


def training_patients(cohort: Path, n: int) -> list[dict[str, str]]:
    """The first ``n`` training patients of the pool, balanced over the classes (counts differ
    by at most one), in patient order: a smaller set is a subset of a larger one."""
    with open(cohort / "labels.csv", newline="", encoding="utf-8") as fh:
        pool = [r for r in csv.DictReader(fh) if r["split"] == "train"]
    chosen = []
    for k, label in enumerate(SLICE_CLASSES):
        want = n // len(SLICE_CLASSES) + (1 if k < n % len(SLICE_CLASSES) else 0)
        members = [r for r in pool if r["label"] == label]
        if len(members) < want:
            raise CovidctError(f"train_patients={n} needs {want} {label} patients; the pool has "
                               f"{len(members)}", cohort)
        chosen += members[:want]
    return sorted(chosen, key=lambda r: r["patient_id"])


def write_subset(cohort: Path, patients: list[dict[str, str]], run_dir: Path) -> tuple[Path, Path]:
    """The run's training split (COVIDx lines of its patients) and labels CSV (its training
    patients plus every validation and test patient), both in ``run_dir``."""
    prefixes = tuple(r["covidx_prefix"] + "_" for r in patients)
    lines = split_path(cohort / "covidx", "train").read_text(encoding="utf-8").splitlines()
    split = write_text(run_dir / "training-split.txt", "".join(f"{line}\n" for line in lines
                                                       if line.startswith(prefixes)))
    keep = {r["patient_id"] for r in patients}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["patient_id", "volume_label", "split", "path", "synthetic"])
    with open(cohort / "labels.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] != "train" or row["patient_id"] in keep:
                writer.writerow([row["patient_id"], row["volume_label"], row["split"],
                                 str(_volume_path(cohort, row).resolve()), "yes"])
    return split, write_text(run_dir / "patients.csv", buf.getvalue())


def _volume_path(cohort: Path, row: dict[str, str]) -> Path:
    folder = VOLUME_CLASS_FOLDERS[SLICE_CLASSES.index(row["label"])]
    return cohort / "covidctnet" / folder / f"{row['patient_id']}.nii.gz"


def run_curve_job(params: dict[str, Any], run_dir: Path, experiment: Path) -> dict[str, Any]:
    """Train one method on ``train_patients`` patients of the run's cohort; test figures."""
    cohort = ensure_cohort(params, experiment / COHORTS)
    patients = training_patients(cohort, int(params["train_patients"]))
    split, labels = write_subset(cohort, patients, run_dir)
    method = params["method"]
    if method == METHOD_BIT:
        model, facts = _train_bit(params, cohort, split, run_dir / "train")
        data = cohort / "covidx"
    elif method == METHOD_COVIDCTNET:
        model, facts = _train_covidctnet(params, labels, run_dir / "train", experiment)
        data = cohort
    else:
        raise CovidctError(f"unknown method {method!r}; choose {METHOD_BIT} or {METHOD_COVIDCTNET}")
    return {"method": method, "train_patients": len(patients),
            "difficulty": float(params["difficulty"]), "seed": params["seed"],
            "sweeps": sweeps_of(params),
            "cohort": str(cohort.relative_to(experiment)), **facts,
            **_test_figures(model, data, params)}


def sweeps_of(params: dict[str, Any]) -> str:
    """Which curves the run is a point of: "train_patients" (at the centre difficulty),
    "difficulty" (at the centre number of training patients), or both (the centre)."""
    centre = params["centre"]
    return ";".join(axis for axis, other in (("train_patients", "difficulty"),
                                             ("difficulty", "train_patients"))
                    if float(params[other]) == float(centre[other]))


def _demo_settings(params: dict[str, Any]):
    names = DemoSettings.__dataclass_fields__
    return DemoSettings(**{k: v for k, v in params.items() if k in names})


def _train_bit(params, cohort: Path, split: Path, out: Path):
    config = bit_train_config(_demo_settings(params), split, cohort / "covidx", out, False,
                              "covidct experiment learning-curve")
    summary = _finished(out)
    if summary is None:
        summary = train_slice_classifier(config).summary
    return load_model(out / "model.pt"), {
        "train_slices": summary["data"]["train"]["slices"], "val_acc": summary.get("best_val_acc"),
        "train_seconds": summary.get("train_seconds_this_session")}


def _finished(out: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if summary.get("finished") else None


def _train_covidctnet(params, labels: Path, out: Path, experiment: Path):
    # The demo's CovidCTNet settings carry TrainConfig's own names.
    fixed = {k: v for k, v in params.items() if k in VolumeTrainConfig.__dataclass_fields__
             and k not in ("data", "out", "ablation")}
    summary = train_covidctnet(VolumeTrainConfig(
        data=str(labels), out=str(out), ablation=False, device="cpu",
        cache_dir=str(experiment / ".cache"), resume=True, progress=False, **fixed))
    classifier = summary.get("classifier") or {}
    return _in_demo_cache(load_model(out / "model.pt"), experiment), {
        "epochs_run": classifier.get("epochs_run"), "val_loss": classifier.get("best_loss")}


def _test_figures(model, data: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Patient-level accuracy and COVID-vs-rest AUC on the test patients, with 95% CIs."""
    metrics = metrics_for(score(model, data, "test"), n_boot=int(params["n_boot"]),
                          seed=int(params["seed"]))
    head = _headline(metrics)
    row: dict[str, Any] = {"level": head["level"], "test_patients": head["n_patients"]}
    for name, key in (("accuracy", "test_acc"), ("covid_auc", "test_covid_auc")):
        figure = head[name] or {}
        for part in ("value", "ci_low", "ci_high"):
            row[key + ("" if part == "value" else f"_{part}")] = figure.get(part)
    return row
