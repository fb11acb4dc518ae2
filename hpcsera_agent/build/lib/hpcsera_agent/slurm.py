"""Submitting calls with `sbatch` and following them with one `sacct` per cycle."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hpcsera_agent.config import Config
from hpcsera_agent.runners import Prepared, RunError, slurm_options

logger = logging.getLogger(__name__)

# sbatch needs a script; this one only replaces itself with its arguments.
# "$@" is expanded as a list, never re-parsed, so no argument is shell syntax.
LAUNCHER = '#!/bin/sh\nexec "$@"\n'
COMMAND_TIMEOUT = 60

ACTIVE = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "RESIZING",
        "SUSPENDED",
        "CONFIGURING",
        "COMPLETING",
        "SIGNALING",
        "STAGE_OUT",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "STOPPED",
    }
)
FAILURE_REASONS = {
    "FAILED": "the job failed",
    "TIMEOUT": "the batch system stopped the job at its time limit (TIMEOUT)",
    "CANCELLED": "the job was cancelled in the batch system (CANCELLED)",
    "OUT_OF_MEMORY": "the job ran out of memory (OUT_OF_MEMORY)",
    "NODE_FAIL": "a node of the job failed (NODE_FAIL)",
    "PREEMPTED": "the job was preempted (PREEMPTED)",
    "BOOT_FAIL": "a node of the job failed to boot (BOOT_FAIL)",
    "DEADLINE": "the job missed its deadline (DEADLINE)",
}


@dataclass(frozen=True)
class BatchState:
    state: str  # the scheduler's word, e.g. COMPLETED
    exit_code: int | None
    signal: int

    @property
    def terminal(self) -> bool:
        return self.state not in ACTIVE

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0

    def reason(self) -> str:
        if self.succeeded:
            return ""
        if self.state == "FAILED" or self.state == "COMPLETED":
            detail = f"exited with code {self.exit_code}"
            if self.signal:
                detail += f" (signal {self.signal})"
            return detail
        return FAILURE_REASONS.get(
            self.state, f"the batch system reports the unknown state {self.state}"
        )


def launcher_path(config: Config) -> Path:
    path = config.state_dir / "launcher.sh"
    if not path.exists() or path.read_text() != LAUNCHER:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(LAUNCHER)
        path.chmod(0o700)
    return path


def submit(prepared: Prepared, config: Config) -> str:
    argv = [
        config.slurm.sbatch,
        "--parsable",
        f"--output={prepared.stdout_path}",
        f"--error={prepared.stderr_path}",
        f"--chdir={prepared.workdir}",
        *slurm_options(prepared, config),
        str(launcher_path(config)),
        *prepared.argv,
    ]
    try:
        done = subprocess.run(
            argv,
            env=prepared.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunError(f"sbatch could not be run: {exc}")
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RunError(f"sbatch refused the job: {message}")
    job_id = parse_sbatch(done.stdout)
    if job_id is None:
        raise RunError("sbatch printed no job id")
    return job_id


def parse_sbatch(output: str) -> str | None:
    """The job id from `sbatch --parsable` output (`id` or `id;cluster`).

    Sites print notices before the id line, so the last line that starts with
    a number is taken.
    """
    for line in reversed(output.strip().splitlines()):
        match = re.match(r"\s*(\d+)(?:;\S+)?\s*$", line)
        if match:
            return match.group(1)
    return None


def parse_exit_code(raw: str) -> tuple:
    code, _, sig = raw.partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, 0


def query(job_ids: Iterable[str], config: Config) -> dict[str, BatchState]:
    """The states of all `job_ids` in one sacct run; jobs sacct omits are absent."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    argv = [
        config.slurm.sacct,
        "-X",
        "-n",
        "-P",
        "-j",
        ",".join(ids),
        "-o",
        "JobIDRaw,State,ExitCode",
    ]
    env = dict(os.environ, SLURM_TIME_FORMAT="standard")
    done = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RunError(f"sacct failed: {message}")
    return parse_sacct(done.stdout)


def parse_sacct(output: str) -> dict[str, BatchState]:
    states = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        job_id = parts[0]
        state = parts[1].split()[0] if parts[1].split() else "UNKNOWN"
        state = state.rstrip("+")
        code, sig = parse_exit_code(parts[2])
        states[job_id] = BatchState(state=state, exit_code=code, signal=sig)
    return states
