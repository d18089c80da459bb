"""`covidct demo`: the whole job on a SYNTHETIC cohort (what `make demo` runs)."""
from __future__ import annotations

import argparse

from ..constants import SYNTHETIC_NOTICE


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
    p.add_argument("--patients", type=int, default=30, metavar="N",
                   help="synthetic patients, balanced over the classes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (logs and CI)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoSettings, run_demo
    from ..errors import CovidctError

    if args.patients < 9:
        raise CovidctError(f"--patients must be at least 9 (three per class for train/val/test), "
                           f"got {args.patients}")
    result = run_demo(args.out, DemoSettings(patients=args.patients, seed=args.seed),
                      progress=args.progress)
    print()
    for line in result.lines:
        print(line)
    print(f"Report: {result.report}")
    print(f"Models: {result.out / 'models'} (covidct predict SCAN uses them)")
    return 0
