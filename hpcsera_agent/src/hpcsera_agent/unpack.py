"""Unpacking an uploaded archive without letting it write outside its folder.

Written by hand because the agent runs on Python 3.9, where tarfile has no
extraction filters, and because `extractall` trusts names, links and sizes.
Every entry is checked before anything is written for it; the first refusal
raises `UnsafeArchive`, and the caller deletes the whole folder.

The destination is a fresh folder only this process writes to (mode 0700), so
the checks made with `lstat` cannot be raced by another user; files are still
opened with O_NOFOLLOW | O_EXCL as a second line.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, TypeVar

T = TypeVar("T")
FORMATS = ("tar.gz", "zip")
CHUNK = 64 * 1024
# Errors a damaged or hostile archive makes the readers raise (a bad gzip
# stream is an OSError). They are caught only around reads, never writes.
READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    OSError,
    RuntimeError,  # an encrypted zip entry
    NotImplementedError,  # a zip compression method Python does not know
)
# What a tar stream may hold besides file data: a header and padding per entry
# plus long-name or pax headers. Reading past this means headers are being
# used to smuggle data (a huge pax header is read into memory by tarfile).
# Accepted trade-off: one pax header may still take up to this much memory.
TAR_OVERHEAD_PER_ENTRY = 3 * 1024
TAR_OVERHEAD = 1024 * 1024


class UnsafeArchive(Exception):
    """The archive is refused as a whole; the message names the entry and why."""


@dataclass
class _Entry:
    name: str  # as the archive spells it, for messages
    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    mode: int = 0
    target: str = ""  # of a link
    opener: Callable[[], IO[bytes]] | None = None


def unpack(
    archive: Path, fmt: str, dest: Path, *, max_entries: int, max_bytes: int
) -> list[str]:
    """Write the archive's entries into `dest`; their relative paths, in order."""
    if fmt not in FORMATS:
        raise UnsafeArchive(f"archive format {fmt!r} is not one of tar.gz, zip")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    writer = _Writer(Path(os.path.realpath(dest)), max_entries, max_bytes)
    entries = _tar_entries if fmt == "tar.gz" else _zip_entries
    for entry in entries(archive, max_entries, max_bytes):
        writer.add(entry)
    writer.finish()
    return writer.paths


