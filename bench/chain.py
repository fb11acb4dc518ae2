#!/usr/bin/env python3
"""Latency of a chain of trivial batch calls (A -> B -> C) through the real
Slurm, end to end: from the job's submission until its last call ended.

Handoff on: the agent submits the three at once, linked by `afterok`.
Handoff off: the server readies each step when the one before was reported.
Prints the median of each and their ratio. Needs a running Slurm cluster.

Usage: python bench/chain.py [--rounds N] [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import harness

TRIVIAL = "#!/bin/sh\necho '{\"ok\": true}'\n"
ROLES = "POST_Job,GET_JobStatus,GET_Job,UPDATE_JobStatus"


def one_chain(session: requests.Session, url: str, steps: int) -> float:
    calls = [{"name": "s0", "function": "trivial"}]
    calls += [
        {"name": f"s{n}", "function": "trivial", "after": [f"s{n - 1}"]}
        for n in range(1, steps)
    ]
    started = time.perf_counter()
    answer = session.post(f"{url}/api/v1/jobs", json={"calls": calls}, timeout=60)
    if answer.status_code != 201:
        raise SystemExit(f"submission failed: {answer.status_code} {answer.text}")
    job_url = url + answer.json()["url"]
    while True:
        job = session.get(job_url, timeout=60).json()
        if all(call["terminal"] for call in job["calls"]):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if any(call["state"] != "succeeded" for call in job["calls"]):
        raise SystemExit(f"a step did not succeed: {job['calls']}")
    return elapsed


def measure(handoff: bool, rounds: int, steps: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        functions = tmp / "functions"
        harness.install_function(functions, "trivial", TRIVIAL)
        server = harness.start_server(tmp)
        agent = None
        try:
            token = server.token("alice", ROLES)
            extra = (
                'max_parallel = 8\n[functions.trivial]\nrunner = "slurm"\n'
                f"[slurm]\npoll_seconds = 0.5\nchain_handoff = {str(handoff).lower()}\n"
            )
            config = harness.write_agent_config(
                tmp, server, token, functions, extra=extra
            )
            agent = harness.start_agent(config)
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
            one_chain(session, server.url, steps)  # warm up
            return [one_chain(session, server.url, steps) for _ in range(rounds)]
        finally:
            if agent:
                agent.stop()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not harness.slurm_available():
        raise SystemExit(
            "no Slurm cluster; start one with scripts/slurm-local-start.sh"
        )
    on = statistics.median(measure(True, args.rounds, args.steps))
    off = statistics.median(measure(False, args.rounds, args.steps))
    print(f"chain of {args.steps} trivial batch calls, median of {args.rounds}:")
    print(f"handoff on (afterok):         {on:.2f} s")
    print(f"handoff off (server resolves): {off:.2f} s")
    print(f"off / on: {off / on:.2f}x")


if __name__ == "__main__":
    main()
