"""`covidct serve`: the web page and HTTP API (FastAPI + uvicorn) on the trained models."""
from __future__ import annotations

import argparse
import logging

from ..constants import DISCLAIMER
from ..errors import CovidctError
from ..web.config import DEFAULT_KEEP_DAYS, MAX_SLICE_SIDE, MIB, ServeConfig
from .predict import RUNTIME_CHOICES, RUNTIME_HELP

log = logging.getLogger("covidct.web")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="web page and HTTP API: upload a scan, see probabilities and heat maps",
        description="Serve a single page (drag and drop a scan, slice viewer with Grad-CAM and "
                    "infection-map overlays, probabilities, downloads) and an HTTP API "
                    "(POST /api/scans, GET /api/scans/ID, docs at /docs) on the trained models. "
                    "Jobs and results are kept in an SQLite database under --data. " + DISCLAIMER)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--models", default=None, metavar="DIR",
                   help="folder holding bit.pt and/or covidctnet.pt (default: $COVIDCT_MODELS, "
                        "else demo-output/models); every method found there is served")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder for the job database and results (default: $COVIDCT_SERVE_DATA, "
                        "else ~/.local/share/covidct/serve)")
    p.add_argument("--token", default=None,
                   help="bearer token every API request must carry (default: $COVIDCT_TOKEN, "
                        "which is better: a command-line token shows in ps)")
    p.add_argument("--insecure-no-token", action="store_true",
                   help="listen on an address other than loopback without a token (anyone who "
                        "can reach the server can then upload scans and read every result)")
    p.add_argument("--workers", type=int, default=2, help="scans analysed at once (default 2)")
    p.add_argument("--max-pending", type=int, default=64,
                   help="scans queued or running before uploads are answered 503 (default 64)")
    p.add_argument("--max-upload-mb", type=int, default=1024,
                   help="largest upload in MiB, answered 413 above it (default 1024)")
    p.add_argument("--max-slices", type=int, default=1000,
                   help="most slices per scan, answered 422 above it (default 1000); each slice "
                        f"may have at most {MAX_SLICE_SIDE}x{MAX_SLICE_SIDE} pixels (413 above)")
    p.add_argument("--keep-days", type=float, default=DEFAULT_KEEP_DAYS, metavar="DAYS",
                   help="delete finished jobs (result, stored slices) this many days after they "
                        f"finished, checked at start-up and hourly (default {DEFAULT_KEEP_DAYS:g}; "
                        "0 keeps them forever)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help=RUNTIME_HELP)
    p.add_argument("--show-phi", action="store_true",
                   help="read patient name, ID and dates from DICOM and show them on the page "
                        "(never shown otherwise)")
    p.set_defaults(func=run)


def load_served_models(folder: str | None, runtime: str = "torch") -> list:
    """Every method with a model file in ``folder`` (or the default folders), on ``runtime``;
    none is an error."""
    # lazy: keeps models off the `covidct --help` path
    from ..models import find_models, load_models

    # On ONNX Runtime the methods share the cores and run on an upload at the same time.
    return load_models((), find_models(folder), runtime=runtime, concurrent=True)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def run(args: argparse.Namespace) -> int:
    import os

    if args.keep_days < 0:
        raise CovidctError(f"--keep-days {args.keep_days:g}: give 0 (keep forever) or more days")
    config = ServeConfig.from_env(
        data_dir=args.data, token=args.token, workers=args.workers,
        max_pending=args.max_pending, max_upload_bytes=args.max_upload_mb * MIB,
        max_slices=args.max_slices, show_phi=args.show_phi, keep_days=args.keep_days)
    if config.token is None and not is_loopback(args.host):
        if not args.insecure_no_token:
            raise CovidctError(f"refusing to listen on {args.host} without a token: anyone who "
                               "can reach it could upload scans and read every result; set "
                               "COVIDCT_TOKEN (or --token), or pass --insecure-no-token")
        log.warning("INSECURE: listening on %s without a token (--insecure-no-token): anyone who "
                    "can reach it can upload scans and read every result", args.host)
    os.umask(0o077)  # whatever the server writes (database, results) is its user's only
    # lazy: keeps web.storage off the `covidct --help` path
    from ..web.storage import lock_data_folder

    lock = lock_data_folder(config.data_dir)  # held until the process ends
    try:
        return _serve(args, config)
    finally:
        lock.close()


def _serve(args: argparse.Namespace, config) -> int:
    import uvicorn

    # lazy: keeps scipy, fastapi, starlette off the `covidct --help` path
    from ..web.app import create_app

    models = load_served_models(args.models, args.runtime)
    app = create_app(config, models)
    log.info("serving %s on http://%s:%d (data in %s; API token %s; finished jobs kept %s). %s",
             ", ".join(m.method for m in models), args.host, args.port, config.data_dir,
             "required" if config.token else "not required",
             f"{config.keep_days:g} days" if config.keep_days else "forever", DISCLAIMER)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", server_header=False)
    return 0
