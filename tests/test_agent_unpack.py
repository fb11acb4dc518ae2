"""Unpacking uploaded archives: what is written, and every way out that is refused.

Each hostile archive is unpacked into a folder three levels down inside a
"world" folder; the world is listed before and after, so anything written
outside the destination (by a name, a link or a hard link) is seen.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from hpcsera_agent.unpack import UnsafeArchive, unpack

LIMITS = {"max_entries": 100, "max_bytes": 1024 * 1024}


@pytest.fixture
def world(tmp_path: Path) -> Path:
    world = tmp_path / "world"
    (world / "outside").mkdir(parents=True)
    (world / "outside" / "secret").write_text("keep me")
    (world / "a" / "b").mkdir(parents=True)
    return world


def dest_in(world: Path) -> Path:
    return world / "a" / "b" / "dest"


def listing(world: Path) -> dict[str, tuple]:
    """Everything in the world except the destination: kind, size, link count."""
    seen = {}
    for folder, dirs, files in os.walk(world):
        for name in dirs + files:
            path = Path(folder) / name
            if path == dest_in(world) or dest_in(world) in path.parents:
                continue
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            # A folder's size and link count change with the destination in it.
            if kind == stat.S_IFDIR:
                seen[str(path.relative_to(world))] = (kind,)
            else:
                seen[str(path.relative_to(world))] = (
                    kind,
                    info.st_size,
                    info.st_nlink,
                )
    return seen


def refuse(world: Path, archive: Path, fmt: str, match: str, **limits) -> None:
    before = listing(world)
    with pytest.raises(UnsafeArchive, match=match):
        unpack(archive, fmt, dest_in(world), **{**LIMITS, **limits})
    assert listing(world) == before


def regular(name: str, data: bytes = b"x", mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def folder(name: str, mode: int = 0o755):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special(name: str, kind: bytes):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def tar_gz(tmp_path: Path, *members) -> Path:
    path = tmp_path / "upload.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def zip_of(tmp_path: Path, *members: tuple[str, bytes, int]) -> Path:
    """(name, data, external_attr >> 16) per entry; 0 leaves the mode out."""
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            # The MS-DOS "archive" bit alone: zipfile would otherwise add 0600.
            info.external_attr = (mode << 16) or 0x20
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_it_unpacks_files_folders_and_inner_links_with_safe_modes(tmp_path, world):
    archive = tar_gz(
        tmp_path,
        folder("./"),
        folder("./bin", 0o555),
        regular("./bin/run", b"#!/bin/sh\necho hi\n", 0o4755),
        regular("./data/readme", b"hello", 0o666),
        link("./data/current", "readme"),
        link("./bin/tool", "../data/readme"),
        link("./data/copy", "data/readme", tarfile.LNKTYPE),
    )
    dest = dest_in(world)

    written = unpack(archive, "tar.gz", dest, **LIMITS)

    assert written == [
        "bin",
        "bin/run",
        "data/readme",
        "data/current",
        "bin/tool",
        "data/copy",
    ]
    assert mode_of(dest / "bin/run") == 0o755, "setuid is stripped, x bits stay"
    assert mode_of(dest / "data/readme") == 0o644, "nobody else may write"
    assert mode_of(dest / "bin") == 0o755, "the owner may always write a folder"
    assert os.readlink(dest / "data/current") == "readme"
    assert (dest / "bin/tool").read_bytes() == b"hello"
    assert os.stat(dest / "data/copy").st_ino == os.stat(dest / "data/readme").st_ino


@pytest.mark.parametrize(
    "members, match",
    [
        ([regular("../escaped")], "'..'"),
        ([regular("ok/../../escaped")], "'..'"),
        ([regular("..\\..\\escaped")], "backslash"),
        ([regular("")], "empty name"),
        ([link("up", "../../outside")], "leads outside"),
        ([folder("sub"), link("sub/up", "../..")], "leads outside"),
        # Each link alone stays inside; together "up" is the destination's parent.
        ([link("s", "."), link("up", "s/..")], "resolves outside"),
        ([folder("sub"), link("inner", "sub"), regular("inner/x")], "through"),
        ([regular("f"), link("l", "f"), regular("l")], "replace a symbolic link"),
        ([regular("f"), regular("f")], "twice"),
        ([regular("f"), regular("f/g")], "inside a file"),
        ([link("h", "not-yet-there", tarfile.LNKTYPE)], "hard link"),
        ([link("h", "../../outside/secret", tarfile.LNKTYPE)], "hard link"),
        ([regular("f"), link("l", "f"), link("h", "l", tarfile.LNKTYPE)], "hard link"),
        ([folder("d"), link("h", "d", tarfile.LNKTYPE)], "hard link"),
        ([special("tty", tarfile.CHRTYPE)], "character device"),
        ([special("disk", tarfile.BLKTYPE)], "block device"),
        ([special("pipe", tarfile.FIFOTYPE)], "FIFO"),
        ([special("odd", b"Z")], "tar type"),
    ],
)
def test_it_refuses_names_links_and_types_that_could_escape(
    tmp_path, world, members, match
):
    refuse(world, tar_gz(tmp_path, *members), "tar.gz", match)


def test_it_refuses_absolute_names_and_absolute_link_targets(tmp_path, world):
    outside = world / "outside"
    cases = [
        ([regular(str(outside / "planted"))], "absolute path"),
        ([link("etc", "/etc"), regular("etc/planted")], "absolute path"),
        ([link("out", str(outside)), regular("out/planted")], "absolute path"),
        ([link("pw", "/etc/passwd", tarfile.LNKTYPE)], "hard link"),
        ([link("pw", str(outside / "secret"), tarfile.LNKTYPE)], "hard link"),
    ]
    for members, match in cases:
        refuse(world, tar_gz(tmp_path, *members), "tar.gz", match)
    assert os.stat(outside / "secret").st_nlink == 1


def test_it_refuses_more_entries_than_allowed(tmp_path, world):
    archive = tar_gz(tmp_path, *[regular(f"f{i}") for i in range(4)])

    refuse(world, archive, "tar.gz", "more than 3 entries", max_entries=3)
    assert len(unpack(archive, "tar.gz", tmp_path / "ok", **LIMITS)) == 4


def test_it_stops_writing_at_the_byte_limit_however_well_it_compresses(tmp_path, world):
    archive = tar_gz(tmp_path, regular("big", b"\0" * (4 * 1024 * 1024)))
    assert archive.stat().st_size < 64 * 1024, "a small upload that unpacks large"

    refuse(world, archive, "tar.gz", "more than 100000 bytes", max_bytes=100_000)
    assert (dest_in(world) / "big").stat().st_size <= 100_000


def test_the_byte_limit_counts_all_files_together(tmp_path, world):
    archive = tar_gz(tmp_path, *[regular(f"f{i}", b"y" * 40_000) for i in range(3)])

    refuse(world, archive, "tar.gz", "stopped in entry 'f2'", max_bytes=100_000)
    assert not (dest_in(world) / "f2").stat().st_size > 20_000


def test_it_refuses_a_tar_stream_that_hides_data_in_its_headers(tmp_path, world):
    # tarfile reads a pax header into memory whole; 8 MB of it must not be read.
    info, data = regular("f")
    info.pax_headers = {"comment": "z" * (8 * 1024 * 1024)}
    path = tmp_path / "upload.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))

    refuse(world, path, "tar.gz", "larger than", max_bytes=1024, max_entries=1)


def test_it_refuses_a_file_that_is_not_the_format_named(tmp_path, world):
    path = tmp_path / "upload.tar.gz"
    path.write_bytes(b"PK\x03\x04 not really anything")

    refuse(world, path, "tar.gz", "damaged")
    refuse(world, path, "zip", "damaged")
    refuse(world, path, "rar", "not one of")


def test_it_unpacks_a_zip_keeping_its_executable_bits(tmp_path, world):
    archive = zip_of(
        tmp_path,
        ("bin/", b"", stat.S_IFDIR | 0o755),
        ("bin/run", b"#!/bin/sh\n", stat.S_IFREG | 0o6755),
        ("notes.txt", b"no unix mode", 0),
    )
    dest = dest_in(world)

    assert unpack(archive, "zip", dest, **LIMITS) == ["bin", "bin/run", "notes.txt"]
    assert mode_of(dest / "bin/run") == 0o755
    assert mode_of(dest / "notes.txt") == 0o644
    assert (dest / "notes.txt").read_bytes() == b"no unix mode"


@pytest.mark.parametrize(
    "members, match",
    [
        ([("../escaped", b"x", 0)], "'..'"),
        ([("/tmp/escaped", b"x", 0)], "absolute path"),
        ([("..\\escaped", b"x", 0)], "backslash"),
        ([("link", b"../../outside", stat.S_IFLNK | 0o777)], "symbolic link"),
        ([("pipe", b"", stat.S_IFIFO | 0o644)], "FIFO"),
        ([("f", b"1", 0), ("f", b"2", 0)], "twice"),
    ],
)
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_it_refuses_hostile_zip_entries(tmp_path, world, members, match):
    refuse(world, zip_of(tmp_path, *members), "zip", match)


def test_it_refuses_a_zip_with_too_many_entries_before_writing(tmp_path, world):
    archive = zip_of(tmp_path, *[(f"f{i}", b"x", 0) for i in range(5)])

    refuse(world, archive, "zip", "more than 4 entries", max_entries=4)
    assert not dest_in(world).exists() or not any(dest_in(world).iterdir())


def test_it_stops_a_zip_bomb_at_the_byte_limit(tmp_path, world):
    archive = zip_of(tmp_path, ("bomb", b"\0" * (4 * 1024 * 1024), 0))

    refuse(world, archive, "zip", "more than 100000 bytes", max_bytes=100_000)
    assert (dest_in(world) / "bomb").stat().st_size <= 100_000


def test_it_refuses_a_zip_whose_declared_size_is_smaller_than_its_data(tmp_path, world):
    archive = zip_of(tmp_path, ("liar", b"A" * 500_000, 0))
    raw = bytearray(archive.read_bytes())
    local, central = raw.find(b"PK\x03\x04"), raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, local + 22, 10)
    struct.pack_into("<I", raw, central + 24, 10)
    archive.write_bytes(bytes(raw))

    refuse(world, archive, "zip", "damaged")
    assert (dest_in(world) / "liar").stat().st_size <= 10


@pytest.mark.parametrize("name", ["run\nprepare.sh", "setup\u202ehs.txt", "a\u2028b"])
def test_it_refuses_names_with_control_or_invisible_characters(tmp_path, name):
    info = tarfile.TarInfo(name)
    info.size = 1
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(info, io.BytesIO(b"x"))
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(buffer.getvalue())
    dest = tmp_path / "dest"

    with pytest.raises(UnsafeArchive, match="invisible"):
        unpack(archive, "tar.gz", dest, max_entries=10, max_bytes=100)
    assert not dest.exists() or not any(dest.iterdir())
