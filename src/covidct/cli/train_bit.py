"""`covidct train-bit`: fine-tune the BiT slice classifier on COVIDx-format data."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from ..constants import BIT_INITS as INITS
from ..covidx import IMAGES_DIR, SPLIT_SUFFIX, split_path
from ..errors import CovidctError
from ..bit.schedule import (DEFAULT_RESOLUTION, DEFAULT_SCHEDULE, RESOLUTIONS, SCHEDULES,
                               parse_resolution, parse_schedule)
from ..bit.settings import CROP_RULES, REWINDOWS, TINY_ARCH, TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-bit", aliases=["train2d"], help="fine-tune the BiT slice classifier on COVIDx CT slices",
        description="Fine-tune a BiT ResNet-v2 on COVIDx-format slices (split files "
                    "'filename class xmin ymin xmax ymax' and an images/ folder), step-based with "
                    f"the BiT-HyperRule (SGD, momentum {TrainConfig.momentum}, warm-up then 10x "
                    "decays, mixup). Writes "
                    "RUN_DIR/{config.json,history.csv,checkpoints/,model.pt,summary.json}. "
                    "Defaults are the paper's main setting "
                    f"({TrainConfig.init}, {TrainConfig.resize}/{TrainConfig.crop} px, "
                    f"{TrainConfig.schedule[-1]:,} steps, batch {TrainConfig.batch_size}). "
                    "Multi-GPU: torchrun --nproc_per_node N -m covidct.bit.train SAME OPTIONS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="COVIDX_DIR",
                      help=f"folder with train/val{SPLIT_SUFFIX} and {IMAGES_DIR}/")
    data.add_argument("--train-split", metavar="FILE", help="training split file (overrides --data)")
    data.add_argument("--val-split", metavar="FILE",
                      help="validation split file (overrides --data; 'none' for no validation)")
    data.add_argument("--images", metavar="DIR", help="folder of the slice PNGs (overrides --data)")
    data.add_argument("--max-train-per-class", type=int, metavar="N",
                      help="train on N random slices per class (the paper's data-size experiment)")
    data.add_argument("--max-val", type=int, metavar="N",
                      help="validate on a fixed random subset of N slices (quicker validation)")
    data.add_argument("--balanced", action="store_true",
                      help="class-balanced sampling (the paper samples uniformly over slices)")
    data.add_argument("--balance-patients", action="store_true",
                      help="with --balanced: draw a class's patients equally, then one of the "
                           "patient's slices (patients with many slices no longer dominate)")
    data.add_argument("--synthetic", action="store_true", default=None,
                      help="mark the training data as synthetic (detected from the data folder's "
                           "README otherwise)")
    data.add_argument("--workers", type=int, default=TrainConfig.workers,
                      help="data-loader worker processes (PNG decoding and cropping)")

    model = p.add_argument_group("model")
    model.add_argument("--arch", default=TrainConfig.arch,
                       help=f"timm BiT architecture ({TrainConfig.arch}, resnetv2_101x1_bit, ...; "
                            f"{TINY_ARCH} for quick CPU trials)")
    model.add_argument("--init", default=TrainConfig.init,
                       help=f"initial weights: {', '.join(INITS)} or a weights file "
                            "(.npz in the original BiT layout, .pt/.pth/.safetensors state dict)")
    model.add_argument("--resolution", default=DEFAULT_RESOLUTION,
                       help="'resize,crop' in pixels or a paper preset by crop size: "
                            + ", ".join(f"{k} = {v[0]},{v[1]}" for k, v in RESOLUTIONS.items()))
    model.add_argument("--crop-rule", choices=CROP_RULES, default=TrainConfig.crop_rule,
                       help="what each slice is cropped to before resizing: 'box', the split "
                            "file's body box (the paper); 'lungs', the aerated lungs' box inside "
                            "it (lesions get about 1.4x the pixels; `covidct demo` uses it)")
    model.add_argument("--rewindow", choices=REWINDOWS, default=TrainConfig.rewindow,
                       help="re-read the COVIDx pictures in a narrower lung window: lung-detail "
                            "[-1000, -250] HU, lung-detail-wide [-1000, -100] HU (default: the "
                            "picture as it is, the paper; `covidct demo` uses lung-detail-wide)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--schedule", default=DEFAULT_SCHEDULE,
                     help="warm-up, three decay steps and the final step as a comma list, or a "
                          "preset: " + "; ".join(f"{k} = {','.join(map(str, v))}"
                                                 for k, v in SCHEDULES.items()))
    opt.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                     help="global batch size per step")
    opt.add_argument("--batch-split", type=int, default=TrainConfig.batch_split,
                     help="split each batch into this many micro-batches (gradient accumulation) "
                          "when memory is short")
    opt.add_argument("--lr", type=float, default=TrainConfig.lr, help="base learning rate")
    opt.add_argument("--no-mixup", action="store_true",
                     help=f"disable mixup (Beta({TrainConfig.mixup_alpha}, {TrainConfig.mixup_alpha}))")
    opt.add_argument("--jitter", action="store_true",
                     help="also scale (0.9-1.1x), turn (up to 10 degrees) and shift the contrast "
                          "and brightness of each training slice (the paper: crop and flip "
                          "only; `covidct demo` uses it: few training patients span few body "
                          "sizes and postures)")
    opt.add_argument("--seed", type=int, default=TrainConfig.seed,
                     help="seed of every random choice")

    run_ = p.add_argument_group("run")
    run_.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    run_.add_argument("--val-every", type=int, default=TrainConfig.val_every,
                      help="validate every N steps")
    run_.add_argument("--resume", action="store_true",
                      help="continue the run in --out from checkpoints/last.pt")
    run_.add_argument("--stop-after", type=int, metavar="N",
                      help="stop after N steps with a checkpoint (continue later with --resume)")
    run_.add_argument("--device", choices=("auto", "cpu", "cuda"), default=TrainConfig.device,
                      help="where to train (auto: CUDA when available)")
    run_.add_argument("--amp", action="store_true", help="bfloat16 mixed precision (CUDA only)")
    run_.add_argument("--channels-last", action="store_true",
                      help="channels-last memory format (faster convolutions on recent GPUs)")
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_.add_argument("--no-int8", dest="int8", action="store_false",
                      help="skip the last step: quantizing the classifier to int8 on the "
                           "training slices and checking it against float32 on held-out ones, "
                           "which `predict --runtime auto` then runs if the check passed "
                           "(needs onnxruntime; see covidct export --int8)")


def config_from_args(args: argparse.Namespace):
    data = Path(args.data) if args.data else None
    train_split = args.train_split or (split_path(data, "train") if data else None)
    images = args.images or (data / IMAGES_DIR if data else None)
    if not train_split or not images:
        raise CovidctError("give --data COVIDX_DIR, or --train-split and --images")
    val_split = args.val_split or (split_path(data, "val") if data else None)
    if str(val_split).lower() == "none":
        val_split = None
    resize, crop = parse_resolution(args.resolution)
    return TrainConfig(
        train_split=str(train_split), images=str(images), out=args.out,
        val_split=str(val_split) if val_split else None, arch=args.arch, init=args.init,
        resize=resize, crop=crop, crop_rule=args.crop_rule, rewindow=args.rewindow,
        schedule=parse_schedule(args.schedule),
        batch_size=args.batch_size, batch_split=args.batch_split, lr=args.lr,
        mixup_alpha=0.0 if args.no_mixup else TrainConfig.mixup_alpha, balanced=args.balanced,
        balance_patients=args.balance_patients, jitter=args.jitter,
        workers=args.workers,
        val_every=args.val_every, max_val=args.max_val,
        max_train_per_class=args.max_train_per_class, seed=args.seed, device=args.device,
        amp=args.amp, channels_last=args.channels_last, resume=args.resume,
        stop_after=args.stop_after, synthetic=args.synthetic, progress=not args.no_progress,
        command=shlex.join(sys.argv))


def torchrun_main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m covidct.bit.train ARGS`` (same options as train2d)."""
    parser = argparse.ArgumentParser(prog="python -m covidct.bit.train",
                                     description="covidct train-bit, for torchrun")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(run(args) or 0)
    except CovidctError as exc:
        print(f"covidct: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from ..bit.train import train  # lazy: imports torch; `train2d --help` must not

    config = config_from_args(args)
    result = train(config)
    summary = result.summary
    if not summary.get("finished"):
        print(f"stopped after step {len(result.history)}; continue with --resume --out {args.out}")
        return 0
    if result.model_path is None:  # a non-zero rank of a torchrun job
        return 0
    acc = summary.get("best_val_acc")
    tag = " [trained on SYNTHETIC data]" if summary.get("synthetic") else ""
    acc_text = f", best validation accuracy {acc:.4f} at step {summary['best_step']}" if acc is not None else ""
    print(f"model written to {result.model_path}{acc_text}{tag}")
    if getattr(args, "int8", False):
        from ..quantize import check_model_file

        print(check_model_file(result.model_path, split=config.train_split, images=config.images))
    return 0

