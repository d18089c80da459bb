"""SHA-256 of files: the model file's fingerprint in every output, and cache keys for inputs."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_BLOCK = 1 << 22


def _update(digest, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of one file's bytes (what ``sha256sum`` prints)."""
    digest = hashlib.sha256()
    _update(digest, Path(path))
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of every file under a folder (relative names included)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        _update(digest, file)
    return digest.hexdigest()
