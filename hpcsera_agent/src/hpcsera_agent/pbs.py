"""PBS Pro / OpenPBS: submit with `qsub`, follow with `qstat -x`, find with
`qselect`, cancel with `qdel`.

Written against the documented formats of PBS Pro 19+ and OpenPBS 20+
(`qstat -f -F json`, job ids `<number>.<server>`); no PBS server runs where
this project is developed, so the tests use outputs written in those formats
(tests/fixtures/pbs), not recordings of a live server.
TODO: replace the fixtures with recordings from a real PBS site.

PBS has no `srun`: sync calls with runner "pbs" are submitted as batch jobs too.
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
from collections.abc import Sequence

from hpcsera_agent import batch
from hpcsera_agent.batch import BatchState
from hpcsera_agent.config import Config
from hpcsera_agent.runners import Prepared, RunError

logger = logging.getLogger(__name__)

JOB_ID = re.compile(r"\s*(\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.-]+)?)\s*$")
# Q queued, H held, W waiting, T transit, R running, E exiting, S/U suspended,
# B array begun. F finished and X (sub)job expired end a job; M moved it to
# another server, which this agent cannot follow.
ACTIVE = frozenset("QHWTRESUB")
FINISHED = frozenset("FX")


def submit(prepared: Prepared, config: Config, keep_fds: Sequence[int] = ()) -> str:
    argv = [
        config.pbs.qsub,
        "-V",
        "-N",
        prepared.job_name,
        "-o",
        str(prepared.stdout_path),
        "-e",
        str(prepared.stderr_path),
    ]
    if prepared.time_limit:
        argv += ["-l", f"walltime={_walltime(prepared.time_limit)}"]
    if config.pbs.queue:
        argv += ["-q", config.pbs.queue]
    argv += [*config.pbs.extra_args, "--", *prepared.argv]
    output = batch.run(argv, keep_fds, env=prepared.env, cwd=prepared.workdir)
    job_id = parse_qsub(output)
    if job_id is None:
        raise RunError("qsub printed no job id")
    return job_id


def _walltime(seconds: int) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def parse_qsub(output: str) -> str | None:
    """The job id (`1234.server`), the last line that is one: sites print
    notices before it."""
    for line in reversed(output.strip().splitlines()):
        match = JOB_ID.match(line)
        if match:
            return match.group(1)
    return None


def query(jobs: dict[str, str], config: Config) -> dict[str, BatchState]:
    """States of `jobs` ({id: name}) with one `qstat -x -f -F json`.

    qstat exits non-zero when one id is unknown (purged from the history) but
    still prints the others, so its output is read whatever the exit code.
    Some PBS versions print invalid JSON (unescaped values); then the same
    query runs again in the text format.
    """
    if not jobs:
        return {}
    ids = sorted(jobs)
    output = _qstat(config, ["-F", "json", *ids])
    try:
        found = parse_qstat_json(output)
    except ValueError:
        logger.error("qstat printed invalid JSON; asking for text instead")
        found = parse_qstat_text(_qstat(config, ids))
    return {
        job_id: state
        for job_id, (name, state) in found.items()
        if jobs.get(job_id) == name
    }


def _qstat(config: Config, args: list[str]) -> str:
    argv = [config.pbs.qstat, "-x", "-f", *args]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=batch.COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunError(f"qstat could not be run: {exc}")
    if done.returncode != 0 and not done.stdout.strip():
        message = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RunError(f"qstat failed: {message}")
    return done.stdout


def find(name: str, config: Config) -> str | None:
    output = batch.run([config.pbs.qselect, "-x", "-N", name])
    ids = [m.group(1) for m in map(JOB_ID.match, output.splitlines()) if m]
    return max(ids, key=_number) if ids else None


def cancel(job_id: str, config: Config) -> None:
    batch.run([config.pbs.qdel, job_id])


def _number(job_id: str) -> int:
    return int(re.match(r"\d+", job_id).group(0))


def parse_qstat_json(output: str) -> dict[str, tuple[str, BatchState]]:
    data = json.loads(output)
    jobs = data.get("Jobs") or {}
    return {
        job_id: (str(a.get("Job_Name", "")), job_state(a)) for job_id, a in jobs.items()
    }


def parse_qstat_text(output: str) -> dict[str, tuple[str, BatchState]]:
    """`qstat -f` blocks: `Job Id: <id>` then `    key = value` lines."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key = ""
    for line in output.splitlines():
        if line.startswith("Job Id:"):
            current = blocks.setdefault(line.split(":", 1)[1].strip(), {})
        elif current is not None and " = " in line and line.startswith("    "):
            key, _, value = line.strip().partition(" = ")
            current[key] = value
        elif current is not None and key and line.startswith("\t"):
            current[key] += line.strip()  # a long value wrapped onto this line
    return {
        job_id: (a.get("Job_Name", ""), job_state(_nest(a)))
        for job_id, a in blocks.items()
    }


def _nest(flat: dict[str, str]) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        head, dot, tail = key.partition(".")
        if dot:
            nested.setdefault(head, {})[tail] = value
        else:
            nested[key] = value
    return nested


def job_state(attributes: dict) -> BatchState:
    state = str(attributes.get("job_state", "")).strip()
    if state in ACTIVE:
        return BatchState(state, batch.ACTIVE)
    if state not in FINISHED:
        return BatchState(state or "EMPTY", batch.UNKNOWN)
    raw = attributes.get("Exit_status")
    if raw is None or str(raw).strip() == "":
        return BatchState(state, batch.FAILED, None, "the job ended before it ran")
    return _finished(state, int(raw), attributes)


def _finished(state: str, status: int, attributes: dict) -> BatchState:
    if status == 0:
        return BatchState(state, batch.SUCCEEDED, 0)
    if _over_walltime(attributes):
        detail = "the batch system stopped the job at its walltime limit"
        return BatchState(state, batch.FAILED, None, detail)
    if status < 0:
        detail = f"PBS could not run the job (Exit_status {status})"
        return BatchState(state, batch.FAILED, None, detail)
    if status >= 256:
        # PBS reports a job killed by signal N as 256 + N.
        detail = f"the job was killed by signal {status - 256}"
        return BatchState(state, batch.FAILED, 128 + status - 256, detail)
    return BatchState(state, batch.FAILED, status, f"exited with code {status}")


def _over_walltime(attributes: dict) -> bool:
    used = (attributes.get("resources_used") or {}).get("walltime")
    limit = (attributes.get("Resource_List") or {}).get("walltime")
    if not used or not limit:
        return False
    return _seconds(used) >= _seconds(limit) > 0


def _seconds(hms: str) -> int:
    total = 0
    for part in str(hms).split(":"):
        total = total * 60 + int(part or 0)
    return total
