"""`make demo`: the whole job on the embedded default, a SYNTHETIC cohort, on a laptop CPU.

One call, :func:`run_demo`, does what a user of the two papers would do on their own data,
at sizes that fit a 2-core CPU in minutes::

    cohort/               covidct synth: phantoms with Normal / CP / NCP findings, split by patient
    runs/bit/             covidct train-bit: the BiT slice classifier (tiny BiT-layout ResNet-v2, low resolution)
    runs/covidctnet/      covidct train-covidctnet: BCDU-Net denoiser + 3D CNN (--ablation: the no-BCDU-Net ablation)
    models/{bit,covidctnet}.pt       the trained models (covidct predict finds them here)
    evaluation/{bit,covidctnet}/     covidct evaluate + explanations on the held-out test patients
    prediction/<patient>/            covidct predict of one held-out DICOM series with both methods
    report.html           covidct report of everything above
    demo.json             what ran, the settings, timings and the headline figures (written last)

A second run reuses every stage whose output is complete and was made with the same
settings (an interrupted training resumes from its last checkpoint). The figures describe
phantoms, not patients: every output says SYNTHETIC.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .atomic import atomic_path, write_json
from .constants import DISCLAIMER, METHOD_BIT, METHOD_COVIDCTNET, SYNTHETIC_NOTICE
from .covidx import IMAGES_DIR, split_path
from .errors import CovidctError
from .labels import LABELS_CSV, read_labels
from .metrics.tables import format_figure

log = logging.getLogger(__name__)

SETTINGS_FILE = "demo-settings.json"
SUMMARY_FILE = "demo.json"


@dataclass(frozen=True)
class DemoSettings:
    """Overrides of the methods' defaults that make the demo fit a 2-core CPU in under 10
    minutes; everything not named here is the method's default (covidct.bit.train and
    covidct.covidctnet.train TrainConfig)."""

    # 30 per class: 54 train, 18 val, 18 test patients (was 60: 36/12/12). CovidCTNet's 3D CNN
    # learns from one volume per patient and gained from more of them; on the development
    # cohort (DemoSettings(seed=1000), 60 patients, never a demo seed), the same denoisers
    # (demo seeds 0-2's), two members of 60 epochs, one thread: patient accuracy / COVID AUC
    # 0.889 / 0.968 -> 0.922 / 0.983 (0.867 0.867 0.933 -> 0.900 0.933 0.933); the slice
    # classifier at 2000 steps 0.911 / 0.975 -> 0.914 / 0.974, no change. Cost: about 1.5
    # minutes more (DEMO.md, "Thirteenth round")
    patients: int = 90
    difficulty: float = 0.0           # large, typical lesions (--difficulty for harder ones)
    matrix: int = 128
    seed: int = 0
    # slice classifier: the tiny BiT-layout network at low resolution, from scratch (no
    # download), with the HyperRule's random crop (72 -> 64), flips and mixup: without them
    # (300 steps) it memorised the training patients (validation slices 0.63-0.68); with them
    # and 1000 steps, 0.75-0.77 and 9 of 12 validation patients; with class-balanced
    # sampling as well (Normal patients give every lung slice), 0.81 and 11 of 12
    bit_arch: str = "resnetv2_tiny_bit"
    bit_resolution: tuple[int, int] = (72, 64)
    # 2000 steps (was 1000; warm-up 100, decays at 1000, 1500 and 1800): at 1000 the training
    # loss (mixup and jitter on) was still falling when the rate first dropped. Chosen on
    # validation patients and the development cohort (DemoSettings(seed=1000), 60 patients,
    # never a demo seed), demo seeds 0-3's cohorts, two training seeds each, one thread:
    # validation patient accuracy 0.948 -> 0.979 (COVID AUC 1.00 both), development cohort
    # 0.860 / 0.945 -> 0.906 / 0.965 (accuracy / COVID AUC), higher on all four cohorts; 96 px
    # instead of 64 was worse (0.790 / 0.906). Cost: about a minute more (DEMO.md, "Thirteenth
    # round")
    bit_schedule: tuple[int, ...] = (100, 1000, 1500, 1800, 2000)
    bit_batch_size: int = 32
    bit_lr: float = 0.01
    bit_mixup_alpha: float = 0.1      # the paper's
    bit_balanced: bool = True         # the paper sampled as the data came
    # what the network reads of each slice (covidct.bit.settings.CROP_RULES; the paper: the
    # body box in the COVIDx picture): the aerated lungs' box, re-read in [-1000, -100] HU. In
    # the body box at 64 px the lungs are a fifth of the input and ground glass sits 40-60 grey
    # levels above lung. Chosen on VALIDATION patients by a rule written before the new seeds
    # ran (DEMO.md, "Sixth round": mean patient accuracy >= 0.04 higher, mean COVID AUC not
    # lower, >= 6 seeds); patient accuracy, one thread, seeds 0-7: body box 0.92 0.92 0.58 0.75 0.67
    # 0.67 0.67 0.92 (mean 0.76, COVID AUC mean 0.91), these 1.00 0.67 0.92 1.00 0.83 0.83 0.83
    # 0.83 (mean 0.87, AUC mean 0.97; AUC no lower on any seed) (DEMO.md, "Sixth round")
    bit_crop_rule: str = "lungs"
    # ... and each training slice scaled, turned and shifted in contrast a little as well
    # (train-bit --jitter; the paper: crop and flip). 12 (now 18) training patients per class
    # span few body sizes and postures: seed 1's Normal test patients were all called CP or
    # NCP. Chosen by the rule above, seeds 0-5, two training seeds each: validation patient
    # accuracy 0.861 -> 0.903, COVID AUC 0.987 both; on a development cohort of 60 patients
    # (seed 1000, never a demo seed) 0.767 -> 0.826, AUC 0.897 -> 0.931 (DEMO.md, "Ninth
    # round")
    bit_jitter: bool = True
    bit_rewindow: str | None = "lung-detail-wide"
    # Kept after a search on the VALIDATION patients of seeds 0/1/2 (issue 12; patient accuracy,
    # COVID AUC; one thread): these settings 0.92/1.00, 0.92/1.00, 0.58/0.88; 2000 steps
    # 1.00/1.00, 0.67/0.88, 0.58/0.94; 96 px (seed 1) 0.58/0.94; no mixup 0.83/1.00,
    # 0.83/1.00, 0.58/0.88; patient-balanced sampling 0.92/1.00, 0.67/1.00, 0.33/0.94. None
    # is better on every seed: validation slices stay at 0.57-0.66 on seeds 1 and 2 (0.80-0.85
    # on seed 0), i.e. the limit is what the network generalises from 12 patients per class,
    # not steps, resolution, mixup or sampling (DEMO.md, "The slice classifier on three seeds")
    # CovidCTNet at small size: 48-pixel slices, 40-slice volumes (all 40 through BCDU-Net,
    # none averaged away), a narrower BCDU-Net
    slice_size: int = 48
    volume_slices: int = 40
    max_denoised_slices: int = 40
    denoiser_width: int = 16
    slices_per_scan: int = 32
    denoiser_epochs: int = 8
    denoiser_lr: float = 2e-3
    noise_region: str = "lungs"       # pseudo-infection in the lungs (the method: whole slice)
    # pseudo-infection as Perlin-shaped opacities from ground glass to consolidation, half of
    # it as a lobar consolidation against the chest wall, whose pixels weigh 10x in the loss
    # (the method adds the signed noise, which never looks like consolidation, and weighs all
    # pixels alike): map voxel AUC on the validation patients of seeds 0/1/2 0.66/0.60/0.58
    # (opacity, 4 epochs) -> 0.75/0.89/0.82 (DEMO.md, "Second round")
    noise_kind: str = "lobar"
    # ... whose pixels weigh 30x in the loss (was 10x), and the kept epoch is the one whose map
    # best singles out the pseudo-infection on the validation control slices (train-covidctnet
    # --denoiser-select map-auc; the method: the lowest validation loss), all 8 epochs run.
    # The loss mostly measures copying: from one epoch to the next the map's voxel AUC against
    # the true lesions swung between 0.28 and 0.96, and the pseudo-infection's AUC with it.
    # Chosen on the development cohort (DemoSettings(seed=1000), 60 patients, never a demo
    # seed), denoisers of demo seeds 0/1/2's cohorts, one thread, the method's map (no lung
    # mask) inside the true lungs: 10x, kept by map AUC, 0.924/0.858/0.775; 30x 0.901/0.961/
    # 0.912. CovidCTNet on their maps, two members of 60 epochs: patient accuracy / COVID AUC
    # 0.872/0.975 (the demo's old denoisers) -> 0.889/0.968, worst of three 0.78 -> 0.87
    # (DEMO.md, "Twelfth round")
    noise_weight: float = 30.0
    denoiser_select: str = "map-auc"
    denoiser_patience: int = 8
    # the 3D CNN reads the map inside the lung mask (covidct.lungs; the method: the whole
    # map). Outside the lungs the map is 5-7x larger (heart, chest wall, table) than inside
    # and carries no class: hand-made features of the whole map were at chance on the
    # validation patients, inside the lungs 0.58-0.92 (DEMO.md, "Third round")
    mask_input: bool = True
    # ... less one voxel of the mask's outline in every slice (VolumeSettings.mask_erode; 0
    # until now). On Control scans 61-71% of the map's voxels above 0.1 sat on that outline
    # (chest wall and heart on the 48-px grid). Chosen on VALIDATION patients by the rule of
    # the slice classifier's settings above; best-validation-loss epoch, accuracy, seeds 0-6:
    # whole mask 0.92 0.83 0.67 0.67 0.33 0.50 1.00 (mean 0.70, COVID AUC mean 0.80), eroded
    # 0.92 0.83 0.58 0.83 0.83 0.58 0.92 (mean 0.79, AUC mean 0.96) (DEMO.md, "Sixth round")
    mask_erode: int = 1
    # the 3D CNN reads the map and the CT inside the lungs as two channels (train-covidctnet
    # --cnn-input infection+volume; the method: the map alone). The map misses CAP's
    # consolidation, which the CT shows. Chosen on VALIDATION patients by the rule above, the
    # demo runs' own denoisers and maps, seeds 0-5, two training seeds each: accuracy 0.66 ->
    # 0.85 (mean), COVID-vs-rest AUC 0.83 -> 0.94 (DEMO.md, "Eighth round")
    cnn_input: str = "infection+volume"
    # two 3D CNNs of 60 epochs each, their probabilities averaged (train-covidctnet
    # --cnn-members 2 --epochs 60; before: one of 40). Chosen on the development cohort
    # (DemoSettings(seed=1000), 60 patients, never a demo seed): each demo run's denoiser and
    # maps (seeds 0-2), 3 training seeds each, patient accuracy / COVID-vs-rest AUC: one 3D CNN
    # of 20 epochs 0.748 / 0.882, 40 0.819 / 0.950, 60 0.865 / 0.967, 100 0.823 / 0.936 (8
    # runs); two of 60 averaged 0.896 / 0.980 (worst run 0.78; one of 40: 0.73). Cost: the
    # CovidCTNet stage took 130-186 s on fresh seeds 20-22 (129-141 s before on seeds 14-16),
    # the members training side by side (DEMO.md, "Eleventh round")
    cnn_members: int = 2
    epochs: int = 60
    batch_size: int = 8               # 7 steps per epoch on 54 training patients
    # the rate falls along a half cosine to zero over the epochs, all of which run: at a
    # constant 1e-3 the validation loss jumped between 0.3 and 5 from one epoch to the next
    lr_schedule: str = "cosine"
    patience: int = 60
    # BatchNorm after each 3D CNN convolution, Adam 1e-3 reached over a 3-epoch warm-up (the
    # method: no normalisation, 1e-4). Without them the CNN sat at ln 3 for about 50 epochs;
    # with them it left it within 40 on the validation patients: best validation loss / accuracy
    # / COVID-vs-rest AUC 1.11 / 0.42 / 0.50 -> 0.93 / 0.67 / 0.88 (seed 0), 1.08 / 0.58 /
    # 0.69 -> 0.97 / 0.58 / 0.88 (seed 1), 1.07 / 0.42 / 0.66 -> 1.04 / 0.58 / 0.66 (seed 2),
    # same denoisers (DEMO.md, "Second round")
    cnn_norm: str = "batch"
    lr: float = 1e-3
    lr_warmup_epochs: int = 3
    # infection maps (SD ~0.05) scaled to SD 1 for the 3D CNN, which then learns at the
    # method's Adam 1e-4 (unscaled, it sat at ln 3; scaled at 1e-3 its ReLUs died: ln 3 again)
    standardise_inputs: bool = True
    # random flips and shifts of the 3D CNN's training inputs (the method: none): without them
    # it memorised the 36 training patients within 5 epochs (best validation loss 1.13,
    # accuracy 0.42); with them 1.06 and 0.50 on the same maps, 1.12 and 0.33 on the opacity
    # denoiser's (validation patients, seed 0): it no longer memorises, but the maps do not
    # yet carry the classes (DEMO.md, "CovidCTNet's map, checked against truth")
    augment: bool = True
    # The method's no-BCDU-Net ablation (the same 3D CNN on plain volumes) took 133 of the
    # demo's 712 s on a quiet 2-core AVX2 machine (seed 0, 2026-12-04) and is not needed for
    # its figures: `covidct demo --ablation` (or train-covidctnet, where it stays on) adds it.
    ablation: bool = False
    n_boot: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as read back


@dataclass
class DemoResult:
    out: Path
    report: Path
    summary: dict[str, Any]
    lines: list[str] = field(default_factory=list)


class _Stages:
    """Numbered stage messages with timings; `reused` stages say so."""

    def __init__(self, total: int, say: Callable[[str], None]):
        self.total, self.say, self.number, self.timings = total, say, 0, {}

    def run(self, name: str, done: bool, work: Callable[[], Any]) -> Any:
        self.number += 1
        prefix = f"[{self.number}/{self.total}] {name}"
        if done:
            self.say(f"{prefix}: reused")
            self.timings[name] = 0.0
            return None
        self.say(f"{prefix} ...")
        start = time.perf_counter()
        value = work()
        self.timings[name] = round(time.perf_counter() - start, 1)
        self.say(f"{prefix}: done in {self.timings[name]:.0f} s")
        return value


def run_demo(out: str | os.PathLike = "demo-output", settings: DemoSettings = DemoSettings(),
             progress: bool = True, say: Callable[[str], None] = print) -> DemoResult:
    """Run every stage (reusing finished ones) and return the report path and summary."""
    out = Path(out)
    _prepare_folder(out, settings)
    stages = _Stages(8, say)
    cohort, covidx = out / "cohort", out / "cohort" / "covidx"
    runs, models, evaluation = out / "runs", out / "models", out / "evaluation"

    stages.run("synthetic cohort", _cohort_done(cohort, settings),
               lambda: _make_cohort(cohort, settings, progress))
    stages.run("train the BiT slice classifier", _bit_done(runs / METHOD_BIT),
               lambda: _train_bit(covidx, runs / METHOD_BIT, settings, progress))
    _publish(runs / METHOD_BIT / "model.pt", models / f"{METHOD_BIT}.pt")
    stages.run("train CovidCTNet", _covidctnet_done(runs / METHOD_COVIDCTNET),
               lambda: _train_covidctnet(cohort, runs / METHOD_COVIDCTNET, out, settings, progress))
    _publish(runs / METHOD_COVIDCTNET / "model.pt", models / f"{METHOD_COVIDCTNET}.pt")
    stages.run("int8 graphs for the default runtime (checked against float32)",
               _int8_done(models, out), lambda: _int8(cohort, covidx, models, out, say))
    for method, data in ((METHOD_BIT, covidx), (METHOD_COVIDCTNET, cohort)):
        folder = evaluation / method
        stages.run(f"evaluate {method} on the held-out test patients", _evaluated(folder),
                   lambda m=method, d=data, f=folder: _evaluate(models / f"{m}.pt", d, f, out, settings))
    patient = held_out_patient(cohort)
    prediction_dir = out / "prediction" / patient["patient_id"]
    stages.run(f"predict held-out patient {patient['patient_id']} (DICOM) with both methods",
               (prediction_dir / "summary.json").is_file(),
               lambda: _predict(cohort / "patients" / patient["patient_id"] / "dicom",
                                models, prediction_dir, out))
    report = stages.run("write the report", False, lambda: _report(out))
    summary = _summary(out, settings, patient, prediction_dir, stages.timings)
    write_json(out / SUMMARY_FILE, summary)
    return DemoResult(out=out, report=report, summary=summary, lines=summary_lines(summary))


# -- the folder --------------------------------------------------------------------------------

def _prepare_folder(out: Path, settings: DemoSettings) -> None:
    """Refuse a foreign folder; start over (keeping nothing) when the settings changed."""
    marker = out / SETTINGS_FILE
    if out.exists() and not out.is_dir():
        raise CovidctError("exists and is not a folder; choose another --out", out)
    if out.is_dir() and any(out.iterdir()) and not marker.is_file():
        raise CovidctError("folder exists, is not empty and is not a covidct demo folder; choose "
                           "another --out (nothing was deleted)", out)
    wanted = {"covidct_version": __version__, "settings": settings.to_dict()}
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous == wanted:
            return
        log.info("demo settings changed: starting %s over", out)
        for name in ("cohort", "runs", "models", "evaluation", "prediction", ".cache",
                     "report.html", SUMMARY_FILE):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    write_json(marker, wanted)


def _publish(source: Path, target: Path) -> None:
    """Copy a finished run's model to models/ (atomically) unless the same file is there."""
    if target.is_file() and target.stat().st_size == source.stat().st_size \
            and target.stat().st_mtime >= source.stat().st_mtime:
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


