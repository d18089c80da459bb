"""On-disk cache of CovidCTNet's intermediate arrays (pre-processed volumes, infection maps).

An entry is keyed by the scan's content (its file bytes, or its voxels and geometry) and
by every setting that shaped the array (and, for infection maps, the denoiser's weights),
so a changed scan, setting or model can never hit a stale entry. Entries hold arrays and
a few de-identified facts only; names are hashes. Each entry is one ``.npz`` written
atomically, so an interrupted run leaves no half entry behind.

Location: ``$COVIDCT_CACHE`` if set (``off`` disables caching), else ``~/.cache/covidct/covidctnet``.
The entries are derived patient images, so files are 0600 and folders 0700. Training uses
the cache by default (it pays on every epoch); a model loaded from its file for prediction
(``covidct predict``, ``predict-batch``, ``evaluate``, the web app) does not, unless
``$COVIDCT_CACHE`` names a folder. ``covidct cache clear`` empties it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, make_dir, private_files
from ..scan import Scan

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("~/.cache/covidct/covidctnet")
_OFF = ("off", "none", "0", "false", "no")


def scan_digest(scan: Scan) -> str:
    """SHA-256 of a scan's voxels and the geometry that gives them meaning."""
    digest = hashlib.sha256()
    voxels = np.ascontiguousarray(scan.voxels)
    digest.update(json.dumps([voxels.shape, str(voxels.dtype), scan.units, list(scan.spacing),
                              np.asarray(scan.direction).round(6).tolist()]).encode())
    digest.update(memoryview(voxels).cast("B"))
    return digest.hexdigest()


def weights_digest(module) -> str:
    """SHA-256 of a torch module's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ArrayCache:
    """Arrays by key under ``root``; ``root=None`` is a cache that never hits."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = None if root is None else Path(root).expanduser()

    @classmethod
    def default(cls) -> "ArrayCache":
        env = os.environ.get("COVIDCT_CACHE")
        if env is not None and env.strip().lower() in _OFF:
            return cls(None)
        return cls(env or DEFAULT_ROOT)

    @classmethod
    def for_prediction(cls) -> "ArrayCache":
        """No persistent cache unless ``$COVIDCT_CACHE`` names a folder."""
        env = (os.environ.get("COVIDCT_CACHE") or "").strip()
        return cls(None if not env or env.lower() in _OFF else env)

    @property
    def enabled(self) -> bool:
        return self.root is not None

    @staticmethod
    def key(kind: str, content: str, params: dict[str, Any]) -> str:
        blob = json.dumps([kind, content, params], sort_keys=True, default=str)
        return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:40]}"

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[-2:] / f"{key}.npz"

    def load(self, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        if self.root is None:
            return None
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["array"], json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            log.warning("ignoring an unreadable cache entry %s", path.name)
            return None

    def save(self, key: str, array: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        if self.root is None:
            return
        try:
            with private_files():
                make_dir(self.root)
                with atomic_path(self._path(key)) as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, array=array, meta=np.array(json.dumps(meta or {})))
        except OSError as exc:  # a full or read-only disk must not fail the prediction
            log.warning("could not write the cache entry (%s)", exc)


#: Entry names: ``<kind>-<40 hex>.npz`` (and their ``.part`` files) in two-character folders.
_ENTRY = re.compile(r"^\.?[a-z0-9_]+-[0-9a-f]{40}\.npz(\..*\.part)?$")


def clear(root: str | os.PathLike) -> tuple[int, int]:
    """Remove covidct's cache entries under ``root`` (nothing else); (files, bytes) removed."""
    root = Path(root).expanduser()
    files = size = 0
    if not root.is_dir():
        return 0, 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and len(p.name) == 2):
        for entry in folder.iterdir():
            if entry.is_file() and _ENTRY.match(entry.name):
                size += entry.stat().st_size
                entry.unlink()
                files += 1
        if not any(folder.iterdir()):
            folder.rmdir()
    return files, size


def location() -> Path | None:
    """The folder ``ArrayCache.default()`` uses (None when caching is off)."""
    return ArrayCache.default().root
