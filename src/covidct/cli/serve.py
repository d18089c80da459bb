"""`covidct serve`: the web page and HTTP API (FastAPI + uvicorn) on the trained models."""
from __future__ import annotations

import argparse
import logging

from ..constants import DISCLAIMER, METHODS
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
                   help="bearer token every API request must carry (default: $COVIDCT_TOKEN; "
                        "none: no token needed)")
    p.add_argument("--workers", type=int, default=2, help="scans analysed at once (default 2)")
    p.add_argument("--max-pending", type=int, default=64,
                   help="scans queued or running before uploads are answered 503 (default 64)")
    p.add_argument("--max-upload-mb", type=int, default=1024,
                   help="largest upload in MiB, answered 413 above it (default 1024)")
    p.add_argument("--max-slices", type=int, default=1000,
                   help="most slices per scan, answered 422 above it (default 1000)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help=RUNTIME_HELP)
    p.add_argument("--show-phi", action="store_true",
                   help="read patient name, ID and dates from DICOM and show them on the page "
                        "(never shown otherwise)")
    p.set_defaults(func=run)


def load_served_models(folder: str | None, runtime: str = "torch") -> list:
    """Every method with a model file in ``folder`` (or the default folders), on ``runtime``;
    none is an error."""
    from ..errors import ModelError
    from ..export import load_model
    from ..predict import find_model, model_dirs

    search = [folder] if folder else None
    found = []
    for method in METHODS:
        try:
            found.append(find_model(method, search))
        except ModelError:
            continue
    if not found:
        where = folder or ", ".join(str(d) for d in model_dirs())
        raise ModelError(f"no trained model (bit.pt or covidctnet.pt) in {where}; pass --models DIR "
                         "(train one with covidct train2d/train3d, or run make demo)")
    return [load_model(path, runtime) for path in found]


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..web.app import create_app
    from ..web.config import MIB, ServeConfig

    models = load_served_models(args.models, args.runtime)
    config = ServeConfig.from_env(
        data_dir=args.data, token=args.token or None, workers=args.workers,
        max_pending=args.max_pending, max_upload_bytes=args.max_upload_mb * MIB,
        max_slices=args.max_slices, show_phi=args.show_phi)
    if config.token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without a token: anyone who can reach it can upload scans "
                    "(set --token or COVIDCT_TOKEN)", args.host)
    app = create_app(config, models)
    log.info("serving %s on http://%s:%d (data in %s). %s", ", ".join(m.method for m in models),
             args.host, args.port, config.data_dir, DISCLAIMER)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
