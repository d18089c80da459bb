"""`covidct export`: a trained model's networks as ONNX graphs (see covidct.export)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CovidctError


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
    p.add_argument("--int8", action="store_true",
                   help="also write <stem>.int8.onnx: the slice classifier statically quantized "
                        "to int8, calibrated on training slices (--calibration, --images) and "
                        "checked against float32 on held-out ones; cached so that `covidct "
                        "predict` (--runtime auto or onnx-int8) uses it for this model file")
    p.add_argument("--calibration", default=None, metavar="SPLIT",
                   help="with --int8: a COVIDx-format training split file (filename class box)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="with --int8: the folder of the split's PNG slices")
    p.add_argument("--calibration-slices", type=int, default=None, metavar="N",
                   help="with --int8: training slices read, half to calibrate, half to check "
                        "(default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps torch, numpy off the `covidct --help` path
    from ..export import export_model
    from ..models import load_model

    if args.int8 and not (args.calibration and args.images):
        raise CovidctError("--int8 needs --calibration TRAIN_SPLIT and --images DIR (the "
                           "training slices it is calibrated on)")
    model = load_model(args.model)
    out = Path(args.out) if args.out else Path(args.model).with_suffix(".onnx")
    written = export_model(model, out, args.format)
    for role, path in written.items():
        print(f"{role}: {path}")
    if args.int8:
        # lazy: keeps torch, numpy off the `covidct --help` path
        from ..export import cache_int8
        from ..quantize import CALIBRATION_SLICES, export_int8, training_inputs

        inputs = training_inputs(model, args.calibration, args.images,
                                 args.calibration_slices or CALIBRATION_SLICES)
        path, check = export_int8(model, written["classifier"], inputs)
        cache_int8(model, path)
        print(f"int8 classifier: {path}")
        print(f"int8 check on {check['slices']} held-out training slices: same call on "
              f"{check['same_call']:.1%}, median probability difference "
              f"{check['median_prob_diff']:.4f} -> {'passed' if check['passed'] else 'FAILED'}"
              f"{'' if check['passed'] else ' (predict --runtime auto keeps float32)'}")
    return 0
