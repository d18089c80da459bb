"""`covidct experiment`: rerun one of the papers' experiments as a grid of resumable runs."""
from __future__ import annotations

import argparse

# Names and scales are spelled out here (not imported) so `covidct --help` needs no torch.
EXPERIMENTS = ("resolution", "schedule", "init", "data-size", "table1", "covidctnet-ablation",
               "learning-curve")

DESCRIPTION = """\
Rerun an experiment of the two papers on your copy of the data, one resumable run per grid cell.

  resolution           (resize, crop) (160,128) (256,224) (448,384) (512,480), with and without
                       mixup: test accuracy (Zhao et al. Fig. 6A)
  schedule             the four BiT-HyperRule step schedules, with and without mixup (Fig. 6B)
  init                 random, BiT-S, BiT-M, BiT-M-C, BiT-M-S at 10,000 steps with mixup:
                       validation/test accuracy (Table 3), validation accuracy per 100 steps (Fig. 7)
  data-size            50, 100, 500, 1000 training images per class and the full set, three random
                       draws each: mean and spread of the test accuracy (Fig. 8)
  table1               Random / BiT-S / BiT-M test accuracy and per-class Sn/PPV/Sp/NPV next to the
                       published rows (Tables 1 and 2)
  covidctnet-ablation  CovidCTNet with and without BCDU-Net + Perlin noise, 3-class and 2-class
                       (Javaheri et al. Fig. 1)
  learning-curve       not in the papers: both methods at the demo's sizes, held-out patient
                       accuracy (95% CI) by training patients (15/30/60/90, difficulty 0) and by
                       difficulty (0/0.5/1, 60 training patients), on SYNTHETIC cohorts that it
                       makes itself in OUT/learning-curve/cohorts/ (no --data; estimated about an
                       hour on 2 CPU cores)

DATA: COVIDx CT-2A (train/val/test_COVIDx_CT-2A.txt beside images/ or 2A_images/), any dataset
in that format, or a `covidct synth` cohort (its covidx/ part for the slice experiments, the
whole folder for CovidCTNet). Results on synthetic data are labelled SYNTHETIC everywhere.

OUT/NAME/ receives runs/<run id>/ (each a library training run folder plus result.json when
finished), results.csv (one row per run), table.md (the paper's table, published rows marked),
figure.png (the paper's figure) and experiment.json (read by `covidct report OUT`).
Rerunning the same command skips finished runs and resumes interrupted ones from their last
checkpoint; a failed run is reported and the others go on (exit code 1 if any failed).

--scale paper (default) is the paper's setting: ResNet-v2 50x1, (512,480), 10,000 steps, batch 64.
--scale tiny shrinks network (resnetv2_tiny_bit), resolution (32-56 px) and steps so every
experiment runs on a laptop CPU in minutes; named initialisations without a local weights file
then train from random weights, and the output says so.

Override the grid or settings with --set KEY=VALUE (YAML values) or a YAML --config file:
  --set mixup=[true]                 replace an axis of the grid
  --set grid.seed=[0,1,2]            make a setting an axis (repeat every run)
  --set schedule=100,200,300,400,500 --set batch_size=32 --set max_val=2000   fixed settings
  --set resolution=["40,32","64,56"] explicit (resize,crop) pairs
Slice-classifier settings: arch init resolution schedule mixup per_class seed batch_size lr
val_every max_val max_test workers device n_boot. CovidCTNet settings: binary seed slice_size
volume_slices max_denoised_slices denoiser_width denoiser_epochs denoiser_batch_size slices_per_scan epochs
batch_size patience val_fraction test_fraction max_patients_per_class device cache_dir
(max_patients_per_class=50 draws the 50 random cases per class of CovidCTNet's Fig. 1).
Learning-curve settings: the axes method, train_patients and difficulty (the last two swept one
at a time around centre, e.g. --set 'centre={train_patients: 60, difficulty: 0}'),
val_patients test_patients (fixed held-out sizes), matrix max_slices seed n_boot, and the
demo's network settings (bit_resolution bit_schedule ... epochs; see covidct.demo.DemoSettings).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="rerun a paper experiment (grid of resumable runs)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=EXPERIMENTS, metavar="NAME",
                   help=f"experiment: {', '.join(EXPERIMENTS)}")
    p.add_argument("--data", metavar="DIR",
                   help="COVIDx-format folder, `covidct synth` output, or CovidCTNet volumes "
                        "(every experiment but learning-curve)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="experiments folder; this experiment goes to DIR/NAME/")
    p.add_argument("--scale", choices=("paper", "tiny"), default="paper",
                   help="paper (default): the paper's setting; tiny: minutes on a CPU")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting or grid axis (repeatable; YAML value)")
    p.add_argument("--config", metavar="YAML", help="grid/settings overrides from a YAML file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments import parse_set, read_config, run_experiment

    overrides = read_config(args.config) if args.config else {}
    overrides.update(parse_set(args.overrides))
    outcome = run_experiment(args.name, args.data, args.out, scale=args.scale,
                             overrides=overrides, echo=print)
    for path in outcome.files:
        print(f"wrote {path}")
    return 1 if outcome.failed else 0
