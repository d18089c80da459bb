"""`covidct train2d`: fine-tune the BiT slice classifier on COVIDx-format data."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from ..covidx import IMAGES_DIR, SPLIT_SUFFIX, split_path
from ..errors import CovidctError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train2d", help="fine-tune the BiT slice classifier on COVIDx CT slices",
        description="Fine-tune a BiT ResNet-v2 on COVIDx-format slices (split files "
                    "'filename class xmin ymin xmax ymax' and an images/ folder), step-based with "
                    "the BiT-HyperRule (SGD, momentum 0.9, warm-up then 10x decays, mixup). Writes "
                    "RUN_DIR/{config.json,history.csv,checkpoints/,model.pt,summary.json}. "
                    "Defaults are the paper's main setting (BiT-M, 512/480 px, 10,000 steps, batch 64). "
                    "Multi-GPU: torchrun --nproc_per_node N -m covidct.slices.train SAME OPTIONS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..slices.schedule import DEFAULT_RESOLUTION, DEFAULT_SCHEDULE, RESOLUTIONS, SCHEDULES
    from ..constants import BIT_INITS as INITS

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
    data.add_argument("--synthetic", action="store_true", default=None,
                      help="mark the training data as synthetic (detected from the data folder's "
                           "README otherwise)")
    data.add_argument("--workers", type=int, default=4,
                      help="data-loader worker processes (PNG decoding and cropping)")

    model = p.add_argument_group("model")
    model.add_argument("--arch", default="resnetv2_50x1_bit",
                       help="timm BiT architecture (resnetv2_50x1_bit, resnetv2_101x1_bit, ...; "
                            "resnetv2_tiny_bit for quick CPU trials)")
    model.add_argument("--init", default="bit-m",
                       help=f"initial weights: {', '.join(INITS)} or a weights file "
                            "(.npz in the original BiT layout, .pt/.pth/.safetensors state dict)")
    model.add_argument("--resolution", default=DEFAULT_RESOLUTION,
                       help="'resize,crop' in pixels or a paper preset by crop size: "
                            + ", ".join(f"{k} = {v[0]},{v[1]}" for k, v in RESOLUTIONS.items()))

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--schedule", default=DEFAULT_SCHEDULE,
                     help="warm-up, three decay steps and the final step as a comma list, or a "
                          "preset: " + "; ".join(f"{k} = {','.join(map(str, v))}"
                                                 for k, v in SCHEDULES.items()))
    opt.add_argument("--batch-size", type=int, default=64, help="global batch size per step")
    opt.add_argument("--batch-split", type=int, default=1,
                     help="split each batch into this many micro-batches (gradient accumulation) "
                          "when memory is short")
    opt.add_argument("--lr", type=float, default=0.003, help="base learning rate")
    opt.add_argument("--no-mixup", action="store_true", help="disable mixup (Beta(0.1, 0.1))")
    opt.add_argument("--seed", type=int, default=0, help="seed of every random choice")

    run_ = p.add_argument_group("run")
    run_.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    run_.add_argument("--val-every", type=int, default=100, help="validate every N steps")
    run_.add_argument("--resume", action="store_true",
                      help="continue the run in --out from checkpoints/last.pt")
    run_.add_argument("--stop-after", type=int, metavar="N",
                      help="stop after N steps with a checkpoint (continue later with --resume)")
    run_.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="where to train (auto: CUDA when available)")
    run_.add_argument("--amp", action="store_true", help="bfloat16 mixed precision (CUDA only)")
    run_.add_argument("--channels-last", action="store_true",
                      help="channels-last memory format (faster convolutions on recent GPUs)")
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    from ..slices.schedule import parse_resolution, parse_schedule
    from ..slices.train import TrainConfig

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
        resize=resize, crop=crop, schedule=parse_schedule(args.schedule),
        batch_size=args.batch_size, batch_split=args.batch_split, lr=args.lr,
        mixup_alpha=0.0 if args.no_mixup else 0.1, balanced=args.balanced, workers=args.workers,
        val_every=args.val_every, max_val=args.max_val,
        max_train_per_class=args.max_train_per_class, seed=args.seed, device=args.device,
        amp=args.amp, channels_last=args.channels_last, resume=args.resume,
        stop_after=args.stop_after, synthetic=args.synthetic, progress=not args.no_progress,
        command=shlex.join(sys.argv))


def torchrun_main(argv: list[str] | None = None) -> int:
    """Entry point for ``torchrun ... -m covidct.slices.train ARGS`` (same options as train2d)."""
    parser = argparse.ArgumentParser(prog="python -m covidct.slices.train",
                                     description="covidct train2d, for torchrun")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(run(args) or 0)
    except CovidctError as exc:
        print(f"covidct: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from ..slices.train import train

    result = train(config_from_args(args))
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
    return 0
