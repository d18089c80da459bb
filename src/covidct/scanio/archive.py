"""Unpack a .zip of a scan safely: nothing outside the target folder, no zip bombs."""
from __future__ import annotations

import stat
import threading
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import ScanError
from ..privacy import show_paths

#: Largest total uncompressed size accepted (a 1000-slice 512x512 series is about 0.5 GiB).
MAX_UNPACKED_BYTES = 4 * 1024**3
#: Largest compression ratio accepted once the archive unpacks to more than _RATIO_FLOOR;
#: CT series compress 2-10x, zip bombs by thousands.
MAX_RATIO = 200
_RATIO_FLOOR = 64 * 1024**2
MAX_MEMBERS = 100_000
_CHUNK = 1024 * 1024
#: Entries' positions in the archive this thread unpacks, for messages (ZipInfo takes no
#: attributes; the web app unpacks uploads in several threads).
_LOCAL = threading.local()


def extract_zip(path: Path, target: Path, *, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Extract ``path`` into the existing folder ``target`` after checking every entry."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            _LOCAL.positions = {id(m): f"{k + 1} of {len(entries)}" for k, m in enumerate(entries)}
            members = [m for m in entries if not m.is_dir()]
            _check_members(members, path, max_bytes)
            for member in members:
                _extract_member(archive, member, target, path)
    except zipfile.BadZipFile as exc:
        raise ScanError(f"not a readable zip archive ({exc})", path) from None
    except (zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError) as exc:
        raise ScanError(f"cannot unpack the zip archive ({exc})", path) from None
    finally:
        _LOCAL.positions = {}
    return target


def _check_members(members: list[zipfile.ZipInfo], path: Path, max_bytes: int) -> None:
    if len(members) > MAX_MEMBERS:
        raise ScanError(f"zip holds {len(members)} files, more than the {MAX_MEMBERS} accepted",
                        path)
    for member in members:
        _safe_name(member, path)
        if stat.S_ISLNK(member.external_attr >> 16):
            raise ScanError(f"{_entry(member)} is a symbolic link; refused", path)
    unpacked = sum(m.file_size for m in members)
    packed = sum(m.compress_size for m in members)
    if unpacked > max_bytes:
        raise ScanError(f"zip unpacks to {_size(unpacked)}, more than the {_size(max_bytes)} "
                        "accepted", path)
    if unpacked > _RATIO_FLOOR and unpacked > MAX_RATIO * max(packed, 1):
        raise ScanError(f"zip compression ratio {unpacked / max(packed, 1):.0f}:1 looks like a "
                        "zip bomb; refused", path)


def _safe_name(member: zipfile.ZipInfo, path: Path) -> PurePosixPath:
    name = member.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise ScanError(f"{_entry(member)} would be written outside the folder; refused", path)
    return PurePosixPath(*[p for p in parts if p not in ("", ".")])


def _extract_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path,
                    path: Path) -> None:
    """Copy in chunks and stop at the declared size: a lying header cannot fill the disk."""
    out = target.joinpath(*_safe_name(member, path).parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with archive.open(member) as src, open(out, "wb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > member.file_size:
                raise ScanError(f"{_entry(member)} is larger than declared", path)
            dst.write(chunk)


def _entry(member: zipfile.ZipInfo) -> str:
    """An entry by its position in the archive (names may identify), or by name with
    --show-paths."""
    if show_paths():
        return f"zip entry {member.filename!r}"
    return f"zip entry {getattr(_LOCAL, 'positions', {}).get(id(member), '?')}"


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"
