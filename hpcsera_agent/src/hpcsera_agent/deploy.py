"""Installing one approved deployment into the functions folder.

Layout inside `functions_dir` (hidden entries are never offered as functions):

    .hpcsera/staging/<deployment>/           while unpacking and preparing
    .hpcsera/versions/<function>/<deployment>/  once prepared
    <function> -> .hpcsera/versions/<function>/<deployment>   (a symlink)

The link is swapped with `os.replace`, so a call starting at any moment finds
either the old version or the new one, never a half-installed folder. Every
failure happens before the swap: the previous version keeps serving.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hpcsera_agent import runners
from hpcsera_agent.config import FUNCTION_NAME, Config
from hpcsera_agent.unpack import UnsafeArchive, safe_parts, unpack

logger = logging.getLogger(__name__)

HIDDEN = ".hpcsera"
DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
FORMATS = ("tar.gz", "zip", "script")
READ_CHUNK = 64 * 1024


class NotApproved(Exception):
    """Raised by an `approve` callback to refuse; the message is the reason."""


class _Failed(Exception):
    def __init__(self, reason: str, log_tail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


@dataclass(frozen=True)
class Result:
    state: str  # "deployed" | "failed"
    reason: str = ""
    log_tail: str = ""

    def report(self) -> dict[str, str]:
        return {"state": self.state, "reason": self.reason, "log_tail": self.log_tail}


@dataclass(frozen=True)
class _Paths:
    functions_dir: Path
    function: str
    deployment: str

    @property
    def staging(self) -> Path:
        return self.functions_dir / HIDDEN / "staging" / self.deployment

    @property
    def versions(self) -> Path:
        return self.functions_dir / HIDDEN / "versions" / self.function

    @property
    def version(self) -> Path:
        return self.versions / self.deployment

    @property
    def link(self) -> Path:
        return self.functions_dir / self.function

    @property
    def link_target(self) -> str:
        # Relative, so the folder can move (or be mounted elsewhere) whole.
        return f"{HIDDEN}/versions/{self.function}/{self.deployment}"


Approve = Callable[[Path, dict[str, Any]], None]


def install(
    config: Config,
    offer: dict[str, Any],
    archive: Path,
    approve: Approve | None = None,
) -> Result:
    """Unpack, prepare and switch to one deployment; never raises for its content.

    `approve(preparation, arguments)` is asked before the preparation runs and
    raises NotApproved to refuse. Any other exception it raises propagates
    (after the staging folder is removed), so the caller may offer it again.
    """
    try:
        paths = _paths(config, offer)
    except _Failed as exc:
        return Result("failed", exc.reason)
    if _current(paths) == paths.deployment and paths.version.is_dir():
        return Result("deployed", "already installed")
    try:
        _guard_hand_made(paths)
        _check_digest(archive, offer["sha256"])
        _fresh(paths.staging)
        log_tail = _build(config, offer, archive, paths, approve)
        _activate(paths)
    except _Failed as exc:
        logger.warning("%s: deployment failed: %s", paths.deployment, exc.reason)
        return Result("failed", exc.reason, exc.log_tail)
    except OSError as exc:
        logger.error("%s: deployment failed: %s", paths.deployment, exc)
        return Result("failed", f"installing failed: {exc.strerror or exc}")
    finally:
        shutil.rmtree(paths.staging, ignore_errors=True)
    logger.info("%s: function %s deployed", paths.deployment, paths.function)
    return Result("deployed", "", log_tail)


def _paths(config: Config, offer: dict[str, Any]) -> _Paths:
    function, deployment = str(offer["function"]), str(offer["id"])
    if not FUNCTION_NAME.fullmatch(function) or function.startswith("."):
        raise _Failed(f"function name {function!r} cannot be installed")
    if not DEPLOYMENT_ID.fullmatch(deployment):
        raise _Failed(f"deployment id {deployment!r} is not usable as a folder name")
    if offer.get("format") not in FORMATS:
        raise _Failed(
            f"format {offer.get('format')!r} is not one of tar.gz, zip, script"
        )
    return _Paths(config.functions_dir, function, deployment)


def _current(paths: _Paths) -> str | None:
    """The deployment the function's link points to; None if it is not ours."""
    try:
        target = os.readlink(paths.link)
    except OSError:  # missing, or not a link
        return None
    head, _, deployment = target.rpartition("/")
    if head != f"{HIDDEN}/versions/{paths.function}":
        return None
    return deployment if DEPLOYMENT_ID.fullmatch(deployment) else None


def _guard_hand_made(paths: _Paths) -> None:
    if os.path.lexists(paths.link) and _current(paths) is None:
        raise _Failed(
            f"{paths.link} was not installed by a deployment; it is left alone "
            "(remove or rename it to allow deployments of this function)"
        )


