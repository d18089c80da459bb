"""The papers' experiments as named presets: a grid of runs plus the settings they share.

A preset has a *grid* (axis name -> list of values; every combination is one run) and fixed
*settings*. Both are given at the paper's scale; ``--scale tiny`` swaps in small stand-ins
(:data:`TINY_SETTINGS`, :data:`TINY_RESOLUTIONS`, :data:`TINY_SCHEDULES`, a preset's
``tiny_grid``) so that every experiment finishes on a laptop CPU in minutes. Values a user
gives explicitly (``--set``/``--config``) are taken as they are, at either scale.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..demo import DemoSettings
from ..bit.schedule import RESOLUTIONS, SCHEDULES
from ..covidctnet.train import TrainConfig as VolumeTrainConfig

SCALES = ("paper", "tiny")
#: What a preset trains on: COVIDx-format slices or CT volumes given by --data, or (the
#: learning curve) synthetic cohorts the experiment generates itself, one per difficulty.
KIND_SLICES, KIND_VOLUMES, KIND_COHORTS = "slices", "volumes", "synthetic-cohorts"

#: Settings of every slice-classifier run at the paper's scale (Zhao et al., Methods).
#: Validation (which picks the saved model) every 1000 steps: the COVIDx CT-2A validation split
#: has 21k slices, so validating every 100 steps would double a run's time; the init preset,
#: whose Fig. 7 is the validation curve, validates every 100 steps as the paper.
PAPER_SLICE_SETTINGS: dict[str, Any] = {
    "arch": "resnetv2_50x1_bit", "init": "bit-m", "resolution": "480", "schedule": "bit-10000",
    "mixup": True, "per_class": "full", "seed": 0, "batch_size": 64, "lr": 0.003,
    "val_every": 1000, "max_val": None, "max_test": None, "workers": 4, "device": "auto",
    "n_boot": 1000,
}
#: CovidCTNet at the method's scale (Javaheri et al.): these covidct.covidctnet.train defaults,
#: read from its TrainConfig, are what an experiment records and may override.
PAPER_VOLUME_SETTINGS: dict[str, Any] = {
    **{k: getattr(VolumeTrainConfig, k) for k in (
        "binary", "seed", "slice_size", "volume_slices", "max_denoised_slices", "denoiser_width",
        "denoiser_epochs", "denoiser_batch_size", "slices_per_scan", "epochs", "batch_size",
        "patience", "val_fraction", "test_fraction", "device", "cache_dir")},
    "max_patients_per_class": None,   # 50: the 50 random cases per class of the method's Fig. 1
}
#: What ``--scale tiny`` changes (a 0.5 M-parameter BiT-layout network, 32-56 px, few steps).
TINY_SETTINGS: dict[str, Any] = {
    "arch": "resnetv2_tiny_bit", "batch_size": 8, "val_every": 5, "workers": 0, "n_boot": 50,
    # On the real COVIDx CT-2A (21k validation, 34k test slices) tiny runs stay CPU-sized
    # by validating and testing on fixed random subsets; the output says so.
    "max_val": 256, "max_test": 512,
    "slice_size": 40, "volume_slices": 34, "max_denoised_slices": 24, "denoiser_width": 8,
    "denoiser_epochs": 1,
    "denoiser_batch_size": 4, "slices_per_scan": 8, "epochs": 3, "patience": 3,
    "device": "cpu",
}
#: The paper's resolutions (by crop size) at tiny scale: same order, same resize > crop margin.
TINY_RESOLUTIONS = {"128": (40, 32), "224": (48, 40), "384": (56, 48), "480": (64, 56)}
#: The paper's schedules at tiny scale: roughly 1/250 of the steps, same shape.
TINY_SCHEDULES = {"bit-500": (1, 2, 3, 4, 5), "bit-5000": (2, 6, 12, 18, 20),
                  "bit-10000": (2, 12, 24, 36, 40), "bit-20000": (2, 24, 48, 72, 80)}
#: BiT-HyperRule's schedule by training-set size (Kolesnikov et al.): under 20k images 500
#: steps, else 10k (the paper's COVIDx CT-2A runs); used by the data-size experiment.
HYPERRULE = "hyperrule"
HYPERRULE_SMALL = 20_000


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str
    title: str
    figure: str                              # which table/figure of which paper
    grid: dict[str, list[Any]]
    settings: dict[str, Any] = field(default_factory=dict)   # preset-specific, paper scale
    tiny_grid: dict[str, list[Any]] = field(default_factory=dict)
    tiny_settings: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: Axes varied one at a time around ``settings["centre"]`` (the others at their centre
    #: value) instead of crossed with each other; the remaining axes are still crossed.
    sweep: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("resolution", KIND_SLICES, "Test accuracy by input resolution, with and without mixup",
           "Zhao et al. Fig. 6A",
           grid={"resolution": list(RESOLUTIONS), "mixup": [True, False]},
           description="(resize, crop) = (160,128), (256,224), (448,384), (512,480); "
                       "BiT-M, 10,000 steps."),
    Preset("schedule", KIND_SLICES, "Test accuracy by training schedule, with and without mixup",
           "Zhao et al. Fig. 6B",
           grid={"schedule": list(SCHEDULES), "mixup": [True, False]},
           description="The four BiT-HyperRule step schedules (warm-up, three decays by 10, end); "
                       "BiT-M, (512, 480)."),
    Preset("init", KIND_SLICES, "Weight initialisation: validation and test accuracy, "
                                "validation accuracy during training",
           "Zhao et al. Table 3 and Fig. 7",
           grid={"init": ["random", "bit-s", "bit-m", "bit-m-c", "bit-m-s"]},
           settings={"schedule": "bit-10000", "mixup": True, "val_every": 100},
           tiny_settings={"val_every": 2},
           description="ResNet-v2 50x1 from five starting points, 10,000 steps with mixup."),
    Preset("data-size", KIND_SLICES, "Test accuracy by number of training images per class",
           "Zhao et al. Fig. 8",
           grid={"per_class": [50, 100, 500, 1000, "full"], "seed": [0, 1, 2]},
           settings={"schedule": HYPERRULE},
           tiny_grid={"per_class": [3, 6, "full"], "seed": [0, 1]},
           description="BiT-M on 50, 100, 500, 1000 random slices per class and on the full "
                       "training set; each size drawn with several seeds (mean and spread); "
                       "schedule by BiT-HyperRule (500 steps under 20k images, else 10,000)."),
    Preset("table1", KIND_SLICES, "Test accuracy and per-class Sn/PPV/Sp/NPV by initialisation",
           "Zhao et al. Tables 1 and 2",
           grid={"init": ["random", "bit-s", "bit-m"]},
           description="Random, BiT-S and BiT-M in the main setting, next to the published "
                       "COVID-Net CT models and the paper's own rows."),
    Preset("covidctnet-ablation", KIND_VOLUMES,
           "CovidCTNet with and without BCDU-Net and Perlin noise, 3-class and 2-class",
           "Javaheri et al. Fig. 1",
           grid={"binary": [False, True]},
           settings={"lung_ablation": True},
           description="One BCDU-Net denoiser (trained on control scans with Perlin "
                       "pseudo-infection); per mode, the 3D CNN on its infection maps, the same "
                       "3D CNN on plain volumes, and (not in the paper) on the infection maps "
                       "inside the lung mask (same splits, same seed)."),
    Preset("learning-curve", KIND_COHORTS,
           "Held-out patient accuracy by number of training patients and by difficulty",
           "not in the papers: a learning curve on SYNTHETIC cohorts (issue 12)",
           grid={"method": ["bit", "covidctnet"], "train_patients": [15, 30, 60, 90],
                 "difficulty": [0.0, 0.5, 1.0]},
           settings={"centre": {"train_patients": 60, "difficulty": 0.0}},
           sweep=("train_patients", "difficulty"),
           description="Both methods at the demo's sizes (covidct.demo.DemoSettings) on "
                       "SYNTHETIC cohorts made by the experiment, one per difficulty, split by "
                       "patient; the training patients are nested class-balanced subsets of "
                       "one training pool, the validation and test patients the same for "
                       "every size. Training patients swept at the centre difficulty, "
                       "difficulty at the centre number of training patients."),
)}

#: The learning curve's own settings besides the demo's (patients come from the grid).
CURVE_SETTINGS: dict[str, Any] = {"val_patients": 12, "test_patients": 24, "max_slices": 120}


def curve_settings() -> dict[str, Any]:
    """The demo's sizes for both methods (one place: covidct.demo.DemoSettings), the held-out
    split sizes and the cohorts' slice cap; the grid sets patients and difficulty."""
    demo = DemoSettings().to_dict()
    for name in ("patients", "difficulty"):
        demo.pop(name)
    return {**demo, **CURVE_SETTINGS}


def base_settings(preset: Preset, scale: str) -> dict[str, Any]:
    """The fixed settings of a preset's runs at a scale (before user overrides)."""
    if preset.kind == KIND_COHORTS:   # demo-sized networks at either scale
        return {**curve_settings(), **preset.settings}
    common = PAPER_SLICE_SETTINGS if preset.kind == KIND_SLICES else PAPER_VOLUME_SETTINGS
    settings = {**common, **preset.settings}
    if scale == "tiny":
        settings.update({k: v for k, v in TINY_SETTINGS.items() if k in common})
        settings.update(preset.tiny_settings)
    return settings


def base_grid(preset: Preset, scale: str) -> dict[str, list[Any]]:
    grid = {k: list(v) for k, v in preset.grid.items()}
    if scale == "tiny":
        grid.update({k: list(v) for k, v in preset.tiny_grid.items()})
    return grid
