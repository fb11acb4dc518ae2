"""Listing an uploaded archive for the consent page, without extracting it.

The server never unpacks uploaded code; it reads the entries' headers to show
the user what they approve, and refuses at once what no agent would install.
The agent checks every entry again while it unpacks (hpcsera_agent.unpack):
this listing is a courtesy to the uploader, not the safety net.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass

from hpcsera.errors import BadInput

GZIP_MAGIC = b"\x1f\x8b"
# Control, format (bidi, zero-width) and line/paragraph separator characters.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
# Extended headers (pax, GNU long names) are read whole into memory by
# tarfile; real ones are a few hundred bytes.
MAX_EXTENDED_HEADER = 64 * 1024
BLOCK = 512
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Listing:
    format: str
    files: list[str]
    # Regular files only: a preparation executable must be one of them.
    regular: frozenset[str]
    # Regular files with an execute bit (a zip entry without Unix modes counts).
    executable: frozenset[str]
    # Symbolic and hard links: the function's `run` may be neither.
    links: frozenset[str]
    unpacked_bytes: int


class _Counted(io.RawIOBase):
    """Reads through a decompressing stream, refusing beyond `limit` bytes, so
    that a small gzip bomb cannot keep the server inflating for minutes."""

    def __init__(self, stream, limit: int):
        self._stream = stream
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(min(len(buffer), self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise UnsafeEntry("it unpacks to more bytes than the limit")
        buffer[: len(data)] = data
        return len(data)


class UnsafeEntry(Exception):
    """An entry that could write outside the folder it is unpacked into."""

    pass


def archive_list(data: bytes, *, max_entries: int, max_bytes: int) -> Listing:
    """The archive's entries, or BadInput naming the first refused one."""
    try:
        if data.startswith(GZIP_MAGIC):
            return _list_tar(data, max_entries, max_bytes)
        if data.startswith(ZIP_MAGIC):
            return _list_zip(data, max_entries, max_bytes)
    except UnsafeEntry as exc:
        raise BadInput(f"The archive is refused: {exc}.", code="unsafe_archive")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error):
        raise BadInput("The archive is damaged or truncated.", code="invalid_archive")
    raise BadInput(
        "The archive is neither a gzip-compressed tar nor a zip file.",
        code="invalid_archive",
    )


def entry_name(name: str) -> str:
    """The entry's path, normalised; UnsafeEntry when it could leave the folder
    or could show the owner something else than it is (line breaks, bidi
    overrides and other invisible characters)."""
    if not name or "\\" in name or not _plain(name):
        raise UnsafeEntry(f"the entry name {name!r} is not allowed")
    if name.startswith("/"):
        raise UnsafeEntry(f"{name!r} is an absolute path")
    if ".." in name.split("/"):
        raise UnsafeEntry(f"{name!r} has a '..' segment")
    clean = posixpath.normpath(name)
    return "" if clean == "." else clean


def _plain(text: str) -> bool:
    return not any(unicodedata.category(c) in HIDDEN_CATEGORIES for c in text)


def _link_inside(entry: str, target: str) -> bool:
    if not target or target.startswith("/") or "\x00" in target:
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(entry), target))
    return joined != ".." and not joined.startswith("../")


def _inflated(data: bytes, max_bytes: int) -> io.BufferedReader:
    inflated = gzip.GzipFile(fileobj=io.BytesIO(data))
    return io.BufferedReader(_Counted(inflated, max_bytes + 1024 * 1024))


def _check_extended_headers(stream: io.BufferedReader) -> None:
    """Walk the tar's headers without tarfile, refusing an extended header
    larger than MAX_EXTENDED_HEADER before anything reads it into memory."""
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK or not header.strip(b"\x00"):
            return
        size = _header_size(header)
        if header[156:157] in (b"x", b"g", b"L", b"K") and size > MAX_EXTENDED_HEADER:
            raise UnsafeEntry("it holds an extended header larger than 64 KiB")
        left = -(-size // BLOCK) * BLOCK
        while left > 0:
            chunk = stream.read(min(left, 1024 * 1024))
            if not chunk:
                return
            left -= len(chunk)


def _header_size(header: bytes) -> int:
    field = header[124:136]
    if field[0] & 0x80:  # base-256, for sizes beyond the octal field
        return int.from_bytes(field[1:], "big")
    digits = field.strip(b"\x00 ")
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise UnsafeEntry("it has a damaged header")


def _list_tar(data: bytes, max_entries: int, max_bytes: int) -> Listing:
    _check_extended_headers(_inflated(data, max_bytes))
    stream = _inflated(data, max_bytes)
    files: list[str] = []
    regular: set[str] = set()
    executable: set[str] = set()
    links: set[str] = set()
    total = 0
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for count, member in enumerate(archive, start=1):
            if count > max_entries:
                raise UnsafeEntry(f"it has more than {max_entries} entries")
            name = entry_name(member.name)
            if member.issym() or member.islnk():
                links.add(name)
            if member.issym():
                if not _link_inside(name, member.linkname):
                    raise UnsafeEntry(f"the link {name!r} points outside the folder")
            elif member.islnk():
                if entry_name(member.linkname) not in regular:
                    raise UnsafeEntry(
                        f"the hard link {name!r} points outside the folder"
                    )
            elif member.isfile():
                regular.add(name)
                if member.mode & 0o111:
                    executable.add(name)
                total += member.size
            elif not member.isdir():
                raise UnsafeEntry(f"{name!r} is a device, FIFO or other special file")
            if total > max_bytes:
                raise UnsafeEntry(f"it unpacks to more than {max_bytes} bytes")
            if name:
                files.append(name + ("/" if member.isdir() else ""))
    return Listing(
        "tar.gz",
        files,
        frozenset(regular),
        frozenset(executable),
        frozenset(links),
        total,
    )


def _list_zip(data: bytes, max_entries: int, max_bytes: int) -> Listing:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = archive.infolist()
        if len(entries) > max_entries:
            raise UnsafeEntry(f"it has more than {max_entries} entries")
        files, regular, executable, total = [], set(), set(), 0
        for info in entries:
            name = entry_name(info.filename.rstrip("/") or ".")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeEntry(
                    f"{name!r} is a symbolic link (not allowed in zip files)"
                )
            if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeEntry(f"{name!r} is a device, FIFO or other special file")
            if not info.is_dir():
                regular.add(name)
                if not mode or mode & 0o111:
                    executable.add(name)
            total += info.file_size
            if total > max_bytes:
                raise UnsafeEntry(f"it unpacks to more than {max_bytes} bytes")
            if name:
                files.append(name + ("/" if info.is_dir() else ""))
    return Listing(
        "zip", files, frozenset(regular), frozenset(executable), frozenset(), total
    )
