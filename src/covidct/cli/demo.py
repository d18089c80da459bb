"""`covidct demo`: the whole job on a SYNTHETIC cohort (what `make demo` runs)."""
from __future__ import annotations

import argparse

from ..constants import SYNTHETIC_NOTICE
from ..errors import CovidctError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="generate a SYNTHETIC cohort, train and evaluate both methods, write the report",
        description="Everything on the embedded default, no download: generate a synthetic cohort, "
                    "train the BiT slice classifier (tiny network, low resolution) and CovidCTNet "
                    "(BCDU-Net + 3D CNN, half size), evaluate both on the held-out test patients "
                    "with patient-bootstrap CIs and explanations, predict one held-out DICOM series "
                    "with both, and write OUT/report.html. A few minutes on a 2-core CPU; a second "
                    "run reuses every finished stage. " + SYNTHETIC_NOTICE)
    p.add_argument("--out", default="demo-output", metavar="DIR",
                   help="demo folder (default: %(default)s); the trained models land in DIR/models, "
                        "where covidct predict looks by default")
    p.add_argument("--patients", type=int, default=None, metavar="N",
                   help="synthetic patients, balanced over the classes, split by patient 60/20/20 "
                        "into train/val/test (default: 90)")
    p.add_argument("--difficulty", type=float, default=None, metavar="D",
                   help="how hard the phantoms' findings are to see, 0-1 (default: 0, large "
                        "typical lesions; see covidct synth --help)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (default: %(default)s)")
    p.add_argument("--ablation", action="store_true",
                   help="also train CovidCTNet's no-BCDU-Net ablation (the same 3D CNN on plain "
                        "volumes; about 2 more minutes)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (logs and CI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    # lazy: keeps scipy, numpy off the `covidct --help` path
    from ..demo import DemoSettings, run_demo

    overrides = {k: v for k, v in (("patients", args.patients), ("difficulty", args.difficulty))
                 if v is not None}
    settings = replace(DemoSettings(), seed=args.seed, ablation=args.ablation, **overrides)
    if settings.patients < 9:
        raise CovidctError(f"--patients must be at least 9 (three per class for train/val/test), "
                           f"got {settings.patients}")
    if not 0.0 <= settings.difficulty <= 1.0:
        raise CovidctError(f"--difficulty must be between 0 and 1, got {settings.difficulty}")
    result = run_demo(args.out, settings, progress=args.progress)
    print()
    for line in result.lines:
        print(line)
    print(f"Report: {result.report}")
    print(f"Models: {result.out / 'models'} (covidct predict SCAN uses them)")
    return 0
