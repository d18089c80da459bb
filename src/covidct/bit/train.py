"""Fine-tuning the BiT slice classifier: one step-based loop, usable from Python and torchrun.

``train(TrainConfig(...)) -> RunResult`` writes a run folder::

    RUN_DIR/config.json           every setting, the exact command, library versions
    RUN_DIR/history.csv           step, loss, lr, images_per_s, data_wait_s; val_loss, val_acc
                                  on validation steps
    RUN_DIR/checkpoints/last.pt   model, optimizer, step (= sampler position), best so far
    RUN_DIR/checkpoints/best.pt   weights of the best validation accuracy
    RUN_DIR/model.pt              the covidct model file of the best checkpoint
    RUN_DIR/summary.json          final numbers; written last, so it marks a finished run

Every random choice is a function of (seed, step) (see :mod:`.data`), so ``resume=True``
continues a killed run from ``last.pt`` and ends with the same weights as an uninterrupted
run. Multi-GPU: ``torchrun --nproc_per_node N -m covidct.bit.train ...`` (env://
rendezvous; NCCL on CUDA, gloo on CPU); the global batch is split over the processes.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..atomic import atomic_path, write_json, write_text
from ..constants import SLICE_CLASSES
from ..covidx import class_counts, read_split
from ..devices import choose_device
from ..errors import CovidctError, ModelError
from .slice_data import (COVIDxDataset, EvalTransform, StepBatchSampler, TrainTransform, collate,
                   find_synthetic_marker, fits_in_memory, mixup, mixup_lambda, normalize,
                   subsample_per_class)
from .model import SliceClassifier, create_model, infer_logits
from .schedule import learning_rate
from .settings import TrainConfig
from .weights import resolve

log = logging.getLogger(__name__)

HISTORY_FIELDS = ("step", "loss", "lr", "images_per_s", "data_wait_s", "val_loss", "val_acc")
#: Settings that must not change when a run is resumed.
_RESUME_KEYS = ("arch", "init", "resize", "crop", "rewindow", "crop_rule", "schedule",
                "batch_size", "lr", "momentum", "mixup_alpha", "balanced", "balance_patients", "jitter",
                "seed", "max_train_per_class", "train_split")


@dataclass
class RunResult:
    run_dir: Path
    model_path: Path | None
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


# Processes and devices ----------------------------------------------------------------

@dataclass
class _Proc:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_process(device_pref: str) -> _Proc:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = choose_device(device_pref).type == "cuda"
    if world == 1:
        return _Proc(device=torch.device("cuda" if cuda else "cpu"))
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return _Proc(dist.get_rank(), dist.get_world_size(), device, owns)


def _all_sum(values: list[float], proc: _Proc) -> list[float]:
    if proc.world == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=proc.device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def _barrier(proc: _Proc) -> None:
    if proc.world > 1:
        import torch.distributed as dist

        dist.barrier()


# Data ---------------------------------------------------------------------------------

@dataclass
class _Data:
    train: COVIDxDataset
    val: COVIDxDataset | None
    summary: dict[str, Any]


def _split_summary(records, split) -> dict[str, Any]:
    return {"split": Path(split).name, "slices": len(records), "per_class": class_counts(records),
            "patients": len({r.patient for r in records})}


def _prepare_data(config: TrainConfig, proc: _Proc) -> _Data:
    records = read_split(config.train_split)
    if config.max_train_per_class:
        records = subsample_per_class(records, config.max_train_per_class, config.seed)
    train = COVIDxDataset(records, config.images,
                          TrainTransform(config.resize, config.crop, config.rewindow, config.jitter),
                          keep_prepared=fits_in_memory(len(records), config.resize),
                          crop_rule=config.crop_rule)
    summary: dict[str, Any] = {"train": _split_summary(records, config.train_split)}
    val = None
    if config.val_split:
        val_records = read_split(config.val_split)
        if config.max_val and len(val_records) > config.max_val:
            keep = np.sort(np.random.default_rng([config.seed, 4242]).choice(
                len(val_records), config.max_val, replace=False))
            val_records = [val_records[i] for i in keep]
        val_images = config.val_images or config.images
        COVIDxDataset(val_records, val_images, check=True)  # fail now, not at the first validation
        val = COVIDxDataset(val_records[proc.rank::proc.world], val_images,
                            EvalTransform(config.crop, config.rewindow), check=False,
                            keep_prepared=fits_in_memory(len(val_records), config.crop),
                            crop_rule=config.crop_rule)
        summary["val"] = _split_summary(val_records, config.val_split)
    synthetic = config.synthetic
    if synthetic is None:
        synthetic = find_synthetic_marker(Path(config.train_split).parent, config.images)
    summary["synthetic"] = bool(synthetic)
    summary["max_train_per_class"] = config.max_train_per_class
    return _Data(train, val, summary)


# Checkpoints --------------------------------------------------------------------------

def _save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read checkpoint ({type(exc).__name__})", path) from None


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    now = asdict(config)
    # A key missing from an older checkpoint's settings had its default then.
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    changed = [k for k in _RESUME_KEYS
               if _plain(saved.get(k, defaults.get(k))) != _plain(now.get(k))]
    if changed:
        raise CovidctError(f"cannot resume: settings differ from the checkpoint's ({', '.join(changed)})",
                           path)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else _fmt(row[k])) for k in HISTORY_FIELDS})
    write_text(path, buf.getvalue())


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _versions() -> dict[str, str]:
    import timm

    out = {"covidct": __version__, "torch": torch.__version__, "timm": timm.__version__,
           "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
    return out


# The loop -----------------------------------------------------------------------------

def train(config: TrainConfig) -> RunResult:
    """Fine-tune a slice classifier as ``config`` says; see the module docstring."""
    proc = _setup_process(config.device)
    try:
        return _train(config, proc)
    finally:
        if proc.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config: TrainConfig, proc: _Proc) -> RunResult:
    run_dir = Path(config.out)
    ckpt_dir = run_dir / "checkpoints"
    if config.batch_size % (proc.world * config.batch_split):
        raise CovidctError(f"--batch-size {config.batch_size} must be divisible by processes x "
                           f"--batch-split ({proc.world} x {config.batch_split})")
    if config.amp and proc.device.type != "cuda":
        log.warning("--amp applies to CUDA only; training in float32 on the CPU")
    source = resolve(config.init, config.arch)  # before the (slower) data check
    data = _prepare_data(config, proc)
    torch.manual_seed(config.seed)
    net = create_model(config.arch, len(SLICE_CLASSES), source).to(proc.device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=config.momentum)

    start, best, history = 0, {"step": None, "val_acc": -1.0, "val_loss": None}, []
    last_path = ckpt_dir / "last.pt"
    if config.resume:
        if not last_path.is_file():
            raise CovidctError("nothing to resume: no checkpoints/last.pt", run_dir)
        saved = _load_checkpoint(last_path)
        _check_resumable(saved["config"], config, last_path)
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, best, history = saved["step"], saved["best"], saved["history"]
    elif last_path.exists():  # every process checks, so none waits for a partner that stopped
        raise CovidctError("run folder already holds a run; pass --resume to continue it or "
                           "choose another --out", run_dir)
    if proc.main:
        write_json(run_dir / "config.json", {
            **asdict(config), "command": config.command or shlex.join(sys.argv),
            "weights": source.describe(), "processes": proc.world, "device": str(proc.device),
            "versions": _versions(), "data": data.summary})

    model = net
    if proc.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
    sampler = StepBatchSampler(data.train.labels, config.batch_size, config.total_steps, config.seed,
                               start, proc.rank, proc.world, config.batch_split, config.balanced,
                               [r.patient for r in data.train.records] if config.balance_patients else None)
    loader = torch.utils.data.DataLoader(
        data.train, batch_sampler=sampler, num_workers=config.workers, collate_fn=collate,
        pin_memory=proc.device.type == "cuda", persistent_workers=False)
    val_loader = None
    if data.val is not None:
        val_loader = torch.utils.data.DataLoader(
            data.val, batch_size=max(1, config.batch_size // (proc.world * config.batch_split)),
            num_workers=config.workers, collate_fn=collate, persistent_workers=config.workers > 0)

    stop = config.total_steps if config.stop_after is None else min(config.total_steps, config.stop_after)
    bar = _bar(config, proc, start, config.total_steps)
    batches = iter(loader)
    use_amp = config.amp and proc.device.type == "cuda"
    started = time.perf_counter()
    for step in range(start, stop):
        tick = time.perf_counter()
        lr = learning_rate(step, config.schedule, config.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lam = mixup_lambda(config.mixup_alpha, config.seed, step)
        model.train()
        loss_sum, wait = 0.0, 0.0
        for micro in range(config.batch_split):
            fetch = time.perf_counter()
            images, labels = next(batches)
            wait += time.perf_counter() - fetch
            images = normalize(images, proc.device, config.channels_last)
            targets = F.one_hot(labels, len(SLICE_CLASSES)).float().to(proc.device)
            if lam < 1.0:
                gen = torch.Generator().manual_seed(_seed_of(config.seed, step, proc.rank, micro))
                images, targets = mixup(images, targets, lam, gen)
            sync = (model.no_sync() if proc.world > 1 and micro < config.batch_split - 1
                    else contextlib.nullcontext())
            with sync:
                with torch.autocast(proc.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(images)
                loss = F.cross_entropy(logits.float(), targets) / config.batch_split
                loss.backward()
            loss_sum += loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_mean = _all_sum([loss_sum], proc)[0] / proc.world
        seconds = time.perf_counter() - tick
        row = {"step": step + 1, "loss": loss_mean, "lr": lr,
               "images_per_s": config.batch_size / seconds, "data_wait_s": wait,
               "val_loss": None, "val_acc": None}
        history.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", img_s=f"{row['images_per_s']:.1f}")
        done = step + 1
        if done % config.val_every == 0 or done in (stop, config.total_steps):
            if val_loader is not None:
                row["val_loss"], row["val_acc"] = _validate(net, val_loader, proc, config)
                if row["val_acc"] > best["val_acc"]:
                    best = {"step": done, "val_acc": row["val_acc"], "val_loss": row["val_loss"]}
                    if proc.main:
                        _save_checkpoint(ckpt_dir / "best.pt", {"step": done, "model": net.state_dict(),
                                                                "val_acc": row["val_acc"]})
                if bar is not None:
                    bar.write(f"step {done}: val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f}")
            if proc.main:
                _save_checkpoint(last_path, {
                    "step": done, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "best": best, "history": history, "config": asdict(config)})
                _write_history(run_dir / "history.csv", history)
            _barrier(proc)
    if bar is not None:
        bar.close()
    finished = stop == config.total_steps
    result = RunResult(run_dir, None, {"finished": finished}, history)
    if finished and proc.main:
        result = _finish(config, net, data, source.describe(), best, history,
                         time.perf_counter() - started, start, proc)
    _barrier(proc)
    return result


def _seed_of(*parts: int) -> int:
    return int(np.random.default_rng([*parts, 271828]).integers(0, 2**62))


def _validate(net: torch.nn.Module, loader, proc: _Proc, config: TrainConfig) -> tuple[float, float]:
    """Loss and accuracy over the whole validation set (each process scores its share)."""
    logits, labels = infer_logits(net, loader, proc.device, config.amp, config.channels_last)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").item()
    correct = (logits.argmax(1) == labels).sum().item()
    loss_sum, correct, count = _all_sum([loss_sum, correct, len(labels)], proc)
    return loss_sum / count, correct / count


def _finish(config: TrainConfig, net: torch.nn.Module, data: _Data, weights: str,
            best: dict[str, Any], history: list[dict[str, Any]], seconds: float, start: int,
            proc: _Proc) -> RunResult:
    run_dir = Path(config.out)
    best_path = run_dir / "checkpoints" / "best.pt"
    if best["step"] is not None and best_path.is_file():
        net.load_state_dict(_load_checkpoint(best_path)["model"])
        chosen = f"best validation accuracy (step {best['step']})"
    else:
        chosen = "last step (no validation split)"
    net.to("cpu")
    if config.channels_last:
        net = net.to(memory_format=torch.contiguous_format)
    training = {"weights_from": chosen, "init": weights, "schedule": list(config.schedule),
                "batch_size": config.batch_size, "lr": config.lr,
                "mixup_alpha": config.mixup_alpha, "balanced": config.balanced,
                "balance_patients": config.balance_patients, "rewindow": config.rewindow,
                "crop_rule": config.crop_rule,
                "seed": config.seed, "best_step": best["step"], "best_val_acc": best["val_acc"]
                if best["step"] is not None else None}
    classifier = SliceClassifier(net=net, arch=config.arch, resize=config.resize, crop=config.crop,
                                 rewindow=config.rewindow, crop_rule=config.crop_rule,
                                 init=config.init, trained_on=data.summary, training=training)
    model_path = classifier.save(run_dir / "model.pt")
    tail = [r["loss"] for r in history[-10:]]
    val_rows = [r for r in history if r["val_acc"] is not None]
    steps_run = max(1, len(history) - start)
    summary = {
        "finished": True, "steps": config.total_steps, "model": model_path.name,
        "model_weights": chosen, "best_step": best["step"],
        "best_val_acc": training["best_val_acc"], "best_val_loss": best["val_loss"],
        "final_val_acc": val_rows[-1]["val_acc"] if val_rows else None,
        "final_val_loss": val_rows[-1]["val_loss"] if val_rows else None,
        "final_train_loss_last10": float(np.mean(tail)) if tail else None,
        "first_train_loss": history[0]["loss"] if history else None,
        "data": data.summary, "synthetic": data.summary["synthetic"],
        "train_seconds_this_session": seconds,
        "mean_images_per_s": config.batch_size * steps_run / seconds if seconds > 0 else None,
        "processes": proc.world, "device": str(proc.device), "weights": weights,
    }
    write_json(run_dir / "summary.json", summary)
    return RunResult(run_dir, model_path, summary, history)


def _bar(config: TrainConfig, proc: _Proc, start: int, total: int):
    if not (config.progress and proc.main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train-bit", unit="step", dynamic_ncols=True,
                file=sys.stderr)


if __name__ == "__main__":
    # ``torchrun ... -m covidct.bit.train ARGS``: the options are train2d's, so the CLI parses
    # them. Only the program file runs this; importing the library never reaches the CLI.
    from covidct.cli.train_bit import torchrun_main

    sys.exit(torchrun_main())
