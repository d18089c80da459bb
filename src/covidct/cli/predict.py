"""`covidct predict`: class probabilities for one scan, from one or both methods."""
from __future__ import annotations

import argparse
import logging

from ..constants import DISCLAIMER, METHODS

# Spelled out here (not imported from covidct.export, which imports torch) so that
# `covidct --help` stays fast; tests/test_int8.py checks they match export.RUNTIME_CHOICES.
RUNTIME_CHOICES = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
RUNTIME_HELP = ("auto (default): ONNX Runtime where installed (same answers as PyTorch, "
                "faster on a CPU; each model is exported once and cached), with the slice "
                "classifier and CovidCTNet's BCDU-Net on int8 where an int8 graph made for "
                "this model file (by train-bit/train-covidctnet, the demo or covidct export "
                "--int8) passed its check against float32 (calls; CovidCTNet's infection maps "
                "too), on OpenVINO where it is the faster engine (CPUs with AMX or AVX-512 "
                "VNNI; $COVIDCT_INT8_ENGINE=onnxruntime|openvino overrides) and the check "
                "passed there too; torch: PyTorch; onnx: ONNX Runtime float32; onnx-int8: "
                "the int8 graph whatever its check said (a CovidCTNet without one runs "
                "float32); openvino, openvino-int8: the same on OpenVINO. "
                "Pictures (Grad-CAM) always use PyTorch")


log = logging.getLogger("covidct")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="predict Normal/CP/COVID-19 for a scan (slice, folder, DICOM, NIfTI)",
        description="Run trained models on one scan and write per-method JSON (class probabilities, "
                    "per-slice scores, the aggregation rule, model provenance), per-slice CSV and "
                    "pictures (CovidCTNet infection maps) into --out (files 0600, folders 0700). "
                    "The scan is read and checked before the models load; implausible scans are "
                    "refused (exit 2). With several methods, those the scan suits run and the "
                    "others say why not (exit 3). No persistent cache is used (see covidct "
                    "cache). " + DISCLAIMER)
    p.add_argument("scan", help="a DICOM folder/file/zip, a NIfTI file, a PNG/JPG slice or a folder of "
                                "slices, or a PACS study: pacs://AE@HOST:PORT/ACCESSION")
    p.add_argument("--method", choices=(*METHODS, "all"), default="bit",
                   help="which method to run when --model is not given (default: bit)")
    p.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="a trained model file (repeat for several); default: <method>.pt in "
                        "$COVIDCT_MODELS or demo-output/models")
    p.add_argument("--out", default=None, help="folder for the outputs (default: print only)")
    p.add_argument("--no-pictures", action="store_true", help="skip writing pictures")
    p.add_argument("--dicom-out", default=None, metavar="DIR",
                   help="also write DICOM objects for the PACS into DIR (DICOM input only): a "
                        "Structured Report, a Segmentation and key images in the source's study "
                        "(they carry its patient module; DIR is made 0700)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help=RUNTIME_HELP)
    p.add_argument("--lungs", choices=("hu", "lungmask"), default="hu",
                   help="lung mask both methods use: the HU rule (default) or the lungmask "
                        "package's U-Net from --lung-weights (never downloaded)")
    p.add_argument("--lung-weights", default=None, metavar="FILE",
                   help="lungmask weights file for --lungs lungmask (e.g. unet_r231-d5d2fc3d.pth)")
    p.add_argument("--calling-ae", default="COVIDCT",
                   help="covidct's AE title when retrieving a pacs:// study (default COVIDCT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib

    # lazy: keeps pacs off the `covidct --help` path
    from ..pacs import is_pacs_url, retrieved_study

    with contextlib.ExitStack() as stack:
        if is_pacs_url(args.scan):  # C-FIND + C-GET into a temporary folder, removed after
            args.scan = str(stack.enter_context(retrieved_study(args.scan, args.calling_ae)))
        return _predict(args)


#: Exit code when some methods ran and wrote their results and others refused the scan.
EXIT_PARTIAL = 3


def _predict(args: argparse.Namespace) -> int:
    # lazy: keeps scipy, numpy off the `covidct --help` path
    from ..lungs import check_lungmask_weights, use_backend
    from ..models import load_models
    from ..predict import check_writable, predict, predict_to_folder, read_checked

    if args.lungs == "lungmask":
        check_lungmask_weights(args.lung_weights)  # before the models load
    use_backend(args.lungs, args.lung_weights)
    if args.dicom_out:
        # lazy: keeps scipy, numpy off the `covidct --help` path
        from ..dicom_out import check_dicom_input

        check_dicom_input(args.scan)  # before the models load: a wrong input fails at once
    # The scan and the output folder first: a refusal should not wait for the models.
    scan = read_checked(args.scan)
    if args.out:
        check_writable(args.out)
    methods = METHODS if args.method == "all" else (args.method,)
    # Several methods on ONNX Runtime share the cores and predict at the same time.
    models = load_models(methods, args.model, runtime=args.runtime, concurrent=True)
    for model in models:
        log.info("%s: runtime %s", model.method, model.runtime)
    if args.dicom_out:
        # lazy: keeps scipy, numpy off the `covidct --help` path
        from ..dicom_out import predict_to_dicom

        predictions, _ = predict_to_dicom(args.scan, models, args.dicom_out, out_dir=args.out,
                                          pictures=not args.no_pictures, scan=scan)
    elif args.out:
        predictions = predict_to_folder(scan, models, args.out, pictures=not args.no_pictures)
    else:
        predictions = predict(scan, models)
    refused = getattr(predictions, "refused", {})
    for prediction in predictions:
        print(prediction.summary_line())
    for method, reason in refused.items():
        print(f"{method}: not run: {reason}")
    for warning in scan.metadata.get("warnings", []) or []:
        print(f"warning: {warning}")
    if args.out:
        print("results written to the --out folder")
    if args.dicom_out:
        print("DICOM outputs written to the --dicom-out folder")
    return EXIT_PARTIAL if refused else 0
