"""Stopping calls the server says were cancelled while this agent held them.

A local process group is terminated; its run then reports how it ended. A
batch job is cancelled with `scancel` (or `qdel`); the next scheduler query
reports the
scheduler's final state (CANCELLED). The server records either report on the
cancelled call.
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any

from hpcsera_agent import runners

logger = logging.getLogger(__name__)

# TODO: the agent learns of cancellations only from claim answers, and it does
# not claim while every slot is busy, so a fully busy agent stops cancelled
# calls only when a slot frees up; a heartbeat that carries the list would not.

COMMAND_TIMEOUT = 60


def stop_cancelled(agent: Any, requests: list[dict[str, Any]]) -> int:
    """Stop each cancelled call this agent runs; the number stopped."""
    stopped = 0
    for request in requests:
        call_id = str(request.get("id", ""))
        if runners.terminate(call_id):
            logger.info("%s cancelled: local process terminated", call_id)
            stopped += 1
            continue
        entry = agent.journal.get(call_id) or {}
        job_id = entry.get("batch_job_id")
        if job_id and cancel_batch_job(job_id, entry.get("runner"), agent.config):
            logger.info("%s cancelled: batch job %s cancelled", call_id, job_id)
            stopped += 1
    return stopped


def cancel_batch_job(job_id: str, runner: str | None, config: Any) -> bool:
    """scancel or qdel; the next scheduler query reports the final state."""
    command = config.pbs.qdel if runner == "pbs" else config.slurm.scancel
    try:
        done = subprocess.run(
            [command, job_id],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.error("%s could not be cancelled: %s", job_id, exc)
        return False
    if done.returncode != 0:
        logger.error("%s not cancelled: %s", job_id, done.stderr.strip()[-200:])
        return False
    return True
