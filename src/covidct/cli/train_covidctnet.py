"""`covidct train-covidctnet`: train CovidCTNet (BCDU-Net denoiser, then the 3D CNN) into a run folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..constants import DISCLAIMER
from ..covidctnet.settings import LR_SCHEDULES, MAIN_INPUTS, VolumeSettings

#: The method's pre-processing and network sizes, as the help shows them.
DEFAULTS = VolumeSettings()

DESCRIPTION = f"""\
Train CovidCTNet in two stages into RUN_DIR.

  denoiser    BCDU-Net learns to return clean control slices; half of its inputs carry
              Perlin-noise pseudo-infection. Control patients of the train split only.
  classifier  the frozen denoiser turns every scan into an infection map (input minus
              output, {'x'.join(map(str, DEFAULTS.volume_shape))}); the published 3D CNN learns the classes from them. Unless
              --no-ablation, the same 3D CNN is also trained on the plain pre-processed
              volumes (no BCDU-Net, no Perlin noise) on the same splits, for comparison.
  all         both, in order.

DATA is the method's folder per class (Control/, CAP/, Covid/, each holding one DICOM
series folder, .zip or NIfTI file per patient), a folder with labels.csv (as `covidct synth`
writes), or a labels CSV with patient_id, volume_label and optional split and path columns.
Without a split column patients are split per class, seeded (--val-fraction, --test-fraction).

RUN_DIR receives config.json, history.csv, checkpoints/ (resume with --resume), denoiser.pt,
model.pt (the model file `covidct predict --method covidctnet --model` reads),
ablation/model.pt and summary.json (data counts, synthetic flag, validation and test figures
of both models side by side, 3-class and COVID-vs-rest).

