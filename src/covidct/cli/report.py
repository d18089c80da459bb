"""`covidct report`: one self-contained HTML report of a demo or experiment folder."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write one self-contained HTML report (tables, figures, galleries) of a folder",
        description="Search DIR recursively for training runs (config.json + history.csv), evaluations "
                    "(results.json, scores.npz, Grad-CAM/infection galleries, t-SNE), dataset folders "
                    "(labels.csv, COVIDx split files) and example predictions, and write one HTML file "
                    "with every table (95% CIs), figure and picture embedded: it opens offline and can "
                    "be shared. Synthetic data are flagged by a banner at the top; the file holds no "
                    "patient names, IDs or dates.")
    p.add_argument("dir", metavar="DIR", help="the demo or experiment folder to report on")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the report (default: DIR/report.html)")
    p.add_argument("--title", default=None, help="the report's title (default: covidct evaluation report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps matplotlib, scipy, numpy off the `covidct --help` path
    from ..report import build_report

    path = build_report(args.dir, args.out, title=args.title)
    print(f"report written to {path}")
    return 0
