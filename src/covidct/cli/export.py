"""`covidct export`: a trained model's networks as ONNX graphs (see covidct.export)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained model's networks to ONNX",
        description="Write the networks of a covidct model file as ONNX graphs (dynamic batch "
                    "axis) for ONNX Runtime or other engines. The slice classifier gives one "
                    "graph; CovidCTNet gives its 3D CNN at --out and its BCDU-Net denoiser at "
                    "<stem>.bcdunet.onnx next to it. Pre-processing is not part of the graphs: "
                    "the graph metadata (covidct_*) says what they read. `covidct predict "
                    "--runtime onnx` runs a model file on ONNX Runtime directly.")
    p.add_argument("model", help="a covidct model file (.pt)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="output file (default: the model file's name with .onnx)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_model
    from ..models import load_model

    model = load_model(args.model)
    out = Path(args.out) if args.out else Path(args.model).with_suffix(".onnx")
    for role, path in export_model(model, out, args.format).items():
        print(f"{role}: {path}")
    return 0
