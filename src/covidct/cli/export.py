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
                   help="also write an int8 graph: the slice classifier (<stem>.int8.onnx) or "
                        "CovidCTNet's BCDU-Net (<stem>.bcdunet.int8.onnx) statically quantized, "
                        "calibrated on training data (--calibration) and checked against float32 "
                        "on held-out training data (CovidCTNet: its infection maps inside the "
                        "lungs too); cached so that `covidct predict --runtime auto` uses it for "
                        "this model file once its check passed (--runtime onnx-int8 regardless)")
    p.add_argument("--calibration", default=None, metavar="SPLIT_OR_DATA",
                   help="with --int8: bit: a COVIDx-format training split file (filename class "
                        "box); covidctnet: the cohort it was trained on (train-covidctnet --data; "
                        "its training split is read)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="with --int8, bit: the folder of the split's PNG slices")
    p.add_argument("--calibration-slices", type=int, default=None, metavar="N",
                   help="with --int8: training slices (bit, default 256) or scans (covidctnet, "
                        "default 16) read, half to calibrate, half to check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: keeps torch, numpy off the `covidct --help` path
    from ..export import export_model
    from ..models import load_model

    model = load_model(args.model)
    if args.int8 and model.int8_role == "classifier" and not (args.calibration and args.images):
        raise CovidctError("--int8 needs --calibration TRAIN_SPLIT and --images DIR (the "
                           "training slices it is calibrated on)")
    if args.int8 and not args.calibration:
        raise CovidctError("--int8 needs --calibration DATA (the cohort the model was trained "
                           "on; its training scans calibrate the int8 denoiser)")
    out = Path(args.out) if args.out else Path(args.model).with_suffix(".onnx")
    written = export_model(model, out, args.format)
    for role, path in written.items():
        print(f"{role}: {path}")
    if args.int8:
        _int8(args, model, written)
    return 0


def _int8(args: argparse.Namespace, model, written: dict) -> None:
    # lazy: keeps torch, numpy off the `covidct --help` path
    from ..errors import ModelError
    from ..export import cache_int8
    from .. import quantize
    from ..quantize import check_line

    role = model.int8_role
    if role == "classifier":
        inputs = quantize.training_inputs(model, args.calibration, args.images,
                                          args.calibration_slices or quantize.CALIBRATION_SLICES)
        path, check = quantize.export_int8(model, written["classifier"], inputs)
    elif role == "denoiser" and role in written:
        path, check = quantize.export_int8_denoiser(
            model, written["denoiser"], args.calibration,
            args.calibration_slices or quantize.DENOISER_SCANS)
    else:
        raise ModelError(f"this {model.method} model has no network --int8 applies to", args.model)
    cache_int8(model, path)
    print(f"int8 {role}: {path}")
    if role == "denoiser":
        print(f"infection maps, int8 vs float32: mean |difference| {check['map_mean_abs_diff']:.4f}, "
              f"99th percentile {check['map_p99_abs_diff']:.4f}, max {check['map_max_abs_diff']:.4f} "
              f"(map standard deviation {check['map_std']:.4f})")
    print(check_line(check))
