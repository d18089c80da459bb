"""`covidct cache`: where CovidCTNet's array cache is, and `covidct cache clear`."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache", help="show or clear the cache of pre-processed volumes and infection maps",
        description="CovidCTNet caches pre-processed volumes and infection maps (derived patient "
                    "images, files 0600 in 0700 folders) for training: $COVIDCT_CACHE, else "
                    "~/.cache/covidct/covidctnet. Prediction uses no persistent cache unless "
                    "$COVIDCT_CACHE names a folder. `covidct cache clear` removes covidct's "
                    "entries (nothing else) from it.")
    p.add_argument("action", choices=("info", "clear"), nargs="?", default="info")
    p.add_argument("--dir", default=None, help="the cache folder (default: as described above)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    # lazy: keeps numpy off the `covidct --help` path
    from ..covidctnet.cache import clear, location

    root = Path(args.dir).expanduser() if args.dir else location()
    if root is None:
        print("caching is off ($COVIDCT_CACHE=off)")
        return 0
    if args.action == "clear":
        files, size = clear(root)
        print(f"removed {files} cache entries ({size / 1024**2:.1f} MiB)")
        return 0
    entries = list(root.glob("??/*.npz")) if root.is_dir() else []
    size = sum(e.stat().st_size for e in entries)
    print(f"{len(entries)} cache entries, {size / 1024**2:.1f} MiB")
    return 0
