"""Write outputs atomically: a reader sees the old file, or the whole new one, never half.

Everything covidct writes for a user (models, checkpoints, JSON/CSV results, reports)
goes through these helpers, so an interrupted run never leaves an output that looks complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
#: Modes of files and new folders holding derived patient data (predictions, pictures, caches).
PRIVATE_FILE_MODE, PRIVATE_DIR_MODE = 0o600, 0o700
_LOCAL = threading.local()
#: A ``.part`` file of ours older than this was left by a killed writer, and is removed.
STALE_PART_S = 3600


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Within the block (this thread), atomic writes make 0600 files and 0700 folders."""
    before = getattr(_LOCAL, "private", False)
    _LOCAL.private = True
    try:
        yield
    finally:
        _LOCAL.private = before


def is_private() -> bool:
    return bool(getattr(_LOCAL, "private", False))


def make_dir(path: str | os.PathLike) -> Path:
    """mkdir -p; new folders are 0700 inside :func:`private_files`."""
    path = Path(path)
    if is_private():
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        for folder in missing:
            with contextlib.suppress(OSError):
                os.chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
    else:
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    ``durable=True`` (model files) fsyncs the file before and its folder after the rename,
    so a power cut leaves the old file or the whole new one, never a truncated one.
    """
    path = Path(path)
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600; ordinary outputs take the umask's mode, patient data stay 0600
    os.chmod(tmp_path, PRIVATE_FILE_MODE if is_private() else _FILE_MODE)
    try:
        yield tmp_path
        if durable:
            _fsync(tmp_path)
        os.replace(tmp_path, path)
        if durable:
            _fsync(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(fd)


def remove_stale_parts(path: str | os.PathLike, older_than_s: float = STALE_PART_S) -> int:
    """Remove ``.<name>.*.part`` files beside ``path`` that a killed writer left behind."""
    path = Path(path)
    removed = 0
    now = time.time()
    for part in path.parent.glob(f".{path.name}.*.part"):
        with contextlib.suppress(OSError):
            if part.is_file() and now - part.stat().st_mtime > older_than_s:
                part.unlink()
                removed += 1
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=jsonable) + "\n")


def jsonable(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy values and paths."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
