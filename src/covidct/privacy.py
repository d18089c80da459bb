"""How covidct names the user's files in what it prints and writes: never by their path.

Real exports carry identifiers in file and folder names (``DOE_JANE_MRN778899/IM0000.dcm``,
study dates as file names), so outputs, logs, manifests and caches name a file by its
position (``file 12 of 148 in name order``) or by a salted digest, unless the user asks
for paths with ``--show-paths`` (or ``COVIDCT_SHOW_PATHS=1``, which worker processes
inherit). A one-line error on the user's own terminal may still name the path they typed.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SHOW_PATHS_ENV = "COVIDCT_SHOW_PATHS"
#: Salt file kept in an output folder, so its digests stay stable across reruns there.
SALT_FILE = ".covidct-salt"
_PROCESS_SALT = secrets.token_bytes(16)


def show_paths() -> bool:
    return os.environ.get(SHOW_PATHS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_show_paths(on: bool) -> None:
    """Set for this process and the workers it starts."""
    if on:
        os.environ[SHOW_PATHS_ENV] = "1"
    else:
        os.environ.pop(SHOW_PATHS_ENV, None)


def member_label(path: Path, index: int, total: int, root: Path | None = None) -> str:
    """A file inside the scan the user gave: by position, or its relative path with --show-paths."""
    if show_paths():
        try:
            return str(path.relative_to(root)) if root else path.name
        except ValueError:
            return path.name
    return f"file {index + 1} of {total} in name order"


def source_label(path: str | os.PathLike | None) -> str:
    """The scan itself, in printed facts: its path only with --show-paths."""
    if path and show_paths():
        return str(path)
    return "(path hidden; --show-paths shows it)"


def folder_salt(folder: str | os.PathLike) -> bytes:
    """The salt of an output folder, made on first use (mode 0600)."""
    path = Path(folder) / SALT_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    # lazy: keeps atomic off the `covidct --help` path
    from .atomic import make_dir, private_files

    salt = secrets.token_bytes(16)
    with private_files():  # the folder holds derived patient data: 0700 when new
        make_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(salt.hex() + "\n")
    return salt


def pseudonym(name: str, salt: bytes | None = None, prefix: str = "id") -> str:
    """``<prefix>-<12 hex>``: a keyed digest of a name, or the name itself with --show-paths.

    Without a salt, the digest is keyed per process (stable within one run only).
    """
    if show_paths():
        return name
    digest = hmac.new(salt or _PROCESS_SALT, name.encode("utf-8", "replace"), hashlib.sha256)
    return f"{prefix}-{digest.hexdigest()[:12]}"
