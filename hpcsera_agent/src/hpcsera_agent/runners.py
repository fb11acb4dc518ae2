"""Running one call: as a local process, through `srun`, or through `sbatch`.

Arguments reach the function as an argv list or as environment variables; no
command line is ever built as a string, so nothing passes through a shell.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hpcsera_agent.config import FUNCTION_NAME, Config

logger = logging.getLogger(__name__)

JOB_NAME_PREFIX = "hpcsera-"
# How long a process may run before the agent tells the server it is running.
# Short calls then cost one report instead of two.
RUNNING_REPORT_AFTER = 0.5


class RunError(Exception):
    """The call cannot be started; the message is its reason."""


@dataclass
class Outcome:
    state: str
    exit_code: int | None
    reason: str = ""
    stdout: str = ""
    stdout_truncated: bool = False
    stderr_tail: str = ""

    def report(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "exit_code": self.exit_code,
            "reason": self.reason[:2000],
            "stdout": self.stdout,
            "stdout_truncated": self.stdout_truncated,
            "stderr_tail": self.stderr_tail,
        }


@dataclass
class Prepared:
    call_id: str
    function: str
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    time_limit: int | None
    # The file argv[0] runs; the consent step hashes it (see consent.py).
    executable: Path | None = None

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "stderr"

    @property
    def job_name(self) -> str:
        return job_name(self.call_id)


def job_name(call_id: str) -> str:
    """The batch job name of a call: how a restarted agent finds its jobs."""
    return JOB_NAME_PREFIX + call_id


def workdir(config: Config, call_id: str) -> Path:
    return config.state_dir / "calls" / call_id


def outputs_of(config: Config, call_id: str) -> Prepared:
    """Enough of a prepared call to read what its batch job wrote."""
    return Prepared(call_id, "", [], {}, workdir(config, call_id), None)


def find_executable(functions_dir: Path, name: str) -> Path | None:
    """`<dir>/<name>` if executable, else `<dir>/<name>/run`; None if neither."""
    if not FUNCTION_NAME.fullmatch(name) or set(name) == {"."}:
        return None
    path = functions_dir / name
    if path.is_dir():
        path = path / "run"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    return None


def prepare(config: Config, call: dict[str, Any]) -> Prepared:
    name = call["function"]
    executable = find_executable(config.functions_dir, name)
    if executable is None:
        raise RunError(
            f"function {name!r} has no executable in the functions folder "
            f"({config.functions_dir})"
        )
    folder = workdir(config, call["id"])
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    env = function_environment()
    env.update(
        {
            "HPCSERA_CALL_ID": call["id"],
            "HPCSERA_JOB_ID": call["job_id"],
            "HPCSERA_FUNCTION": name,
        }
    )
    argv = [str(executable)]
    args = call.get("args") or {}
    if config.arg_mode == "argv":
        argv.extend(f"--{key}={value}" for key, value in sorted(args.items()))
    else:
        env.update({config.env_prefix + key: value for key, value in args.items()})
    if call.get("input") is not None:
        input_path = folder / "input.json"
        fd = os.open(input_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(call["input"])
        env["HPCSERA_INPUT_FILE"] = str(input_path)
    return Prepared(
        call_id=call["id"],
        function=name,
        argv=argv,
        env=env,
        workdir=folder,
        time_limit=call.get("time_limit_seconds"),
        executable=executable,
    )


# The agent's own secrets and settings are not the function's business: a
# function could otherwise hand the agent's token to whoever called it.
PRIVATE_VARIABLES = ("HPCSERA_TOKEN", "HPCSERA_AGENT_CONFIG")


def function_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in PRIVATE_VARIABLES}


def read_outputs(prepared: Prepared, config: Config) -> tuple[str, bool, str]:
    """stdout's beginning (its result), and the tail of stderr (its last words)."""
    stdout, truncated = _read_capped(prepared.stdout_path, config.max_output_bytes)
    stderr, _ = _read_capped(prepared.stderr_path, config.tail_chars * 4, from_end=True)
    return stdout, truncated, stderr[-config.tail_chars :]


