"""`covidct predict-batch`: every scan of a folder, in parallel workers, with a resumable manifest."""
from __future__ import annotations

import argparse

from ..constants import DISCLAIMER, METHODS
from .predict import RUNTIME_CHOICES, RUNTIME_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict-batch", help="predict every scan in a folder (parallel, resumable)",
        description="Run trained models on every scan directly under INPUT_DIR (DICOM folders, "
                    "zips or files, NIfTI files, pictures, folders of slices) in --workers "
                    "processes. Each scan's outputs go to OUT/scans/<name>/; OUT/manifest.csv "
                    "gets one row per scan (ok, or error with the reason) and is rewritten "
                    "atomically after every scan. A rerun skips the scans already done with "
                    "the same model files and retries the failed ones. " + DISCLAIMER)
    p.add_argument("input_dir", help="a folder holding one entry per scan")
    p.add_argument("--out", required=True, help="output folder (manifest.csv and scans/)")
    p.add_argument("--method", choices=(*METHODS, "all"), default="bit",
                   help="which method to run when --model is not given (default: bit)")
    p.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="a trained model file (repeat for several); default: <method>.pt in "
                        "$COVIDCT_MODELS or demo-output/models")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (default 1; 0 = in this process). Each gets "
                        "cores/workers threads")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help=RUNTIME_HELP)
    p.add_argument("--pictures", action="store_true", help="also write each scan's pictures")
    engine = p.add_mutually_exclusive_group()
    engine.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run each scan as a task on this Dask cluster (tcp://host:8786); "
                             "workers load the models once and must see INPUT_DIR and --out "
                             "at the same paths. The manifest is written here")
    engine.add_argument("--cluster", choices=("local",), default=None,
                        help="local: a Dask LocalCluster of --workers processes on this machine")
    p.add_argument("--resources", default=None, metavar="NAME=N[,NAME=N]",
                   help="with a Dask cluster: what each scan's task needs of a worker, e.g. "
                        "GPU=1 for workers started with --resources GPU=1")
    p.set_defaults(func=run)


def parse_resources(text: str | None) -> dict[str, float] | None:
    """"GPU=1,MEM=4e9" -> {"GPU": 1.0, "MEM": 4e9}."""
    from ..errors import CovidctError

    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise CovidctError(f"--resources: expected NAME=NUMBER, got {item!r}") from None
        if not name.strip():
            raise CovidctError(f"--resources: expected NAME=NUMBER, got {item!r}")
    return out


def run(args: argparse.Namespace) -> int:
    from ..batch import predict_batch
    from ..errors import CovidctError
    from ..models import find_model

    if args.resources and not (args.scheduler or args.cluster):
        raise CovidctError("--resources needs a Dask cluster (--scheduler or --cluster local)")
    methods = METHODS if args.method == "all" else (args.method,)
    paths = args.model or [str(find_model(m)) for m in methods]

    def show(row: dict) -> None:
        detail = row.get("labels") if row["status"] == "ok" else row.get("error")
        print(f"{row['scan']}: {row['status']} {detail}", flush=True)

    summary = predict_batch(args.input_dir, args.out, paths, workers=args.workers,
                            runtime=args.runtime, pictures=args.pictures, on_row=show,
                            scheduler=args.scheduler or args.cluster,
                            resources=parse_resources(args.resources))
    print(summary.line())
    return 2 if summary.failed else 0  # like bad input: the manifest says which scans