def safe_parts(name: str, *, folder: bool = False) -> tuple[str, ...]:
    """The components of a relative name that stays inside its root.

    "." and empty components are dropped ("./a//b" is a/b); an empty result
    (the root itself) is allowed only for a folder.
    """
    if not name or "\0" in name:
        raise UnsafeArchive(f"entry {name!r} has an empty name or a NUL byte in it")
    # On POSIX a backslash is an ordinary character, but an archive made on
    # Windows means a separator by it: "..\\x" would climb out there.
    if "\\" in name:
        raise UnsafeArchive(f"entry {name!r} has a backslash in its name")
    # Line breaks, bidi overrides and other invisible characters make a name
    # read as another one on the consent page and in listings.
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise UnsafeArchive(f"entry {name!r} has control or invisible characters")
    if name.startswith("/"):
        raise UnsafeArchive(f"entry {name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"entry {name!r} has a '..' component")
    if not parts and not folder:
        raise UnsafeArchive(f"entry {name!r} names the archive's top folder")
    return parts


def _read(reader: Callable[[], T], where: str) -> T:
    try:
        return reader()
    except READ_ERRORS as exc:
        raise UnsafeArchive(f"the archive is damaged ({where}): {exc}")


class _Capped:
    """A stream that refuses to yield more than `limit` bytes, before reading."""

    def __init__(self, stream: IO[bytes], limit: int):
        self.stream = stream
        self.left = limit

    def read(self, size: int = -1) -> bytes:
        wanted = self.left + 1 if size < 0 else min(size, self.left + 1)
        data = self.stream.read(wanted)
        self.left -= len(data)
        if self.left < 0:
            raise UnsafeArchive(
                "the archive's tar stream is larger than its files and headers "
                "can explain"
            )
        return data


def _tar_entries(archive: Path, max_entries: int, max_bytes: int) -> Iterator[_Entry]:
    limit = max_bytes + (max_entries + 1) * TAR_OVERHEAD_PER_ENTRY + TAR_OVERHEAD
    with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        # Stream mode: members are read once, in order, and never seeked back to.
        capped = _Capped(gz, limit)
        tar = _read(lambda: tarfile.open(fileobj=capped, mode="r|"), "tar.gz")
        # TODO: tarfile ends the listing silently at the first invalid header
        # after the first, so garbage appended to an archive is ignored rather
        # than refused; refusing it needs a header parser of our own.
        while True:
            member = _read(tar.next, "tar.gz")
            if member is None:
                return
            yield _tar_entry(tar, member)


def _tar_entry(tar: tarfile.TarFile, member: tarfile.TarInfo) -> _Entry:
    name = member.name
    if member.isreg():

        def opener() -> IO[bytes]:
            return _read(lambda: tar.extractfile(member), f"entry {name!r}")

        return _Entry(name, "file", member.mode, opener=opener)
    if member.isdir():
        return _Entry(name, "dir", member.mode)
    if member.issym():
        return _Entry(name, "symlink", target=member.linkname)
    if member.islnk():
        return _Entry(name, "hardlink", target=member.linkname)
    raise UnsafeArchive(f"entry {name!r} is a {_kind(member)}, which is refused")


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    return f"member of tar type {member.type!r}"


def _zip_entries(archive: Path, max_entries: int, max_bytes: int) -> Iterator[_Entry]:
    with _read(lambda: zipfile.ZipFile(archive), "zip") as zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise UnsafeArchive(f"the archive has more than {max_entries} entries")
        for info in infos:
            yield _zip_entry(zf, info)


def _zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Entry:
    name = info.filename
    # The unix mode sits in the high 16 bits when the archiver recorded one.
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if info.is_dir() or kind == stat.S_IFDIR:
        return _Entry(name, "dir", mode & 0o7777 or 0o755)
    if kind == stat.S_IFLNK:
        raise UnsafeArchive(
            f"entry {name!r} is a symbolic link; links in zip archives are refused"
        )
    if kind not in (0, stat.S_IFREG):
        raise UnsafeArchive(f"entry {name!r} is a device, FIFO or socket")

    def opener() -> IO[bytes]:
        return _read(lambda: zf.open(info), f"entry {name!r}")

    return _Entry(name, "file", mode & 0o7777 or 0o644, opener=opener)


class _Writer:
    def __init__(self, root: Path, max_entries: int, max_bytes: int):
        self.root = root
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.written = 0
        self.count = 0
        self.paths: list[str] = []
        self.files: set[str] = set()  # regular files, the only hardlink targets
        self.links: list[str] = []
        self.folder_modes: dict[str, int] = {}

    def add(self, entry: _Entry) -> None:
        self.count += 1
        if self.count > self.max_entries:
            raise UnsafeArchive(f"the archive has more than {self.max_entries} entries")
        parts = safe_parts(entry.name, folder=entry.kind == "dir")
        if not parts:
            return  # "./": the destination itself
        self._make_parents(entry.name, parts)
        rel = "/".join(parts)
        path = self.root.joinpath(*parts)
        if self._exists(entry, path):
            self.folder_modes[rel] = _folder_mode(entry.mode)
            return
        if entry.kind == "dir":
            os.mkdir(path, 0o700)
            self.folder_modes[rel] = _folder_mode(entry.mode)
        elif entry.kind == "file":
            self._write(entry, path)
            self.files.add(rel)
        elif entry.kind == "symlink":
            self._symlink(entry, parts, path)
            self.links.append(rel)
        else:
            self._hardlink(entry, path)
        self.paths.append(rel)

    def finish(self) -> None:
        """Check where every link finally leads, then set the folders' modes."""
        # A link that looked harmless alone can leave through another one
        # ("up -> s/.." with "s -> ."), so the real resolution decides.
        for rel in self.links:
            real = os.path.realpath(self.root / rel)
            if os.path.commonpath([real, str(self.root)]) != str(self.root):
                raise UnsafeArchive(
                    f"entry {rel!r} is a symbolic link that resolves outside the "
                    "archive"
                )
        # Deepest first, and only now: a read-only folder would stop writes.
        for rel in sorted(self.folder_modes, key=lambda r: -r.count("/")):
            os.chmod(self.root / rel, self.folder_modes[rel])

    def _make_parents(self, name: str, parts: tuple[str, ...]) -> None:
        path = self.root
        for part in parts[:-1]:
            path = path / part
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o700)
                continue
            if stat.S_ISLNK(info.st_mode):
                raise UnsafeArchive(
                    f"entry {name!r} would be written through the symbolic link "
                    f"{str(path.relative_to(self.root))!r}"
                )
            if not stat.S_ISDIR(info.st_mode):
                raise UnsafeArchive(f"entry {name!r} is inside a file, not a folder")

    def _exists(self, entry: _Entry, path: Path) -> bool:
        """True when a folder entry repeats a folder; refuses other repeats."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeArchive(
                f"entry {entry.name!r} would replace a symbolic link of the archive"
            )
        if entry.kind == "dir" and stat.S_ISDIR(info.st_mode):
            return True
        # A repeated file could rewrite a file hardlinked to it; nothing a
        # legitimate upload needs, so every other repeat is refused.
        raise UnsafeArchive(f"entry {entry.name!r} appears twice in the archive")

    def _write(self, entry: _Entry, path: Path) -> None:
        assert entry.opener is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        where = f"entry {entry.name!r}"
        source = entry.opener()
        with source, open(os.open(path, flags, 0o600), "wb") as out:
            while True:
                chunk = _read(lambda: source.read(CHUNK), where)
                if not chunk:
                    break
                # Counted on what is really written, not on what headers claim.
                if self.written + len(chunk) > self.max_bytes:
                    raise UnsafeArchive(
                        f"the archive unpacks to more than {self.max_bytes} bytes "
                        f"(stopped in entry {entry.name!r})"
                    )
                out.write(chunk)
                self.written += len(chunk)
            # No setuid, setgid or sticky bit, nobody else may write; the
            # executable bits stay, since `run` and the preparation need them.
            os.fchmod(out.fileno(), (entry.mode & 0o755) | 0o600)

    def _symlink(self, entry: _Entry, parts: tuple[str, ...], path: Path) -> None:
        target = entry.target
        if not target or "\0" in target or "\\" in target:
            raise UnsafeArchive(
                f"entry {entry.name!r} is a symbolic link with an unusable target"
            )
        if target.startswith("/"):
            raise UnsafeArchive(
                f"entry {entry.name!r} is a symbolic link to the absolute path "
                f"{target!r}"
            )
        joined = posixpath.normpath(posixpath.join(*parts[:-1], target))
        if joined == ".." or joined.startswith("../"):
            raise UnsafeArchive(
                f"entry {entry.name!r} is a symbolic link that leads outside the "
                f"archive ({target!r})"
            )
        os.symlink(target, path)

    def _hardlink(self, entry: _Entry, path: Path) -> None:
        try:
            rel = "/".join(safe_parts(entry.target))
        except UnsafeArchive:
            rel = ""
        source = self.root / rel
        if rel not in self.files or not stat.S_ISREG(os.lstat(source).st_mode):
            raise UnsafeArchive(
                f"entry {entry.name!r} is a hard link to {entry.target!r}, which is "
                "not a file unpacked before it"
            )
        os.link(source, path, follow_symlinks=False)


def _folder_mode(mode: int) -> int:
    # The owner keeps full access, or the folder could not be removed later.
    return (mode & 0o755) | 0o700
