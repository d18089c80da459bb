"""The `covidct` command: argument parsing only; every command calls the library.

Each command lives in its own small module exposing ``register(subparsers)``, which adds
its parser and sets ``func``. Heavy imports (torch, ...) happen inside the handlers so that
``covidct --help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..constants import DISCLAIMER
from ..errors import CovidctError
from ..privacy import set_show_paths

#: Command modules, in the order `covidct --help` lists them.
COMMANDS = ("demo", "info", "synth", "train_bit", "train_covidctnet", "predict", "evaluate", "report", "serve", "experiment",
            "export", "predict_batch", "dicom_node", "cache")

EPILOG = f"""\
Run `covidct COMMAND --help` for the options of a command.
{DISCLAIMER}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidct",
        description="COVID-19 detection in chest CT: the BiT slice classifier and CovidCTNet, "
                    "with scan I/O for DICOM, NIfTI and PNG/JPG.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks and debug logs")
    parser.add_argument("--show-paths", action="store_true",
                        help="name the user's files by their paths in outputs and messages "
                             "(default: by position or a salted digest, as file and folder "
                             "names often carry patient identifiers)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM (timeout, systemd, Slurm), raised like KeyboardInterrupt so that every
    ``with``/``finally`` (temporary zip folders, .part files) cleans up as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def install_sigterm_handler() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if args.show_paths:
        set_show_paths(True)
    install_sigterm_handler()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CovidctError as exc:
        if args.debug:
            raise
        print(f"covidct: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("covidct: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("covidct: terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # an internal bug: one line, the traceback behind --debug
        if args.debug:
            raise
        print(f"covidct: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback and please report it)", file=sys.stderr)
        return 1
