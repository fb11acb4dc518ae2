"""What the batch systems (slurm.py, pbs.py) have in common.

Each one offers the same four functions, so the service does not care which
it talks to:

- `submit(prepared, config, keep_fds) -> job_id`
- `query(jobs: {job_id: job_name}, config) -> {job_id: BatchState}`: one
  command for all tracked jobs; a job missing from the answer is not visible
  (yet, or any more). Raises RunError when nothing could be learnt.
- `find(job_name, config) -> job_id | None`: the newest job of that name.
- `cancel(job_id, config)`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from hpcsera_agent.runners import RunError

COMMAND_TIMEOUT = 60

ACTIVE = "active"
SUCCEEDED = "succeeded"
FAILED = "failed"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BatchState:
    """A job's state in the batch system's words, and what it means here."""

    state: str
    kind: str  # ACTIVE, SUCCEEDED, FAILED or UNKNOWN
    exit_code: int | None = None
    detail: str = ""

    @property
    def terminal(self) -> bool:
        return self.kind in (SUCCEEDED, FAILED)

    @property
    def succeeded(self) -> bool:
        return self.kind == SUCCEEDED

    def reason(self) -> str:
        if self.kind == UNKNOWN:
            return f"the batch system reports the unknown state {self.state}"
        return "" if self.succeeded else self.detail


def run(argv: Sequence[str], keep_fds: Sequence[int] = (), **kwargs) -> str:
    """stdout of a batch command; RunError with its last stderr line otherwise."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            pass_fds=tuple(keep_fds),
            **kwargs,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunError(f"{argv[0]} could not be run: {exc}")
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RunError(f"{argv[0]} failed: {message}")
    return done.stdout


def signal_exit(code: int, signal: int) -> int:
    """One number for an exit: the code, or 128 + signal like a shell."""
    return 128 + signal if signal else code
