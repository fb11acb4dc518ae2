"""Slurm: submit with `sbatch`, follow with one `sacct` per cycle, find by name.

The accounting (`sacct`, through slurmdbd) can lag behind the controller, and
job ids repeat after a cluster is reset. So every row is matched by job id
*and* job name (`hpcsera-<call id>`), and jobs `sacct` does not show are asked
of the controller (`squeue`) in the same cycle.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from hpcsera_agent import batch
from hpcsera_agent.batch import BatchState
from hpcsera_agent.config import Config
from hpcsera_agent.runners import Prepared, RunError, slurm_options

logger = logging.getLogger(__name__)

# sbatch needs a script; this one only replaces itself with its arguments.
# "$@" is expanded as a list, never re-parsed, so no argument is shell syntax.
LAUNCHER = '#!/bin/sh\nexec "$@"\n'
SEARCH_BACK = "now-30days"

# Full names (sacct, squeue %T) and the short forms squeue prints with %t.
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
        "SPECIAL_EXIT",
        "PD",
        "R",
        "RQ",
        "RS",
        "S",
        "CF",
        "CG",
        "SI",
        "SO",
        "RH",
        "RF",
        "RD",
        "ST",
        "SE",
    }
)
FAILURES = {
    "FAILED": "the job failed",
    "TIMEOUT": "the batch system stopped the job at its time limit (TIMEOUT)",
    "CANCELLED": "the job was cancelled in the batch system (CANCELLED)",
    "OUT_OF_MEMORY": "the job ran out of memory (OUT_OF_MEMORY)",
    "NODE_FAIL": "a node of the job failed (NODE_FAIL)",
    "PREEMPTED": "the job was preempted (PREEMPTED)",
    "BOOT_FAIL": "a node of the job failed to boot (BOOT_FAIL)",
    "DEADLINE": "the job missed its deadline (DEADLINE)",
    "REVOKED": "the job was revoked in a federation (REVOKED)",
}
SHORT = {
    "CD": "COMPLETED",
    "F": "FAILED",
    "TO": "TIMEOUT",
    "CA": "CANCELLED",
    "OOM": "OUT_OF_MEMORY",
    "NF": "NODE_FAIL",
    "PR": "PREEMPTED",
    "BF": "BOOT_FAIL",
    "DL": "DEADLINE",
    "RV": "REVOKED",
}


def batch_state(raw_state: str, raw_exit: str = "") -> BatchState:
    """Map one state column (`CANCELLED by 1000`, `COMPLETED+`, `TO`) and its
    `code:signal` exit column; a state not listed here is UNKNOWN, never success.
    """
    words = raw_state.split()
    state = (words[0] if words else "").rstrip("+").upper()
    state = SHORT.get(state, state)
    code, sig = parse_exit_code(raw_exit)
    exit_code = None if code is None else batch.signal_exit(code, sig)
    if state in ACTIVE:
        return BatchState(state, batch.ACTIVE, exit_code)
    if state == "COMPLETED" and code == 0 and not sig:
        return BatchState(state, batch.SUCCEEDED, 0)
    if state in ("COMPLETED", "FAILED"):
        detail = f"exited with code {code}"
        if sig:
            detail += f" (signal {sig})"
        return BatchState(state, batch.FAILED, exit_code, detail)
    if state in FAILURES:
        detail = FAILURES[state]
        if state == "CANCELLED" and len(words) == 3 and words[1] == "by":
            who = f"by uid {words[2]}"
            detail = f"the job was cancelled in the batch system {who} (CANCELLED)"
        return BatchState(state, batch.FAILED, exit_code, detail)
    return BatchState(state or "EMPTY", batch.UNKNOWN, exit_code)


def launcher_path(config: Config) -> Path:
    path = config.state_dir / "launcher.sh"
    if not path.exists() or path.read_text() != LAUNCHER:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(LAUNCHER)
        path.chmod(0o700)
    return path


def submit(
    prepared: Prepared,
    config: Config,
    keep_fds: Sequence[int] = (),
    after: Sequence[str] = (),
) -> str:
    """Submit the call; with `after` (batch job ids), to start once they all
    completed successfully. Should one fail, the job waits until cancelled."""
    dependency = [f"--dependency=afterok:{':'.join(after)}"] if after else []
    argv = [
        config.slurm.sbatch,
        "--parsable",
        *dependency,
        f"--output={prepared.stdout_path}",
        f"--error={prepared.stderr_path}",
        f"--chdir={prepared.workdir}",
        *slurm_options(prepared, config),
        str(launcher_path(config)),
        *prepared.argv,
    ]
    output = batch.run(argv, keep_fds, env=prepared.env)
    job_id = parse_sbatch(output)
    if job_id is None:
        raise RunError("sbatch printed no job id")
    return job_id


def parse_sbatch(output: str) -> str | None:
    """The job id from `sbatch` output: `id`, `id;cluster` (--parsable) or
    `Submitted batch job id [on cluster c]`.

    Sites print notices before the id line, so the last line that holds an id
    in one of these forms is taken.
    """
    for line in reversed(output.strip().splitlines()):
        match = re.match(r"\s*(\d+)(?:;\S+)?\s*$", line) or re.match(
            r"\s*Submitted batch job (\d+)(?: on cluster \S+)?\s*$", line
        )
        if match:
            return match.group(1)
    return None


def parse_exit_code(raw: str) -> tuple:
    """`code:signal` as two numbers; (None, 0) when it is not that."""
    code, _, sig = raw.strip().partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, 0


def _env() -> dict[str, str]:
    return dict(os.environ, SLURM_TIME_FORMAT="standard")


def query(jobs: dict[str, str], config: Config) -> dict[str, BatchState]:
    """States of `jobs` ({id: name}): one sacct for all, squeue for the rest."""
    if not jobs:
        return {}
    try:
        states = parse_sacct(_sacct(["-j", ",".join(sorted(jobs))], config), jobs)
    except RunError as exc:
        # Accounting down says nothing about the jobs: ask the controller.
        logger.error("sacct failed (%s); asking squeue instead", exc)
        states = {}
    missing = {i: n for i, n in jobs.items() if i not in states}
    if missing:
        try:
            live = parse_squeue(_squeue(["-j", ",".join(sorted(missing))], config))
        except RunError as exc:
            if not states:
                raise
            logger.info("squeue for jobs sacct lacks failed: %s", exc)
            live = {}
        states.update(_only_active(live, missing))
    return states


def _only_active(
    live: dict[str, tuple[str, BatchState]], jobs: dict[str, str]
) -> dict[str, BatchState]:
    # squeue has no exit codes: it may keep a job alive, only sacct ends it.
    return {
        job_id: state
        for job_id, (name, state) in live.items()
        if jobs.get(job_id) == name and state.kind == batch.ACTIVE
    }


def find(name: str, config: Config) -> str | None:
    """The newest job called `name`, known to the controller or accounting."""
    found = [int(i) for i, (n, _) in parse_squeue(_squeue([], config, name)).items()]
    try:
        rows = _sacct(["--name", name, "-S", SEARCH_BACK], config)
        found += [int(i) for i in parse_sacct(rows, None, name)]
    except RunError as exc:
        logger.error("sacct failed looking for %s: %s", name, exc)
    return str(max(found)) if found else None


def cancel(job_id: str, config: Config) -> None:
    batch.run([config.slurm.scancel, job_id])


def _sacct(selection: list[str], config: Config) -> str:
    argv = [config.slurm.sacct, "-X", "-n", "-P", *selection]
    argv += ["-o", "JobIDRaw,JobName,State,ExitCode"]
    return batch.run(argv, env=_env())


def _squeue(selection: list[str], config: Config, name: str = "") -> str:
    argv = [config.slurm.squeue, "-h", "-t", "all", *selection, "-o", "%i|%j|%T"]
    if name:
        argv.append(f"--name={name}")
    return batch.run(argv, env=_env())


def parse_sacct(
    output: str, names: dict[str, str] | None = None, name: str = ""
) -> dict[str, BatchState]:
    """Rows of `JobIDRaw|JobName|State|ExitCode` (or without JobName).

    With `names` ({id: name}) or `name`, a row counts only when its name
    matches: after a cluster reset an old job with the same id is listed too.
    Later rows win, as sacct lists the newest last.
    """
    states = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            parts = [parts[0], "", parts[1], parts[2]]
        if len(parts) < 4 or not parts[0]:
            continue
        job_id, job_name, raw_state, raw_exit = parts[:4]
        if names is not None and names.get(job_id) != job_name:
            continue
        if name and job_name != name:
            continue
        states[job_id] = batch_state(raw_state, raw_exit)
    return states


def parse_squeue(output: str) -> dict[str, tuple[str, BatchState]]:
    """Rows of `%i|%j|%T`: {id: (name, state)}."""
    jobs = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0]:
            jobs[parts[0]] = (parts[1], batch_state(parts[2]))
    return jobs