Pre-processed volumes and infection maps are cached on disk (keyed by scan content and
settings): a second run skips pre-processing. Last (unless --no-int8), model.pt's BCDU-Net is
quantized to int8 on training scans and checked against float32 on held-out ones (calls and
infection maps); `covidct predict --runtime auto` runs it only if that check passed (one line
says which). {DISCLAIMER}
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-covidctnet", aliases=["train3d"], help="train CovidCTNet (BCDU-Net + 3D CNN) on CT volumes",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR_OR_CSV",
                   help="cohort: class folders (Control/ CAP/ Covid/), a folder with labels.csv, "
                        "or a labels CSV")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--stage", choices=("denoiser", "classifier", "all"), default="all",
                   help="which stage to train (default: all); classifier needs RUN_DIR/denoiser.pt "
                        "or --denoiser")
    p.add_argument("--binary", action="store_true",
                   help="train COVID-19 vs rest (2 classes) instead of Control/CAP/COVID-19")
    p.add_argument("--resume", action="store_true",
                   help="continue each stage from its last checkpoint in RUN_DIR")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, noise, init (default 0)")
    g = p.add_argument_group("classifier (3D CNN)")
    g.add_argument("--epochs", type=int, default=100, help="maximum epochs (default 100)")
    g.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    g.add_argument("--patience", type=int, default=10,
                   help="stop after this many epochs without a lower validation loss (default 10)")
    g.add_argument("--augment", action="store_true",
                   help="random left-right flips and small shifts of the training inputs "
                        "(the method: none)")
    g.add_argument("--augment-zoom", type=float, default=0.0, metavar="Z",
                   help="with --augment: also scale each training input by a factor in "
                        "[1 - Z, 1 + Z] along each axis (default 0: none; patients differ in "
                        "size and build, which a few dozen do not span)")
    g.add_argument("--weight-decay", type=float, default=0.0,
                   help="Adam's L2 penalty on the 3D CNN (default 0, as the method)")
    g.add_argument("--mask-input", action="store_true",
                   help="the 3D CNN reads infection maps inside the lung mask (covidct.lungs; "
                        "the paper has no lung mask)")
    g.add_argument("--mask-erode", type=int, default=0, metavar="N",
                   help="with --mask-input: shave N voxels off the lung mask's outline in every "
                        "slice first (default 0; `covidct demo` uses 1: on the coarse grid the "
                        "outline holds chest wall and heart, whose residual is as large as a "
                        "small lesion's in every class)")
    g.add_argument("--cnn-members", type=int, default=1, metavar="K",
                   help="train K 3D CNNs from different seeds on the same inputs and average "
                        "their probabilities (default 1, the method; each member costs one more "
                        "3D CNN training). On the demo's cohorts the training seed alone moved "
                        "held-out accuracy by up to 4 patients of 12; four averaged were steadier")
    g.add_argument("--cnn-input", choices=MAIN_INPUTS, default=MAIN_INPUTS[0],
                   help="what the 3D CNN reads: the infection map (infection, default, the "
                        "method) or the map and the pre-processed CT as two channels "
                        "(infection+volume; not in the method). On the demo's synthetic cohorts "
                        "the map misses CAP's consolidation, which the CT shows (DEMO.md)")
    g.add_argument("--cnn-norm", choices=("none", "batch", "group"), default="none",
                   help="normalisation after each 3D CNN convolution (default none, as the "
                        "method; saved in the model)")
    g.add_argument("--lr-warmup-epochs", type=int, default=0,
                   help="raise the learning rate linearly to --lr over this many epochs "
                        "(default 0, as the method)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="after the warm-up: keep --lr (constant, default, as the method) or let "
                        "it fall along a half cosine to zero at the last of --epochs (cosine; "
                        "set --patience to --epochs to run them all)")
    g.add_argument("--standardise-inputs", action="store_true",
                   help="scale the 3D CNN's input to SD 1 on the training scans (the factor is "
                        "saved in the model; default: as the method, unscaled infection maps, "
                        "SD about 0.05, which small runs barely move from the uniform prediction)")
    g.add_argument("--no-ablation", dest="ablation", action="store_false",
                   help="skip the ablation (3D CNN on plain volumes)")
    g.add_argument("--lung-ablation", action="store_true",
                   help="also train the 3D CNN on infection maps inside the lung mask "
                        "(covidct.lungs; the paper has no lung mask), into RUN_DIR/lung-masked/")
    g.add_argument("--denoiser", dest="denoiser_file", metavar="FILE",
                   help="use this denoiser.pt (from another run) instead of RUN_DIR/denoiser.pt")
    g = p.add_argument_group("denoiser (BCDU-Net)")
    g.add_argument("--denoiser-epochs", type=int, default=10, help="maximum epochs (default 10)")
    g.add_argument("--denoiser-batch-size", type=int, default=5, help="batch size (default 5)")
    g.add_argument("--denoiser-lr", type=float, default=1e-3,
                   help="Adam learning rate (default 1e-3)")
    g.add_argument("--denoiser-patience", type=int, default=3,
                   help="early-stopping patience in epochs (default 3)")
    g.add_argument("--denoiser-select", choices=("loss", "map-auc"), default="loss",
                   help="which epoch's denoiser is kept: the lowest validation loss (default, "
                        "the method) or the one whose infection map best singles out the "
                        "pseudo-infection on the validation control slices (ROC AUC of input "
                        "minus output, changed vs untouched lung pixels; the loss mostly "
                        "measures copying)")
    g.add_argument("--slices-per-scan", type=int, default=0,
                   help="train on this many evenly spaced slices per control scan (default 0: all)")
    g.add_argument("--noisy-fraction", type=float, default=0.5,
                   help="share of training slices given Perlin pseudo-infection (default 0.5)")
    g.add_argument("--noise-region", choices=("slice", "lungs"), default="slice",
                   help="where the Perlin pseudo-infection goes: the whole slice (default, the "
                        "method's code) or only the air inside the body (the lungs)")
    g.add_argument("--noise-kind", choices=("additive", "opacity", "lobar"), default="additive",
                   help="how the pseudo-infection changes a slice: the noise added as it is "
                        "(default, the method), thresholded into blobs blended towards "
                        "ground-glass to consolidation density (opacity), or half of the "
                        "noisy slices so and half with a lobar consolidation against the "
                        "chest wall (lobar)")
    g.add_argument("--fresh-noise", action="store_true",
                   help="draw the pseudo-infection anew every epoch (default: once, as the method)")
    g.add_argument("--noise-weight", type=float, default=1.0,
                   help="weight of the pixels the pseudo-infection changed in the denoiser's "
                        "loss (default 1: all pixels alike, as the method)")
    g.add_argument("--denoiser-width", type=int, default=DEFAULTS.denoiser_width,
                   help=f"BCDU-Net base channels (default {DEFAULTS.denoiser_width}: 32-64-128-256 "
                        "as the method)")
    g = p.add_argument_group("volumes")
    g.add_argument("--slice-size", type=int, default=DEFAULTS.slice_size,
                   help=f"in-plane size (default {DEFAULTS.slice_size})")
    g.add_argument("--volume-slices", type=int, default=DEFAULTS.volume_slices,
                   help=f"depth of the 3D CNN input (default {DEFAULTS.volume_slices}, at least 34)")
    g.add_argument("--denoise-slices", dest="max_denoised_slices", type=int,
                   default=DEFAULTS.max_denoised_slices,
                   help="at most this many evenly spaced 1-mm slices per scan go through BCDU-Net "
                        f"before the infection map is resized to --volume-slices (default "
                        f"{DEFAULTS.max_denoised_slices}; 0 = every slice, the method exactly, "
                        "slower on long series)")
    g = p.add_argument_group("data and machinery")
    g.add_argument("--val-fraction", type=float, default=0.15,
                   help="validation share per class when the data has no split (default 0.15)")
    g.add_argument("--test-fraction", type=float, default=0.15,
                   help="test share per class when the data has no split (default 0.15)")
    g.add_argument("--cache-dir", help="cache of pre-processed arrays (default: $COVIDCT_CACHE or "
                                       "~/.cache/covidct/covidctnet)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    g.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: all)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    g.add_argument("--no-int8", dest="int8", action="store_false",
                   help="skip the last step: quantizing the BCDU-Net to int8 on the training "
                        "scans and checking it against float32 on held-out ones (calls and "
                        "infection maps), which `predict --runtime auto` then runs if the "
                        "check passed (needs onnxruntime; see covidct export --int8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps scipy, numpy off the `covidct --help` path
    from ..covidctnet.train import TrainConfig, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = set(TrainConfig.__dataclass_fields__)
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    summary = train(config)
    tag = " [SYNTHETIC DATA]" if summary.get("synthetic") else ""
    print(f"run folder: {config.out}{tag}")
    for row in summary.get("comparison", {}).get("rows", []):
        figures = ", ".join(f"{k} {row[k]:.3f}" for k in ("accuracy", "covid_auc")
                            if row.get(k) is not None)
        print(f"  {row['split']:<4} {row['model']}: {figures or 'n/a'} (n={row['n']})")
    if "denoiser" in summary and config.stage == "denoiser":
        print(f"  denoiser: best loss {summary['denoiser'].get('best_loss')} "
              f"after {summary['denoiser'].get('epochs_run')} epochs")
    if args.int8 and config.stage != "denoiser":
        from ..quantize import check_model_file

        print(check_model_file(Path(config.out) / "model.pt", config.data, cache_dir=config.cache_dir))
    return 0