def _check_digest(archive: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(archive, "rb") as handle:
        for chunk in iter(lambda: handle.read(READ_CHUNK), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if not hmac.compare_digest(actual, str(expected).lower()):
        raise _Failed(
            f"the archive's SHA-256 {actual} is not the approved {expected}; "
            "nothing was unpacked"
        )


def _fresh(folder: Path) -> None:
    """An empty folder, whatever an interrupted earlier attempt left there."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)


def _build(
    config: Config,
    offer: dict[str, Any],
    archive: Path,
    paths: _Paths,
    approve: Approve | None,
) -> str:
    """Fill the staging folder and run the preparation; its output's tail."""
    log_tail = ""
    if offer["format"] == "script":
        _write_script(archive, paths.staging / "run", config.deploy.max_bytes)
    else:
        try:
            unpack(
                archive,
                offer["format"],
                paths.staging,
                max_entries=config.deploy.max_entries,
                max_bytes=config.deploy.max_bytes,
            )
        except UnsafeArchive as exc:
            raise _Failed(f"the archive was refused: {exc}")
        # An archive without a preparation step is installed as it is.
        if offer.get("prepare"):
            executable = _preparation(paths.staging, offer["prepare"])
            if approve is not None:
                _ask(approve, executable, offer)
            log_tail = _prepare(config, executable, paths)
    if not _is_executable_file(paths.staging / "run"):
        raise _Failed(
            "the deployment has no executable file named run at its top level",
            log_tail,
        )
    return log_tail


def _write_script(archive: Path, target: Path, max_bytes: int) -> None:
    if archive.stat().st_size > max_bytes:
        raise _Failed(f"the script is larger than {max_bytes} bytes")
    shutil.copyfile(archive, target)
    os.chmod(target, 0o755)  # noqa: S103 - like any installed program: owner writes


def _preparation(staging: Path, prepare: str) -> Path:
    """The preparation executable: a regular file inside staging, no link."""
    try:
        parts = safe_parts(prepare)
    except UnsafeArchive:
        raise _Failed(f"the preparation path {prepare!r} is not inside the archive")
    path = staging
    for part in parts:
        path = path / part
        if os.path.islink(path):
            raise _Failed(f"the preparation path {prepare!r} passes through a link")
    if not _is_executable_file(path):
        raise _Failed(
            f"the preparation {prepare!r} is not an executable file in the archive"
        )
    return path


def _is_executable_file(path: Path) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and os.access(path, os.X_OK)


def _ask(approve: Approve, executable: Path, offer: dict[str, Any]) -> None:
    arguments = {"archive_sha256": offer["sha256"], "prepare": offer["prepare"]}
    try:
        approve(executable, arguments)
    except NotApproved as exc:
        raise _Failed(f"the preparation was not approved: {exc}")


def _prepare(config: Config, executable: Path, paths: _Paths) -> str:
    """Run the preparation in the staging folder; the tail of what it printed."""
    env = runners.function_environment()
    env.update(
        {"HPCSERA_FUNCTION": paths.function, "HPCSERA_DEPLOYMENT": paths.deployment}
    )
    timeout = config.deploy.prepare_timeout_seconds
    try:
        process = subprocess.Popen(
            [str(executable)],
            cwd=paths.staging,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so a timeout stops all of it
        )
    except OSError as exc:
        raise _Failed(f"the preparation could not be started: {exc.strerror}")
    try:
        status, output = _collect(process, time.monotonic() + timeout, config)
    finally:
        # Whatever it left running in its group must not outlive the step.
        _kill_group(process)
    tail = output.decode("utf-8", errors="replace")[-config.tail_chars :]
    if status is None:
        raise _Failed(f"preparation did not finish within {timeout:g} s", tail)
    if status < 0:
        raise _Failed(f"preparation was killed by signal {-status}", tail)
    if status != 0:
        raise _Failed(f"preparation exited with code {status}", tail)
    return tail


def _collect(
    process: subprocess.Popen, deadline: float, config: Config
) -> tuple[int | None, bytes]:
    """Exit status (None past the deadline) and the last bytes it printed.

    Only a bounded tail is kept, so a preparation printing without end costs
    neither memory nor disk.
    """
    assert process.stdout is not None
    keep = config.tail_chars * 4  # a UTF-8 character is at most 4 bytes
    tail = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, tail
            if selector.select(timeout=min(remaining, 0.5)):
                chunk = os.read(process.stdout.fileno(), READ_CHUNK)
                if chunk:
                    tail = (tail + chunk)[-keep:]
                    continue
                selector.unregister(process.stdout)
                return _wait(process, deadline), tail
            if process.poll() is not None:
                # It ended; something it started still holds the output open.
                return process.returncode, tail


def _wait(process: subprocess.Popen, deadline: float) -> int | None:
    try:
        return process.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return None


def _kill_group(process: subprocess.Popen) -> None:
    # Accepted trade-off: when the preparation was already reaped, its group id
    # could in principle have been taken by a new group; with no member left in
    # the group this finds nothing (ESRCH) in practice.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _activate(paths: _Paths) -> None:
    """Move the prepared folder into place and swap the function's link to it."""
    _guard_hand_made(paths)  # again: the owner may have acted meanwhile
    previous = _current(paths)
    paths.versions.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.rmtree(paths.version, ignore_errors=True)  # an interrupted attempt's
    os.rename(paths.staging, paths.version)
    temporary = paths.functions_dir / f".{paths.function}.{secrets.token_hex(8)}"
    try:
        os.symlink(paths.link_target, temporary)
        os.replace(temporary, paths.link)
    except OSError:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        shutil.rmtree(paths.version, ignore_errors=True)
        raise
    _prune(paths, keep={paths.deployment, previous})


def _prune(paths: _Paths, keep: set[str | None]) -> None:
    """Remove versions older than the previous one (calls may still run that)."""
    for entry in paths.versions.iterdir():
        if entry.name not in keep:
            logger.info("%s: removing old version %s", paths.deployment, entry.name)
            shutil.rmtree(entry, ignore_errors=True)