def _read_capped(path: Path, limit: int, from_end: bool = False) -> tuple[str, bool]:
    """At most `limit` bytes of the file's text, from its start or its end."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit and from_end:
                handle.seek(size - limit)
            data = handle.read(limit)
    except FileNotFoundError:
        return "", False
    return data.decode("utf-8", errors="replace"), size > limit


# Local processes by call id, so that a cancellation can stop them.
RUNNING: dict[str, subprocess.Popen] = {}


def terminate(call_id: str) -> bool:
    """Stop the local process group of a call; False when none is running."""
    process = RUNNING.get(call_id)
    if process is None:
        return False
    _kill_group(process)
    return True


def _popen(
    argv: list[str], prepared: Prepared, on_start: Callable[[int], None] | None
) -> subprocess.Popen:
    with (
        open(prepared.stdout_path, "wb") as out,
        open(prepared.stderr_path, "wb") as err,
    ):
        process = subprocess.Popen(
            argv,
            cwd=prepared.workdir,
            env=prepared.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, so a limit kills all of it
        )
    if on_start is not None:
        on_start(process.pid)
    return process


def kill_orphan(pid: int, call_id: str) -> bool:
    """Kill the process group a killed agent left running for `call_id`.

    The pid is trusted only when the process still carries the call's id in
    its environment, so a recycled pid of something else is left alone.
    """
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read().split(b"\0")
    except OSError:
        return False
    if f"HPCSERA_CALL_ID={call_id}".encode() not in environ:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _wait(
    process: subprocess.Popen,
    limit: int | None,
    on_running: Callable[[], None],
    outputs: tuple[Path, ...] = (),
    max_file_bytes: int | None = None,
) -> int | None:
    """The exit status, or None when the wall-clock limit ended the process.

    Every few seconds the output files are measured: a process that writes
    more than `max_file_bytes` to one is stopped (exit 153, as SIGXFSZ would
    give), so a runaway `yes` cannot fill the disk.
    """
    try:
        return process.wait(timeout=min(RUNNING_REPORT_AFTER, limit or math.inf))
    except subprocess.TimeoutExpired:
        pass
    on_running()
    deadline = (
        None if limit is None else time.monotonic() + limit - RUNNING_REPORT_AFTER
    )
    while True:
        step = OUTPUT_CHECK_SECONDS
        if deadline is not None:
            step = min(step, max(deadline - time.monotonic(), 0))
        try:
            return process.wait(timeout=step)
        except subprocess.TimeoutExpired:
            pass
        if max_file_bytes and _too_large(outputs, max_file_bytes):
            _kill_group(process)
            return OUTPUT_LIMIT_STATUS
        if deadline is not None and time.monotonic() >= deadline:
            _kill_group(process)
            return None


OUTPUT_CHECK_SECONDS = 2.0


def output_file_limit(config: Config) -> int:
    """How much a function may print before it is stopped (1 GiB by default).

    TODO: batch jobs write their output through the scheduler and are not
    measured; a site should rely on its quotas there.
    """
    return max(config.max_output_bytes * 1024, 64 * 1024 * 1024)


OUTPUT_LIMIT_STATUS = 128 + signal.SIGXFSZ


def _too_large(paths: tuple[Path, ...], limit: int) -> bool:
    for path in paths:
        try:
            if path.stat().st_size > limit:
                return True
        except OSError:
            continue
    return False


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def _outcome(
    status: int | None, prepared: Prepared, config: Config, limit_reason: str
) -> Outcome:
    stdout, truncated, stderr = read_outputs(prepared, config)
    if status is None:
        return Outcome("failed", None, limit_reason, stdout, truncated, stderr)
    if status == OUTPUT_LIMIT_STATUS:
        reason = (
            f"stopped: it wrote more than {output_file_limit(config)} bytes to "
            "stdout or stderr"
        )
        return Outcome("failed", status, reason, stdout, truncated, stderr)
    if status == 0:
        return Outcome("succeeded", 0, "", stdout, truncated, stderr)
    if status < 0:
        reason = f"killed by signal {-status}"
        return Outcome("failed", 128 - status, reason, stdout, truncated, stderr)
    return Outcome(
        "failed", status, f"exited with code {status}", stdout, truncated, stderr
    )


def run_local(
    prepared: Prepared,
    config: Config,
    on_running: Callable[[], None],
    on_start: Callable[[int], None] | None = None,
) -> Outcome:
    try:
        process = _popen(prepared.argv, prepared, on_start)
    except OSError as exc:
        return Outcome("failed", None, f"could not start the function: {exc.strerror}")
    RUNNING[prepared.call_id] = process
    try:
        status = _wait(
            process,
            prepared.time_limit,
            on_running,
            (prepared.stdout_path, prepared.stderr_path),
            output_file_limit(config),
        )
    finally:
        RUNNING.pop(prepared.call_id, None)
    reason = f"stopped at its wall-clock limit of {prepared.time_limit} s"
    return _outcome(status, prepared, config, reason)


def slurm_options(prepared: Prepared, config: Config) -> list[str]:
    options = [f"--job-name={prepared.job_name}"]
    if prepared.time_limit:
        options.append(f"--time={math.ceil(prepared.time_limit / 60)}")
    if config.slurm.partition:
        options.append(f"--partition={config.slurm.partition}")
    return options + list(config.slurm.extra_args)


def run_srun(
    prepared: Prepared,
    config: Config,
    on_running: Callable[[], None],
    on_start: Callable[[int], None] | None = None,
) -> Outcome:
    argv = [config.slurm.srun, *slurm_options(prepared, config), *prepared.argv]
    try:
        process = _popen(argv, prepared, on_start)
    except OSError as exc:
        return Outcome("failed", None, f"could not start srun: {exc.strerror}")
    status = _wait(
        process,
        None,
        on_running,
        (prepared.stdout_path, prepared.stderr_path),
        output_file_limit(config),
    )
    outcome = _outcome(status, prepared, config, "")
    if outcome.state == "failed" and "DUE TO TIME LIMIT" in outcome.stderr_tail:
        outcome.reason = "the batch system stopped the step at its time limit (TIMEOUT)"
    return outcome
