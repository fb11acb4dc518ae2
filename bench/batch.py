#!/usr/bin/env python3
"""Async end to end with batched submission: one job document of N independent
calls (`after: []`) in one request, one agent, timed from the request until
every call has finished. Target: >= 1,000 calls/s.

Usage: python bench/batch.py [--calls N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import harness

TRIVIAL = "#!/bin/sh\necho '{\"ok\": true}'\n"
ROLES = "POST_Job,GET_JobStatus,GET_Job,UPDATE_JobStatus"


def run(server: harness.Server, token: str, count: int) -> tuple[float, float]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    document = {
        "name": "batch",
        "calls": [
            {"name": f"c{n}", "function": "trivial", "after": []} for n in range(count)
        ],
    }
    started = time.perf_counter()
    answer = session.post(f"{server.url}/api/v1/jobs", json=document, timeout=300)
    if answer.status_code != 201:
        raise SystemExit(f"submission failed: {answer.status_code} {answer.text[:300]}")
    submitted = time.perf_counter() - started
    job_url = server.url + answer.json()["url"]
    while True:
        job = session.get(job_url, timeout=300).json()
        if all(call["terminal"] for call in job["calls"]):
            break
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    failed = [c for c in job["calls"] if c["state"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} calls did not succeed")
    return count / elapsed, submitted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        functions = tmp / "functions"
        harness.install_function(functions, "trivial", TRIVIAL)
        server = harness.start_server(tmp, HPCSERA_MAX_JOB_CALLS=str(args.calls))
        agent = None
        try:
            token = server.token("alice", ROLES)
            config = harness.write_agent_config(
                tmp, server, token, functions, extra="max_parallel = 8"
            )
            agent = harness.start_agent(config)
            rate, submitted = run(server, token, args.calls)
        finally:
            if agent:
                agent.stop()
            server.stop()
    database = (
        "PostgreSQL" if server.env["DATABASE_URL"].startswith("postgres") else "SQLite"
    )
    print(f"database: {database}; calls in one job document: {args.calls}")
    print(f"submission of the document: {submitted * 1000:.0f} ms")
    print(f"async end to end, batched submission: {rate:.1f} calls/s")


if __name__ == "__main__":
    main()
