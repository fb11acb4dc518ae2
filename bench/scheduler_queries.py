#!/usr/bin/env python3
"""Scheduler queries per agent poll cycle with 200 tracked batch jobs, on the
real local Slurm cluster. Target: <= 2 per cycle.

The agent's sacct and squeue are wrappers that log each run and then run the
real command. 200 async calls of a sleeping batch function are submitted; once
all are tracked, the runs are counted over a window of poll cycles. The jobs
are cancelled at the end.

Usage: python bench/scheduler_queries.py [--jobs 200] [--window 20]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import harness

ROLES = "POST_Job,GET_JobStatus,GET_Job,UPDATE_JobStatus"
SLEEPER = "#!/bin/sh\nsleep 600\n"
POLL_SECONDS = 1.0


def wrapper(folder: Path, command: str, log: Path) -> Path:
    real = shutil.which(command)
    if real is None:
        raise SystemExit(f"{command} not found: start scripts/slurm-local-start.sh")
    path = folder / command
    path.write_text(f'#!/bin/sh\necho {command} >> "{log}"\nexec "{real}" "$@"\n')
    path.chmod(0o755)
    return path


def count(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "queries.log"
        sacct = wrapper(tmp, "sacct", log)
        squeue = wrapper(tmp, "squeue", log)
        functions = tmp / "functions"
        harness.install_function(functions, "sleeper", SLEEPER)
        server = harness.start_server(tmp)
        agent = None
        try:
            token = server.token("alice", ROLES)
            config = harness.write_agent_config(
                tmp,
                server,
                token,
                functions,
                extra=(
                    f'max_parallel = 16\n[functions.sleeper]\nrunner = "slurm"\n'
                    f"[slurm]\npoll_seconds = {POLL_SECONDS}\n"
                    f'sacct = "{sacct}"\nsqueue = "{squeue}"\n'
                ),
            )
            agent = harness.start_agent(config)
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
            urls = [
                session.post(
                    f"{server.url}/alice/async-function/sleeper", timeout=30
                ).json()["status_url"]
                for _ in range(args.jobs)
            ]
            while not all(
                session.get(server.url + u, timeout=30).json()["batch_job_id"]
                for u in urls[-5:]
            ):
                time.sleep(1)
            time.sleep(2 * POLL_SECONDS)  # every job tracked for a while
            before = count(log)
            time.sleep(args.window)
            runs = count(log) - before
        finally:
            if agent:
                agent.stop()
            subprocess.run(["scancel", "--name", "hpcsera-*"], check=False)
            subprocess.run(
                [
                    "bash",
                    "-c",
                    "squeue -h -o '%i %j' | awk '$2 ~ /^hpcsera-/"
                    " {print $1}' | xargs -r scancel",
                ],
                check=False,
            )
            server.stop()
    cycles = args.window / POLL_SECONDS
    print(f"tracked batch jobs: {args.jobs}; poll cycles in the window: {cycles:.0f}")
    print(f"scheduler queries: {runs} = {runs / cycles:.2f} per cycle")


if __name__ == "__main__":
    main()
