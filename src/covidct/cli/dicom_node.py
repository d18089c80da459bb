"""`covidct dicom-node`: receive CT studies from a PACS by C-STORE, send results back."""
from __future__ import annotations

import argparse

from ..constants import DISCLAIMER, METHODS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dicom-node", help="a DICOM node: a PACS sends CT series, SR/SEG/key images go back",
        description="A DICOM Storage SCP (and C-ECHO). Each CT series it receives is complete "
                    "after --quiet-time seconds without new instances; it is then predicted "
                    "(with the checks and refusals of covidct predict) and the DICOM outputs "
                    "(SR, SEG, key images, or an SR saying why a series was refused) are sent "
                    "by C-STORE to --dest. Non-CT series are skipped with a logged reason. "
                    "Received files and unsent results live in --spool (0700); results that "
                    "cannot be sent are retried every --retry-every seconds for --keep-failed "
                    "hours. Stop with Ctrl-C or SIGTERM; a restart resumes the spool. " + DISCLAIMER)
    p.add_argument("--ae-title", default="COVIDCT", help="this node's AE title (default COVIDCT)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    p.add_argument("--dest", default=None, metavar="AE@HOST:PORT",
                   help="where results are sent, usually the PACS (default: kept in the spool)")
    p.add_argument("--spool", default="covidct-spool", help="spool folder (default ./covidct-spool)")
    p.add_argument("--method", choices=(*METHODS, "all"), default="all",
                   help="methods to run when --model is not given (default: all)")
    p.add_argument("--model", action="append", default=[], metavar="FILE",
                   help="a trained model file (repeat for several); default: <method>.pt in "
                        "$COVIDCT_MODELS or demo-output/models")
    p.add_argument("--quiet-time", type=float, default=10.0, metavar="S",
                   help="a series is complete after S seconds without instances (default 10)")
    p.add_argument("--retry-every", type=float, default=60.0, metavar="S",
                   help="retry unsent results every S seconds (default 60)")
    p.add_argument("--keep-failed", type=float, default=168.0, metavar="HOURS",
                   help="delete results still unsent, and series kept after an internal "
                        "error, after HOURS (default 168, a week)")
    p.add_argument("--max-associations", type=int, default=8, help="associations at once (default 8)")
    p.add_argument("--max-instances", type=int, default=5000, metavar="N",
                   help="instances accepted per association and per study (default 5000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from ..dicom_node import Destination, DicomNode, NodeSettings
    from ..models import load_models

    settings = NodeSettings(
        spool=Path(args.spool), ae_title=args.ae_title, host=args.host, port=args.port,
        destination=Destination.parse(args.dest) if args.dest else None,
        quiet_s=args.quiet_time, retry_s=args.retry_every, keep_failed_s=args.keep_failed * 3600,
        max_associations=args.max_associations, max_instances_per_association=args.max_instances,
        max_instances_per_study=args.max_instances)
    methods = METHODS if args.method == "all" else (args.method,)
    models = load_models(methods, args.model)
    node = DicomNode(settings, models)
    node.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: node.stop())
    print(f"covidct dicom-node: AE {settings.ae_title} listening on {settings.host}:{settings.port}, "
          f"methods {', '.join(m.method for m in models)}, results to "
          f"{settings.destination or 'the spool'}", flush=True)
    node.serve_forever()
    return 0
