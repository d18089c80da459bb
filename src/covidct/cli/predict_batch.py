"""`covidct predict-batch`: every scan of a folder, in parallel workers, with a resumable manifest."""
from __future__ import annotations

import argparse

from ..constants import DISCLAIMER, METHODS


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
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="PyTorch (default) or ONNX Runtime")
    p.add_argument("--pictures", action="store_true", help="also write each scan's pictures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch import predict_batch
    from ..predict import find_model

    methods = METHODS if args.method == "all" else (args.method,)
    paths = args.model or [str(find_model(m)) for m in methods]

    def show(row: dict) -> None:
        detail = row.get("labels") if row["status"] == "ok" else row.get("error")
        print(f"{row['scan']}: {row['status']} {detail}", flush=True)

    summary = predict_batch(args.input_dir, args.out, paths, workers=args.workers,
                            runtime=args.runtime, pictures=args.pictures, on_row=show)
    print(summary.line())
    return 2 if summary.failed else 0  # like bad input: the manifest says which scans