# -- stages -------------------------------------------------------------------------------------

def _cohort_settings(settings: DemoSettings):
    from .synth.cohort import CohortSettings

    return CohortSettings(patients=settings.patients, seed=settings.seed, matrix=settings.matrix,
                          difficulty=settings.difficulty)


def _cohort_done(cohort: Path, settings: DemoSettings) -> bool:
    from .synth.cohort import SETTINGS_FILE as SYNTH_FILE, _settings_json

    try:
        saved = json.loads((cohort / SYNTH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return saved == json.loads(json.dumps(_settings_json(_cohort_settings(settings))))


def _make_cohort(cohort: Path, settings: DemoSettings, progress: bool) -> None:
    from .synth.cohort import generate_cohort

    generate_cohort(cohort, _cohort_settings(settings), progress=progress)


def _bit_done(run: Path) -> bool:
    return (run / "summary.json").is_file() and (run / "model.pt").is_file()


def _train_bit(covidx: Path, run: Path, settings: DemoSettings, progress: bool) -> None:
    from .bit.train import train

    train(bit_train_config(settings, split_path(covidx, "train"), covidx, run, progress,
                           "covidct demo"))


def bit_train_config(settings: DemoSettings, train_split: Path, covidx: Path, run: Path,
                     progress: bool, command: str):
    """The slice classifier's training at demo size (also the learning-curve experiment's):
    ``train_split`` may be a subset of the patients of ``covidx``'s training split."""
    from .bit.train import TrainConfig

    # The demo's bit_* settings are its overrides of the slice classifier's TrainConfig fields.
    overrides = {k[len("bit_"):]: v for k, v in asdict(settings).items() if k.startswith("bit_")}
    overrides["resize"], overrides["crop"] = overrides.pop("resolution")
    overrides["schedule"] = tuple(overrides["schedule"])
    return TrainConfig(
        train_split=str(train_split), images=str(covidx / IMAGES_DIR),
        val_split=str(split_path(covidx, "val")), out=str(run), init="random", **overrides,
        workers=1, val_every=50, max_val=256, seed=settings.seed, device="cpu",
        resume=(run / "checkpoints" / "last.pt").is_file(), progress=progress,
        command=command)


def _covidctnet_done(run: Path) -> bool:
    if not (run / "model.pt").is_file():
        return False
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "classifier" in summary


def _train_covidctnet(cohort: Path, run: Path, out: Path, settings: DemoSettings,
                      progress: bool) -> None:
    from .covidctnet.train import TrainConfig, train

    # The demo's settings named as TrainConfig fields are its overrides of the method's defaults.
    names = {f.name for f in dataclass_fields(TrainConfig)}
    overrides = {k: v for k, v in asdict(settings).items() if k in names}
    config = TrainConfig(
        data=str(cohort), out=str(run), cache_dir=str(out / ".cache"), device="cpu",
        resume=(run / "config.json").is_file(), progress=progress, **overrides)
    train(config)


def _int8_done(models: Path, out: Path) -> bool:
    """Both models' int8 graphs made and checked (passed or not) for these model files."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return True  # nothing to make: predict runs float32 (or PyTorch)
    from .export import _cached_int8
    from .models import load_model

    return all(_cached_int8(_in_demo_cache(load_model(models / f"{m}.pt"), out),
                            require_pass=False) is not None
               for m in (METHOD_BIT, METHOD_COVIDCTNET))


def _int8(cohort: Path, covidx: Path, models: Path, out: Path,
          say: Callable[[str], None]) -> None:
    """What train-bit and train-covidctnet do last: quantize each model's int8 network on its
    training data and check it against float32 on held-out training data, so that
    `covidct predict --runtime auto` runs int8 where the check passed (one line each)."""
    from .quantize import check_model_file

    say(f"  {METHOD_BIT}: " + check_model_file(models / f"{METHOD_BIT}.pt",
                                               split=split_path(covidx, "train"),
                                               images=covidx / IMAGES_DIR))
    say(f"  {METHOD_COVIDCTNET}: " + check_model_file(models / f"{METHOD_COVIDCTNET}.pt", cohort,
                                                      cache_dir=out / ".cache"))


def _evaluated(folder: Path) -> bool:
    return (folder / "results.json").is_file() and (folder / "explain.json").is_file()


def _evaluate(model_path: Path, data: Path, folder: Path, out: Path, settings: DemoSettings) -> None:
    from .evaluation import evaluate
    from .explain.run import explain_evaluation
    from .models import load_model

    model = _in_demo_cache(load_model(model_path), out)
    evaluate(model, data, split="test", out_dir=folder, n_boot=settings.n_boot, seed=settings.seed)
    explain_evaluation(model, data, "test", folder, seed=settings.seed)


def held_out_patient(cohort: Path) -> dict[str, str]:
    """The first COVID-19 test patient of the cohort (else the first test patient)."""
    rows = [r for r in read_labels(cohort / LABELS_CSV) if r.get("split") == "test"]
    if not rows:
        raise CovidctError("the cohort has no test patients; use more --patients", cohort)
    covid = [r for r in rows if r.get("label") == "NCP"]
    return (covid or rows)[0]


def _predict(series: Path, models: Path, folder: Path, out: Path) -> None:
    from .models import load_models
    from .predict import predict_to_folder

    loaded = load_models((), paths=[models / f"{m}.pt" for m in (METHOD_BIT, METHOD_COVIDCTNET)])
    predict_to_folder(series, [_in_demo_cache(m, out) for m in loaded], folder)


def _report(out: Path) -> Path:
    from .report import build_report

    return build_report(out, title="covidct demo (SYNTHETIC data)")


def _in_demo_cache(model, out: Path):
    """Keep a model's intermediate arrays (CovidCTNet's pre-processed volumes) inside the demo
    folder, where the training stage wrote them."""
    model.use_cache(out / ".cache")
    return model


# -- the summary -----------------------------------------------------------------------------

def _summary(out: Path, settings: DemoSettings, patient: dict[str, str], prediction_dir: Path,
             timings: dict[str, float]) -> dict[str, Any]:
    results = {}
    for method in (METHOD_BIT, METHOD_COVIDCTNET):
        saved = json.loads((out / "evaluation" / method / "results.json").read_text(encoding="utf-8"))
        results[method] = _headline(saved)
    predicted = json.loads((prediction_dir / "summary.json").read_text(encoding="utf-8"))
    return {
        "synthetic": True, "synthetic_notice": SYNTHETIC_NOTICE, "disclaimer": DISCLAIMER,
        "covidct_version": __version__, "settings": settings.to_dict(),
        "test_results": results,
        "example": {"patient": patient["patient_id"], "true_label": patient["label"],
                    "folder": str(prediction_dir.relative_to(out)),
                    "calls": {m: r["label"] for m, r in predicted["results"].items()}},
        "report": "report.html", "seconds": timings,
    }


def _headline(saved: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and COVID AUC with CIs at the level a clinician cares about (the patient)."""
    metrics = saved.get("metrics", saved)
    level = "patient" if "patient" in metrics else "scan" if "scan" in metrics else next(iter(metrics))
    headline = _figures(level, metrics[level])
    if "series" in metrics:  # the slice classifier's calls of whole DICOM series
        headline["series"] = _figures("series", metrics["series"])
    return headline


def _figures(level: str, figures: dict[str, Any]) -> dict[str, Any]:
    return {"level": level, "n_patients": figures.get("n_patients"),
            "accuracy": figures.get("accuracy"),
            "covid_auc": (figures.get("binary") or {}).get("auc")}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [SYNTHETIC_NOTICE, "Held-out test patients (95% CI from a patient bootstrap):"]
    for method, headline in summary["test_results"].items():
        for row in (headline, headline.get("series")):
            if row is None:
                continue
            accuracy, auc = format_figure(row["accuracy"], 1, 2), format_figure(row["covid_auc"], 1, 2)
            level = "whole-series" if row["level"] == "series" else f"{row['level']}-level"
            lines.append(f"  {method:<11} {level} accuracy {accuracy}, "
                         f"COVID-vs-rest AUC {auc}, n={row['n_patients']} patients")
    example = summary["example"]
    calls = ", ".join(f"{m} -> {label}" for m, label in example["calls"].items())
    lines.append(f"Example: held-out patient {example['patient']} (truth {example['true_label']}): {calls}")
    lines.append(DISCLAIMER)
    return lines

