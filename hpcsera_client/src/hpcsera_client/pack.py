"""Pack a folder as tar.gz for `hpcsera code upload --archive DIR`.

The same folder gives the same bytes, hence the same SHA-256, on every
machine: entries sorted, times 0, owners 0, modes reduced to 0755/0644, no
gzip file name or time. A CI job can then upload without a tar command, and
the digest it prints depends only on the files.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path


class PackError(Exception):
    """The folder cannot be packed as it is (a link leaving it, a device...)."""


def pack_directory(folder: str | Path) -> bytes:
    root = Path(folder)
    if not root.is_dir():
        raise PackError(f"{folder} is not a directory")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in _entries(root):
                _add(tar, root, path)
    return buffer.getvalue()


def _entries(root: Path) -> list[Path]:
    """Every entry under root, parents before children, in a fixed order.

    Links to folders are entries, not descended into: they are stored as links.
    """
    found: list[Path] = []
    for here, dirs, files in os.walk(root):
        base = Path(here)
        found.extend(base / name for name in dirs + files)
    return sorted(found, key=lambda path: path.relative_to(root).parts)


def _add(tar: tarfile.TarFile, root: Path, path: Path) -> None:
    name = path.relative_to(root).as_posix()
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if path.is_symlink():
        target = os.readlink(path)
        if not _inside(root, path, target):
            raise PackError(f"the link {name} points outside {root}: {target}")
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        tar.addfile(info)
    elif path.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif path.is_file():
        executable = os.access(path, os.X_OK)
        info.mode = 0o755 if executable else 0o644
        data = path.read_bytes()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        raise PackError(f"{name} is neither a file, a folder nor a link")


def _inside(root: Path, link: Path, target: str) -> bool:
    """A relative target that stays inside root, followed as written (the
    agent resolves it the same way after unpacking)."""
    if os.path.isabs(target):
        return False
    parts = list(link.parent.relative_to(root).parts)
    for part in Path(target).parts:
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part != ".":
            parts.append(part)
    return True
