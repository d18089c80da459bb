"""Training CovidCTNet in two stages, as the method does.

Stage "denoiser": BCDU-Net learns to return clean control slices from inputs of which half
carry Perlin pseudo-infection (binary cross-entropy, Adam 1e-3); only control patients of
the training split are used; the best epoch on the validation controls is frozen.

Stage "classifier": the frozen denoiser turns every scan into an infection map
(50 x 128 x 128); the published 3D CNN learns Control / CAP / COVID-19 (or COVID-19 vs rest
with ``binary``) with Adam 1e-4, batch 16, up to 100 epochs and early stopping on the
validation loss. The ablation of the method's Fig. 1 trains the same 3D CNN, same splits
and seed, on the plain pre-processed volumes (no BCDU-Net, no Perlin noise), read as the
main model reads its map (inside the lung mask with ``mask_input``).

Every epoch writes a checkpoint atomically; ``resume`` continues a stage from its last one.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json
from ..constants import DISCLAIMER, SYNTHETIC_NOTICE, VOLUME_CLASSES
from ..devices import choose_device, cpu_state
from ..errors import DatasetError, ModelError
from .volume_data import Cohort, CohortItem, load_cohort
from .infection_maps import denoise_indices, network_batch
from .perlin import NOISE_KINDS, NOISE_REGIONS, PseudoInfection, air_in_body
from .pipeline import BINARY_CLASSES, CovidCTNet
from .runfolder import RunFolder, load_denoiser_file
from .settings import INPUT_INFECTION, INPUT_VOLUME, LR_SCHEDULES, MAIN_INPUTS, VolumeSettings

log = logging.getLogger(__name__)

STAGES = ("denoiser", "classifier", "all")
#: A pixel whose pseudo-infection changed it by more than this (CovidCTNet window, ~14 HU)
#: counts as changed for ``noise_weight``.
NOISE_CHANGED = 0.01
#: How the denoiser's kept epoch is chosen: the lowest validation loss (the method), or the
#: highest validation map AUC (:func:`pseudo_map_auc`).
DENOISER_SELECT = ("loss", "map-auc")


@dataclass
class TrainConfig:
    data: str
    out: str
    stage: str = "all"
    binary: bool = False
    seed: int = 0
    # pre-processing and network sizes (the method's defaults, from VolumeSettings)
    slice_size: int = VolumeSettings.slice_size
    volume_slices: int = VolumeSettings.volume_slices
    max_denoised_slices: int = VolumeSettings.max_denoised_slices
    denoiser_width: int = VolumeSettings.denoiser_width
    # stage "denoiser"
    denoiser_epochs: int = 10
    denoiser_batch_size: int = 5
    denoiser_lr: float = 1e-3
    denoiser_patience: int = 3
    slices_per_scan: int = 0          # 0 = every slice of every control scan
    noisy_fraction: float = 0.5
    #: "slice": Perlin noise over the whole slice, as the method's code; "lungs": only on the
    #: air the body encloses (perlin.air_in_body), where infection lies. On synthetic cohorts
    #: a small denoiser trained with "slice" noise did not single out lesions (voxel AUC about
    #: 0.5 vs the lesion masks); with "lungs" it did (README, "What make demo does").
    noise_region: str = "slice"
    #: "additive": the noise image added as it is (the method); "opacity": thresholded into
    #: blobs blended towards ground-glass to consolidation density (perlin.PseudoInfection.opacity);
    #: "lobar": half of them so, half as a lobar consolidation (PseudoInfection.lobar).
    noise_kind: str = "additive"
    #: Draw the pseudo-infection anew every epoch (which slices and what noise), instead of
    #: once (the method). A few hundred control slices with one fixed noise draw let a
    #: denoiser learn those draws rather than what infection looks like.
    fresh_noise: bool = False
    #: Weight of the pixels the pseudo-infection changed in the denoiser's loss (1: every
    #: pixel alike, as the method). The changed pixels are a few per cent of all; a small
    #: denoiser trained for a few hundred steps learnt to copy its input (it has skip
    #: connections) and barely removed them, so the map did not single out lesions.
    noise_weight: float = 1.0
    #: Which epoch's denoiser is kept (DENOISER_SELECT): "loss", the lowest validation loss
    #: (the method), or "map-auc", the one whose infection map best singles out the
    #: pseudo-infection on the validation control slices (:func:`pseudo_map_auc`; needs
    #: control scans in the validation split, else the loss decides). The loss is mostly
    #: copying: on a synthetic development cohort the map's AUC against the true lesions
    #: swung between 0.28 and 0.96 from one epoch to the next while the loss barely moved,
    #: and the pseudo-infection's AUC swung with it (DEMO.md, "Twelfth round").
    denoiser_select: str = "loss"
    denoiser_file: str | None = None  # reuse a denoiser.pt instead of the run's own
    # stage "classifier"
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    patience: int = 10
    ablation: bool = True
    standardise_inputs: bool = False  # scale the 3D CNN's input to SD 1 (see VolumeSettings.input_scale)
    #: Random left-right flips and shifts of up to ``augment_shift`` voxels (every axis) of
    #: each training input, drawn anew every epoch (the method: none). On a few dozen
    #: patients the published 3D CNN memorises them within a few epochs without it.
    augment: bool = False
    augment_shift: int = 2
    #: With augment: also scale each training input by up to this fraction along each axis
    #: (0: none). A few dozen patients span few body sizes and builds.
    augment_zoom: float = 0.0
    weight_decay: float = 0.0         # Adam's L2 penalty on the 3D CNN (the method: none)
    mask_input: bool = False          # the main 3D CNN reads lung-masked maps (VolumeSettings)
    #: The main 3D CNN reads max(map - input_floor, 0) (VolumeSettings.input_floor; None: the
    #: signed map, as the method).
    input_floor: float | None = None
    mask_erode: int = 0               # with mask_input: VolumeSettings.mask_erode
    #: Normalisation after each 3D CNN convolution (VolumeSettings.cnn_norm; the method: none).
    cnn_norm: str = "none"
    #: 3D CNNs trained from different seeds and averaged (VolumeSettings.cnn_members; the
    #: method: 1). Each costs one more 3D CNN training.
    cnn_members: int = 1
    #: What the main 3D CNN reads: the infection map ("infection", the method) or the map and
    #: the pre-processed CT as two channels ("infection+volume"; VolumeSettings.input).
    cnn_input: str = INPUT_INFECTION
    #: Raise the 3D CNN's learning rate linearly from lr / steps to lr over this many epochs
    #: (the method: 0, no warm-up); lets a normalised network start at a higher rate.
    lr_warmup_epochs: int = 0
    #: After the warm-up, keep the rate ("constant", the method) or let it fall along a
    #: half cosine to zero at the last epoch ("cosine"), so that the last epochs move the
    #: network little and the best one is not picked from noise.
    lr_schedule: str = "constant"
    #: Also train the 3D CNN on lung-masked infection maps (covidct.lungs; not in the paper).
    lung_ablation: bool = False
    # data and machinery
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    cache_dir: str | None = None      # None: $COVIDCT_CACHE or ~/.cache/covidct/covidctnet
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ModelError(f"unknown stage {self.stage!r}; choose from {', '.join(STAGES)}")
        if min(self.epochs, self.batch_size, self.denoiser_batch_size) < 1 or self.denoiser_epochs < 1:
            raise ModelError("epochs and batch sizes must be at least 1")
        if not self.noise_weight > 0:
            raise ModelError("noise_weight must be positive")
        if self.augment_shift < 0 or self.weight_decay < 0 or self.lr_warmup_epochs < 0:
            raise ModelError("augment_shift, weight_decay and lr_warmup_epochs must not be negative")
        if not 0.0 <= self.augment_zoom < 1.0:
            raise ModelError("augment_zoom must be in [0, 1)")
        if not 0.0 <= self.noisy_fraction <= 1.0:
            raise ModelError("noisy_fraction must be in [0, 1]")
        if self.cnn_input not in MAIN_INPUTS:
            raise ModelError(f"cnn_input must be one of {', '.join(MAIN_INPUTS)}")
        # refuses an unknown cnn_norm, bad sizes, floor or erosion before any work
        replace(self.settings(), input_floor=self.input_floor, mask_erode=self.mask_erode)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ModelError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
        if self.noise_region not in NOISE_REGIONS:
            raise ModelError(f"noise_region must be one of {', '.join(NOISE_REGIONS)}")
        if self.noise_kind not in NOISE_KINDS:
            raise ModelError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}")
        if self.denoiser_select not in DENOISER_SELECT:
            raise ModelError(f"denoiser_select must be one of {', '.join(DENOISER_SELECT)}")

    def settings(self, input_kind: str = INPUT_INFECTION) -> VolumeSettings:
        return VolumeSettings(slice_size=self.slice_size, volume_slices=self.volume_slices,
                              max_denoised_slices=self.max_denoised_slices,
                              denoiser_width=self.denoiser_width, input=input_kind,
                              cnn_norm=self.cnn_norm, cnn_members=self.cnn_members)

    def main_settings(self) -> VolumeSettings:
        """The main model's settings, as its run records them: the infection map read as
        ``mask_input``, ``input_floor`` and ``mask_erode`` say (the ablations read otherwise)."""
        return _read_as(self.settings(self.cnn_input), self.mask_input, self.input_floor,
                        self.mask_erode)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Settings a resumed run must share with the run it continues.
_RESUME_KEYS = ("binary", "seed", "slice_size", "volume_slices", "max_denoised_slices",
                "denoiser_width", "noisy_fraction", "noise_region", "noise_kind", "slices_per_scan",
                "fresh_noise", "noise_weight")


def train(config: TrainConfig) -> dict[str, Any]:
    """Run the requested stage(s); returns the run summary (also in RUN_DIR/summary.json)."""
    import torch

    from .cache import ArrayCache

    run = RunFolder(config.out)
    if config.stage == "classifier":
        config = _fit_to_denoiser(config, _denoiser_path(config, run))
    _check_resume(run, config)
    write_json(run.config, {**config.to_dict(), "settings": config.main_settings().to_dict()})
    device = choose_device(config.device)
    cache = ArrayCache(config.cache_dir) if config.cache_dir else ArrayCache.default()
    cohort = load_cohort(config.data, config.seed, config.val_fraction, config.test_fraction)
    summary = run.read_summary()
    summary.update(_data_summary(cohort, config))
    torch.manual_seed(config.seed)

    if config.stage in ("denoiser", "all"):
        _, summary["denoiser"] = train_denoiser(config, run, cohort, cache, device)
    if config.stage in ("classifier", "all"):
        path = _denoiser_path(config, run)
        denoiser, _, facts = load_denoiser_file(path)
        denoiser = denoiser.to(device)  # the infection maps of the whole cohort run here
        if config.denoiser_file:
            summary["denoiser"] = {**facts, "file": str(path)}
        main = _new_model(config, config.cnn_input, denoiser, cache, mask_input=config.mask_input,
                          input_floor=config.input_floor, mask_erode=config.mask_erode)
        summary["classifier"] = train_classifier(config, run, cohort, main, "classifier", device,
                                                 run.model)
        if config.ablation:
            # Read as the main model reads its map (lung mask, shaved outline), so that the two
            # rows differ only in the map: the method's Fig. 1 question.
            plain = _new_model(config, INPUT_VOLUME, None, cache, mask_input=config.mask_input,
                               mask_erode=config.mask_erode)
            summary["ablation"] = train_classifier(config, run, cohort, plain, "ablation", device,
                                                   run.ablation_model)
        if config.lung_ablation:
            masked = _new_model(config, INPUT_INFECTION, denoiser, cache, mask_input=True)
            summary["lung_masked"] = train_classifier(config, run, cohort, masked, "lung_masked",
                                                      device, run.root / "lung-masked" / "model.pt")
        summary["comparison"] = _comparison(summary, masked=config.mask_input,
                                            main_input=config.cnn_input)
    summary["synthetic"] = bool(summary.get("synthetic") or cohort.synthetic or any(
        (summary.get(k) or {}).get("synthetic")
        for k in ("denoiser", "classifier", "ablation", "lung_masked")))
    if summary["synthetic"]:
        summary["synthetic_notice"] = SYNTHETIC_NOTICE
    summary["disclaimer"] = DISCLAIMER
    run.write_summary(summary)
    return summary


# -- stage "denoiser" ------------------------------------------------------------------------

def train_denoiser(config: TrainConfig, run: RunFolder, cohort: Cohort, cache, device):
    """Train BCDU-Net on control slices; save RUN_DIR/denoiser.pt; return (model, facts)."""
    import torch
    import torch.nn.functional as F

    from .bcdunet import BCDUNet

    settings = config.settings()
    loader = CovidCTNet.build(settings, denoiser=BCDUNet(settings.denoiser_width), cache=cache)
    train_items = [i for i in cohort.split("train") if i.label == "Control"]
    val_items = [i for i in cohort.split("val") if i.label == "Control"]
    if not train_items:
        raise DatasetError("the denoiser trains on control scans, and the train split has none",
                           config.data)
    clean, synthetic = _control_slices(loader, train_items, config)
    val_clean, val_synthetic = _control_slices(loader, val_items, config)
    noise = PseudoInfection()
    # Fixed once, as the method: the same half of the slices carries noise in every epoch.
    inputs, noisy = noise.apply(clean, np.random.default_rng([config.seed, 1]),
                                config.noisy_fraction, config.noise_region, config.noise_kind)
    val_inputs, _ = noise.apply(val_clean, np.random.default_rng([config.seed, 2]),
                                config.noisy_fraction, config.noise_region, config.noise_kind)
    val_lungs = lung_region(val_clean)  # where the map AUC is scored, every epoch

    torch.manual_seed(config.seed)
    model = BCDUNet(settings.denoiser_width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.denoiser_lr)

    def step_loss(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a batch and the network's logits."""
        xt = torch.from_numpy(x)[:, None].to(device)
        yt = torch.from_numpy(y)[:, None].to(device)
        weight = None
        if config.noise_weight != 1.0:
            weight = 1.0 + (config.noise_weight - 1.0) * ((xt - yt).abs() > NOISE_CHANGED).float()
        logits = model.logits(xt)
        return F.binary_cross_entropy_with_logits(logits, yt, weight=weight), logits

    def evaluate() -> tuple[float | None, float | None]:
        """Validation loss and map AUC on the noisy validation control slices."""
        if not len(val_clean):
            return None, None
        model.eval()
        losses, outputs = [], []
        with torch.no_grad():
            for s in range(0, len(val_clean), 16):
                loss, logits = step_loss(val_inputs[s:s + 16], val_clean[s:s + 16])
                losses.append(loss.item() * len(logits))
                outputs.append(torch.sigmoid(logits)[:, 0].float().cpu().numpy())
        return (float(np.sum(losses) / len(val_clean)),
                pseudo_map_auc(val_inputs, val_clean, np.concatenate(outputs), val_lungs))

    loop = _EpochLoop("denoiser", run, config.denoiser_epochs, config.denoiser_patience,
                      config.resume, config.progress)
    loop.restore(model, optimizer)
    for epoch in loop:
        torch.manual_seed(config.seed * 1000 + epoch)
        order = np.random.default_rng([config.seed, 3, epoch]).permutation(len(clean))
        if config.fresh_noise and epoch:
            inputs, _ = noise.apply(clean, np.random.default_rng([config.seed, 1, epoch]),
                                    config.noisy_fraction, config.noise_region, config.noise_kind)
        model.train()
        total = 0.0
        for start in range(0, len(order), config.denoiser_batch_size):
            batch = order[start:start + config.denoiser_batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss, _ = step_loss(inputs[batch], clean[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        val_loss, map_auc = evaluate()
        by_map = config.denoiser_select == "map-auc" and map_auc is not None
        loop.end_epoch(model, optimizer, total / len(order), val_loss, None,
                       monitor=-map_auc if by_map else None, extra={"val_map_auc": map_auc})
    loop.load_best(model)
    model = model.cpu().eval()
    best = loop.best_row
    by_map = config.denoiser_select == "map-auc" and _number(best.get("val_map_auc")) is not None
    facts = {"train_patients": len(train_items), "train_slices": int(len(clean)),
             "noisy_slices": int(noisy.sum()), "val_patients": len(val_items),
             "val_slices": int(len(val_clean)), "epochs_run": loop.epochs_run,
             "best_epoch": loop.best_epoch,
             "best_loss": _number(best.get("val_loss")) if by_map else loop.best_loss,
             "selected_by": "map-auc" if by_map else "loss",
             "val_map_auc": _number(best.get("val_map_auc")),
             "stopped_early": loop.stopped_early, "seconds": loop.seconds,
             "synthetic": bool(synthetic or val_synthetic)}
    run.save_denoiser(cpu_state(model), settings.to_dict(), facts)
    return model, facts


def lung_region(clean: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: the aerated lung of each clean slice (perlin.air_in_body)."""
    return np.stack([air_in_body(c) > 0 for c in clean]) if len(clean) else np.zeros(clean.shape, bool)


def pseudo_map_auc(inputs: np.ndarray, clean: np.ndarray, outputs: np.ndarray,
                   lungs: np.ndarray | None = None) -> float | None:
    """ROC AUC of the denoiser's map (input minus output) for the pixels the pseudo-infection
    changed against the untouched lung, over (N, H, W) validation control slices: what the
    map is for, measured where the truth is known without lesion masks (None without both).
    ``lungs``: :func:`lung_region` of ``clean``, when the caller has it already."""
    from ..metrics.ranking import roc_auc

    changed = np.abs(inputs - clean) > NOISE_CHANGED
    inside = (lung_region(clean) if lungs is None else lungs) | changed
    positive = changed[inside]
    if not positive.any() or positive.all():
        return None
    return float(roc_auc(positive, (inputs - outputs)[inside]))


def _control_slices(loader: CovidCTNet, items: list[CohortItem],
                    config: TrainConfig) -> tuple[np.ndarray, bool]:
    """All (or ``slices_per_scan`` evenly spaced) pre-processed slices of the given scans."""
    from tqdm import tqdm

    size = config.slice_size
    parts, synthetic = [np.zeros((0, size, size), np.float32)], False
    for item in tqdm(items, desc="control scans", unit="scan", disable=not config.progress):
        volume, meta = loader.volume_for_file(item.path)
        synthetic |= bool(meta.get("synthetic"))
        parts.append(volume[denoise_indices(len(volume), config.slices_per_scan)])
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), synthetic


# -- stage "classifier" and the ablation ------------------------------------------------------

def train_classifier(config: TrainConfig, run: RunFolder, cohort: Cohort, net: CovidCTNet,
                     stage: str, device, model_path: Path) -> dict[str, Any]:
    """Train ``net``'s 3D CNN (every member of an ensemble) on its inputs; save its model
    file; return results."""
    splits = {s: cohort.split(s) for s in ("train", "val", "test")}
    if not splits["train"]:
        raise DatasetError("the train split is empty", config.data)
    arrays = {s: _network_inputs(net, items, f"{stage} {s} inputs", config.progress)
              for s, items in splits.items()}
    x_train, y_train, synthetic = arrays["train"]
    present = sorted(set(y_train.tolist()))
    if len(present) < 2:
        raise DatasetError("the train split needs at least two classes", config.data)

    if config.standardise_inputs:  # each channel on its own (map and CT differ ~10x in SD)
        scales = [_unit_sd_scale(x_train if net.settings.channels == 1 else x_train[:, c])
                  for c in range(net.settings.channels)]
        net.settings = replace(net.settings, input_scale=scales[0],
                               volume_scale=scales[1] if len(scales) > 1 else 1.0)
    cnn = net.classifier.to(device)
    # An ensemble's members train each from its own seed, each picking its own best epoch;
    # member 0 trains exactly as a lone 3D CNN does.
    members = list(cnn.members) if hasattr(cnn, "members") else [cnn]
    loops = _fit_members(members, config, run, stage, arrays, net.settings, device)
    loop = loops[0]
    net.classifier = cnn.cpu().eval()

    results = {"model_file": str(model_path.relative_to(run.root)), "input": net.settings.input,
               "input_scale": net.settings.input_scale, "channel_scales": list(net.settings.channel_scales),
               "epochs_run": loop.epochs_run, "best_epoch": loop.best_epoch,
               "best_loss": loop.best_loss, "stopped_early": loop.stopped_early,
               "seconds": sum(m.seconds for m in loops)}
    if len(loops) > 1:
        results["members"] = [{"best_epoch": m.best_epoch, "best_loss": m.best_loss,
                               "epochs_run": m.epochs_run} for m in loops]
    for split in ("val", "test"):
        x, y, _ = arrays[split]
        results[split] = _metrics(y, net.classify(x), net.class_names) if len(y) else None
    net.training = {"data": Path(cohort.source).name, "counts": cohort.counts(),
                    "split_from": cohort.split_from,
                    "split_options": {"seed": config.seed, "val_fraction": config.val_fraction,
                                      "test_fraction": config.test_fraction},
                    "synthetic": bool(synthetic or cohort.synthetic
                                      or any(a[2] for a in arrays.values())),
                    "stage": stage, "epochs_run": loop.epochs_run, "best_epoch": loop.best_epoch,
                    "seed": config.seed}
    net.info["name"] = {"classifier": "covidctnet", "lung_masked": "covidctnet-lung-masked"}.get(
        stage, "covidctnet-ablation")
    net.save(model_path)
    results["synthetic"] = net.training["synthetic"]
    return results


def _fit_members(members: list, config: TrainConfig, run: RunFolder, stage: str,
                 arrays: dict[str, tuple], settings: VolumeSettings, device) -> list["_EpochLoop"]:
    """Train an ensemble's members; returns their epoch loops, member 0 first.

    On a CPU with two or more cores the members train side by side, members 1.. in forked
    processes, every one on one thread: in the 3D CNN's channels-last layout a second
    thread made a training step only 1.2-1.3x faster, a second process 2x. Each member
    draws from its own seeds, so the result does not depend on which runs where; each
    writes its own checkpoints, from which this process reads the others' best weights."""
    import torch

    if len(members) == 1 or getattr(device, "type", str(device)) != "cpu" or not _can_fork():
        return [_fit_cnn(member, k, config, run, stage, arrays, settings, device)
                for k, member in enumerate(members)]
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_member_process, name=f"3D CNN member {k}",
                                args=(member, k, config, run, stage, arrays, settings, device))
                for k, member in enumerate(members) if k > 0]
    threads = torch.get_num_threads()
    for child in children:
        child.start()
    try:
        torch.set_num_threads(1)
        loops = [_fit_cnn(members[0], 0, config, run, stage, arrays, settings, device)]
    except BaseException:
        for child in children:
            child.terminate()
        raise
    finally:
        torch.set_num_threads(threads)
        for child in children:
            child.join()
    for k, child in enumerate(children, start=1):
        if child.exitcode != 0:
            raise ModelError(f"3D CNN member {k} stopped with exit code {child.exitcode}; "
                             f"--resume continues from its last epoch", run.root)
        loops.append(_finished_member(members[k], k, config, run, stage))
    return loops


def _can_fork() -> bool:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) >= 2 and "fork" in multiprocessing.get_all_start_methods()


def _member_process(member, k: int, config: TrainConfig, run: RunFolder, stage: str,
                    arrays: dict[str, tuple], settings: VolumeSettings, device) -> None:
    """A forked process's work: member ``k`` on one thread, no progress bar (the first
    member's bar stands for all); its checkpoints carry the result."""
    import torch

    torch.set_num_threads(1)
    try:
        _fit_cnn(member, k, replace(config, progress=False), run, stage, arrays, settings, device)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the parent reports it in one line; details to the log
        log.error("3D CNN member %d failed: %s", k, exc)
        sys.exit(1)


def _finished_member(member, k: int, config: TrainConfig, run: RunFolder,
                     stage: str) -> "_EpochLoop":
    """Member ``k``'s epoch loop as its process left it, its best weights loaded."""
    import torch

    loop = _EpochLoop(_member_stage(stage, k), run, config.epochs, config.patience, True, False)
    loop.restore(member, torch.optim.Adam(member.parameters()))
    loop.load_best(member)
    return loop


def _member_stage(stage: str, member: int) -> str:
    return stage if member == 0 else f"{stage}-member{member}"


def _fit_cnn(cnn, member: int, config: TrainConfig, run: RunFolder, stage: str,
             arrays: dict[str, tuple], settings: VolumeSettings, device) -> "_EpochLoop":
    """Train one 3D CNN (``member`` of an ensemble; 0 for a lone one) on ``arrays`` and load
    its best epoch; returns its epoch loop (best epoch, loss, time)."""
    import torch
    import torch.nn.functional as F

    x_train, y_train, _ = arrays["train"]
    optimizer = torch.optim.Adam(cnn.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(y_train) // config.batch_size)
    warmup = _learning_rate(optimizer, config.lr, config.lr_warmup_epochs * steps_per_epoch,
                            config.epochs * steps_per_epoch, config.lr_schedule)

    def batches(x: np.ndarray, y: np.ndarray, order: np.ndarray, rng=None):
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            xb = x[idx] if rng is None else augment(x[idx], rng, config.augment_shift,
                                                     config.augment_zoom)
            yield (torch.from_numpy(network_batch(xb, settings)).to(device),
                   torch.from_numpy(y[idx]).long().to(device), len(idx))

    def validate() -> tuple[float | None, float | None]:
        x_val, y_val, _ = arrays["val"]
        if not len(y_val):
            return None, None
        cnn.eval()
        loss = correct = 0.0
        with torch.no_grad():
            for xb, yb, n in batches(x_val, y_val, np.arange(len(y_val))):
                logits = cnn(xb)
                loss += F.cross_entropy(logits, yb, reduction="sum").item()
                correct += (logits.argmax(1) == yb).sum().item()
        return loss / len(y_val), correct / len(y_val)

    name = _member_stage(stage, member)
    loop = _EpochLoop(name, run, config.epochs, config.patience, config.resume, config.progress)
    loop.restore(cnn, optimizer)
    draw = [config.seed] if member == 0 else [config.seed, 1000 + member]
    for epoch in loop:
        torch.manual_seed(config.seed * 1000 + epoch + 7919 * member)
        order = np.random.default_rng([*draw, 4, epoch]).permutation(len(y_train))
        rng = np.random.default_rng([*draw, 5, epoch]) if config.augment else None
        cnn.train()
        total = seen = 0.0
        for step, (xb, yb, n) in enumerate(batches(x_train, y_train, order, rng)):
            if n == 1 and config.cnn_norm == "batch":
                continue  # BatchNorm cannot train on one sample; it is in the next epoch's order
            warmup(epoch * steps_per_epoch + step)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(cnn(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * n
            seen += n
        val_loss, val_accuracy = validate()
        loop.end_epoch(cnn, optimizer, total / max(seen, 1), val_loss, val_accuracy)
    loop.load_best(cnn)
    return loop


def _learning_rate(optimizer, lr: float, warmup_steps: int, total_steps: int,
                   schedule: str = "constant"):
    """A function of the global step that sets the rate: linear warm-up over
    ``warmup_steps``, then ``lr`` or a half cosine down to zero at ``total_steps`` (a function
    of the step, not a stateful scheduler, so that --resume needs nothing saved)."""
    def set_rate(step: int) -> None:
        if warmup_steps and step < warmup_steps:
            rate = lr * (step + 1) / warmup_steps
        elif schedule == "cosine":
            done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            rate = lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        else:
            rate = lr
        for group in optimizer.param_groups:
            group["lr"] = rate
    return set_rate


def augment(x: np.ndarray, rng: np.random.Generator, shift: int, zoom: float = 0.0) -> np.ndarray:
    """(N, D, H, W) or (N, C, D, H, W) inputs, each flipped left-right with probability 1/2,
    with ``zoom`` > 0 scaled about its centre by a factor in [1 - zoom, 1 + zoom] along each
    of D, H and W, and shifted by up to ``shift`` voxels along them (zero fill; all channels
    alike): the findings' side and exact position carry no class, nor do the patient's size
    and build, so the 3D CNN should not learn them."""
    out = np.zeros_like(x)
    for k, item in enumerate(x):
        if rng.random() < 0.5:
            item = item[..., ::-1]
        if zoom > 0:
            item = _zoomed(item, rng.uniform(1.0 - zoom, 1.0 + zoom, size=3))
        moves = rng.integers(-shift, shift + 1, size=3) if shift else np.zeros(3, int)
        lead = (slice(None),) * (item.ndim - 3)
        src = lead + tuple(slice(max(0, -m), n - max(0, m)) for m, n in zip(moves, item.shape[-3:]))
        dst = lead + tuple(slice(max(0, m), n - max(0, -m)) for m, n in zip(moves, item.shape[-3:]))
        out[k][dst] = item[src]
    return out


def _zoomed(item: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``item`` ((D, H, W) or (C, D, H, W)) scaled by ``factors`` about its centre, linear
    interpolation, zero outside."""
    from scipy.ndimage import affine_transform

    shape = np.array(item.shape[-3:], dtype=np.float64)
    centre = (shape - 1) / 2
    scale = 1.0 / np.asarray(factors, dtype=np.float64)
    offset = centre - scale * centre
    volumes = item.reshape(-1, *item.shape[-3:])
    out = np.stack([affine_transform(v, scale, offset=offset, order=1, mode="constant", cval=0.0)
                    for v in volumes])
    return out.reshape(item.shape).astype(item.dtype, copy=False)


def _unit_sd_scale(x: np.ndarray) -> float:
    """1 / SD of the training inputs (1 when they are constant)."""
    sd = float(np.std(x, dtype=np.float64))
    return 1.0 / sd if sd > 1e-12 else 1.0


def _network_inputs(net: CovidCTNet, items: list[CohortItem], desc: str,
                    progress: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    from tqdm import tqdm

    shape = net.settings.input_shape
    x = np.zeros((len(items), *shape), dtype=np.float32)
    synthetic = False
    for k, item in enumerate(tqdm(items, desc=desc, unit="scan", disable=not progress)):
        x[k], meta = net.input_for_file(item.path)
        synthetic |= bool(meta.get("synthetic"))
    y = np.array([net.target_index(i.label) for i in items], dtype=np.int64)
    return x, y, synthetic


def _new_model(config: TrainConfig, input_kind: str, denoiser, cache,
               mask_input: bool = False, input_floor: float | None = None,
               mask_erode: int = 0) -> CovidCTNet:
    import torch

    torch.manual_seed(config.seed)  # the main model and the ablations start from the same draw
    classes = BINARY_CLASSES if config.binary else VOLUME_CLASSES
    settings = _read_as(config.settings(input_kind), mask_input, input_floor, mask_erode)
    return CovidCTNet.build(settings, classes, denoiser, cache=cache)


def _read_as(settings: VolumeSettings, mask_input: bool, input_floor: float | None,
             mask_erode: int) -> VolumeSettings:
    """``settings`` whose 3D CNN reads its input inside the lung mask (less ``mask_erode``
    voxels of outline) and above ``input_floor``; a floor in CT units would cut plain volumes'
    lungs away, and without a mask there is no outline to shave."""
    return replace(settings, mask_input=mask_input,
                   input_floor=input_floor if settings.reads_map else None,
                   mask_erode=mask_erode if mask_input else 0)


def _metrics(y_true: np.ndarray, y_prob: np.ndarray, class_names) -> dict[str, Any]:
    """The method's figures (Table 3 layout, COVID-vs-rest) without curves."""
    from ..metrics import classification_metrics

    figures = classification_metrics(y_true, y_prob=y_prob, class_names=list(class_names),
                                     curves=False)
    for bulky in ("roc", "calibration"):
        figures.pop(bulky, None)
    if isinstance(figures.get("binary"), dict):
        figures["binary"].pop("operating_points", None)
    return figures


def _comparison(summary: dict[str, Any], masked: bool = False,
                main_input: str = INPUT_INFECTION) -> dict[str, Any]:
    """CovidCTNet vs the ablation on the same split, side by side (the method's Fig. 1);
    ``masked``: both read their input inside the lung mask (``mask_input``)."""
    inside = " inside the lung mask" if masked else ""
    reads = "infection maps" if main_input == INPUT_INFECTION else "infection maps and CT"
    rows = []
    for key, name in (("classifier", f"3D CNN on {reads}{inside} (BCDU-Net + Perlin noise)"),
                      ("ablation", f"3D CNN on plain volumes{inside} (no BCDU-Net, no Perlin noise)"),
                      ("lung_masked", "3D CNN on lung-masked infection maps (covidct; not in the paper)")):
        result = summary.get(key)
        if not result:
            continue
        for split in ("val", "test"):
            figures = result.get(split)
            if not figures:
                continue
            binary = figures.get("binary") or {}
            rows.append({"model": name, "split": split, "n": figures.get("n_slices"),
                         "accuracy": figures.get("accuracy"),
                         "macro_f1": (figures.get("macro") or {}).get("f1"),
                         "covid_sensitivity": binary.get("sensitivity"),
                         "covid_specificity": binary.get("specificity"),
                         "covid_auc": binary.get("auc"),
                         "best_val_loss": result.get("best_loss")})
    return {"rows": rows}


# -- the epoch loop: early stopping, checkpoints, resume, history -----------------------------

class _EpochLoop:
    """Iterates epochs; keeps the best state by validation loss (train loss without a
    validation split; or the lowest ``monitor`` a stage passes), writes <stage>-last/-best
    checkpoints and history rows, resumes."""

    def __init__(self, stage: str, run: RunFolder, epochs: int, patience: int, resume: bool,
                 progress: bool):
        self.stage, self.run, self.epochs, self.patience = stage, run, epochs, patience
        self.resume, self.progress = resume, progress
        self.start_epoch, self.epochs_run = 0, 0
        self.best_loss: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.seconds = 0.0
        self.rows: list[dict[str, Any]] = []
        self._tick = time.perf_counter()
        self._bar = None

    def restore(self, model, optimizer) -> None:
        state = self.run.load_checkpoint(f"{self.stage}-last") if self.resume else None
        if state is None:
            self.run.write_history(self.stage, [])
            return
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = self.epochs_run = int(state["epoch"]) + 1
        self.best_loss, self.best_epoch = state["best_loss"], state["best_epoch"]
        self.bad_epochs, self.stopped_early = int(state["bad_epochs"]), bool(state["stopped_early"])
        self.seconds = float(state["seconds"])
        self.rows = [r for r in self.run.read_history()
                     if r.get("stage") == self.stage and int(r["epoch"]) < self.start_epoch]
        log.info("%s: resuming after epoch %d", self.stage, self.start_epoch)

    def __iter__(self):
        from tqdm import tqdm

        if self.stopped_early:
            return
        self._bar = tqdm(range(self.start_epoch, self.epochs), desc=self.stage, unit="epoch",
                         disable=not self.progress)
        for epoch in self._bar:
            self.epoch = epoch
            self._tick = time.perf_counter()
            yield epoch
            if self.stopped_early:
                break
        self._bar.close()

    def end_epoch(self, model, optimizer, train_loss: float, val_loss: float | None,
                  val_accuracy: float | None, monitor: float | None = None,
                  extra: dict[str, Any] | None = None) -> None:
        """``monitor``: the value whose lowest marks the best epoch, instead of the loss;
        ``extra``: more history columns of this epoch."""
        seconds = time.perf_counter() - self._tick
        self.seconds += seconds
        self.epochs_run = self.epoch + 1
        monitored = monitor if monitor is not None else val_loss
        monitored = train_loss if monitored is None else monitored
        if self.best_loss is None or monitored < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = monitored, self.epoch, 0
            self.run.save_checkpoint(f"{self.stage}-best", {"model": cpu_state(model),
                                                            "epoch": self.epoch})
        else:
            self.bad_epochs += 1
            self.stopped_early = self.bad_epochs >= self.patience
        self.rows.append({"epoch": self.epoch, "train_loss": train_loss, "val_loss": val_loss,
                          "val_accuracy": val_accuracy, "seconds": round(seconds, 3),
                          **(extra or {})})
        self.run.write_history(self.stage, self.rows)
        self.run.save_checkpoint(f"{self.stage}-last", {
            "model": cpu_state(model), "optimizer": optimizer.state_dict(), "epoch": self.epoch,
            "best_loss": self.best_loss, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
            "seconds": self.seconds})
        if self._bar is not None:
            self._bar.set_postfix(train=f"{train_loss:.4f}",
                                  val="-" if val_loss is None else f"{val_loss:.4f}")

    @property
    def best_row(self) -> dict[str, Any]:
        """The history row of the kept epoch ({} before any)."""
        return next((r for r in self.rows if int(r["epoch"]) == self.best_epoch), {})

    def load_best(self, model) -> None:
        state = self.run.load_checkpoint(f"{self.stage}-best")
        if state is None:
            raise ModelError(f"stage {self.stage} has no best checkpoint", self.run.checkpoints)
        model.load_state_dict(state["model"])


# -- helpers ----------------------------------------------------------------------------------

def _number(value) -> float | None:
    """A history value (a float, or its text after a resume) as a float."""
    return None if value in (None, "") else float(value)


def _check_resume(run: RunFolder, config: TrainConfig) -> None:
    import json

    if not config.resume or not run.config.is_file():
        return
    previous = json.loads(run.config.read_text())
    changed = [k for k in _RESUME_KEYS if k in previous and previous[k] != getattr(config, k)]
    if changed:
        raise ModelError(f"--resume needs the settings of the run it continues; changed: "
                         f"{', '.join(changed)}", run.config)


def _denoiser_path(config: TrainConfig, run: RunFolder) -> Path:
    return Path(config.denoiser_file) if config.denoiser_file else run.denoiser


def _fit_to_denoiser(config: TrainConfig, path: Path) -> TrainConfig:
    """The run's settings with the given denoiser's width; refuse another slice size."""
    _, saved, _ = load_denoiser_file(path)
    if int(saved["slice_size"]) != config.slice_size:
        raise ModelError(f"the denoiser was trained on {saved['slice_size']}-pixel slices, "
                         f"this run uses {config.slice_size} (--slice-size)", path)
    width = int(saved["denoiser_width"])
    if width != config.denoiser_width:
        log.info("using the denoiser's width %d (not %d)", width, config.denoiser_width)
    return replace(config, denoiser_width=width)


def _data_summary(cohort: Cohort, config: TrainConfig) -> dict[str, Any]:
    counts = cohort.counts()
    return {"data": {"source": Path(cohort.source).name, "layout": cohort.layout,
                     "split_from": cohort.split_from, "patients": counts,
                     "total_patients": len(cohort.items)},
            "mode": "COVID-19 vs rest" if config.binary else "3-class",
            "class_names": list(BINARY_CLASSES if config.binary else VOLUME_CLASSES),
            "settings": config.main_settings().to_dict()}
