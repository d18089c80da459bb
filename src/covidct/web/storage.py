"""The --data folder at rest: one server per folder, private file modes, and retention.

A data folder holds patients' scans (the viewer's arrays), results and, with --show-phi,
names and birth dates, so: one server process owns it (an exclusive lock, refused otherwise:
two servers would mark each other's queued jobs failed and delete their uploads), everything
in it is readable by the server's user only (files 0600, folders 0700, also when they existed
before with other modes), and finished jobs are deleted after ``keep_days``.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import time
from pathlib import Path
from typing import IO

from ..atomic import atomic_path
from ..errors import CovidctError

log = logging.getLogger("covidct.web")

LOCK_NAME = "server.lock"
FILE_MODE, DIR_MODE = 0o600, 0o700
#: How often a running server looks for jobs past the retention period.
SWEEP_INTERVAL_S = 3600.0


class DataFolderBusy(CovidctError):
    """Another server process holds the data folder."""


def lock_data_folder(folder: Path) -> IO[str]:
    """Hold an exclusive lock on ``folder`` for as long as the returned file stays open.

    flock locks vanish with the process, so a server killed with -9 never leaves a stale lock.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = handle.read().strip()
        handle.close()
        raise DataFolderBusy("another covidct serve" + (f" (process {holder})" if holder else "")
                             + " is using this data folder; stop it, or give this one "
                             "another --data folder", folder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def make_private(folder: Path) -> None:
    """Folders 0700 and files 0600 under ``folder`` (and itself), whatever they were before."""
    folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(folder, DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            _chmod(Path(root) / name, DIR_MODE)
        for name in files:
            _chmod(Path(root) / name, FILE_MODE)


def _chmod(path: Path, mode: int) -> None:
    info = path.lstat()
    if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` atomically as a 0600 file (its folder 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    with atomic_path(path) as tmp:
        os.chmod(tmp, FILE_MODE)
        tmp.write_bytes(data)
    return path


def expired_before(keep_days: float, now: float | None = None) -> float | None:
    """The finish time before which jobs are deleted (None: keep forever)."""
    if keep_days <= 0:
        return None
    return (time.time() if now is None else now) - keep_days * 86400.0


def remove_job_files(results_dir: Path, job_id: str) -> None:
    shutil.rmtree(results_dir / job_id, ignore_errors=True)
