#!/usr/bin/env python3
"""Submit and claim latency with 1 million finished calls in PostgreSQL, against
1 thousand, in one run. Target: the 1 M figures within 1.5x of the 1 k ones.

Finished calls are written straight into the server's database with one
INSERT ... SELECT generate_series (they belong to the same user and tag as
the measured calls, the worst case for the queue's indexes). Then N async
submissions and N claims are timed through HTTP.

Needs DATABASE_URL to name a PostgreSQL server. Usage:
python bench/scale.py [--rows 1000000] [--samples 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import harness

ROLES = "POST_Job,GET_JobStatus,GET_Job,UPDATE_JobStatus"
FILL = """
INSERT INTO jobs_job (id, created_at, user_id, tag, name)
SELECT md5('job' || n)::uuid, now() - interval '1 day', %(user)s, 'default', 'old'
FROM generate_series(1, %(jobs)s) AS n;
INSERT INTO jobs_functioncall (
  id, tag, function, mode, site, args, state, reason, batch_job_id, exit_code,
  stdout, stdout_truncated, stderr_tail, created_at, leased_at, started_at,
  finished_at, user_id, job_id, attempt, held, name, open_deps, virtual)
SELECT md5('call' || n)::uuid, 'default', 'trivial', 'async', '', '{}'::jsonb,
  'succeeded', '', '', 0, '{"ok": true}', false, '', now() - interval '1 day',
  now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
  %(user)s, md5('job' || (1 + n %% %(jobs)s))::uuid, 1, false, 'c' || n, 0, false
FROM generate_series(1, %(rows)s) AS n;
ANALYZE jobs_functioncall;
"""


def fill(database_url: str, rows: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        user = conn.execute(
            "SELECT id FROM auth_user WHERE username = 'alice'"
        ).fetchone()[0]
        for statement in FILL.strip().split(";\n"):
            if statement.strip():
                conn.execute(
                    statement,
                    {"user": user, "rows": rows, "jobs": max(rows // 10, 1)},
                )


def measure(server: harness.Server, token: str, samples: int) -> tuple[float, float]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    agent_id = session.post(
        f"{server.url}/api/agent/v1/agents",
        json={
            "site": "bench",
            "capabilities": ["local"],
            "functions": [{"name": "trivial", "runner": "local"}],
        },
        timeout=30,
    ).json()["agent_id"]
    submit, claim = [], []
    for _ in range(samples):
        started = time.perf_counter()
        session.post(f"{server.url}/alice/async-function/trivial", timeout=30)
        submit.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        answer = session.post(
            f"{server.url}/api/agent/v1/agents/{agent_id}/claim",
            json={"max": 1, "wait": 0},
            timeout=30,
        )
        claim.append((time.perf_counter() - started) * 1000)
        if len(answer.json()["calls"]) != 1:
            raise SystemExit("the claim found no call")
    return statistics.median(submit), statistics.median(claim)


def one_run(rows: int, samples: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        server = harness.start_server(Path(tmp_name))
        try:
            token = server.token("alice", ROLES)
            fill(server.env["DATABASE_URL"], rows)
            measure(server, token, 20)  # warm-up
            return measure(server, token, samples)
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("bench/scale.py: set DATABASE_URL to a PostgreSQL server")
    small = one_run(1000, args.samples)
    started = time.perf_counter()
    large = one_run(args.rows, args.samples)
    print(
        f"rows: 1,000 vs {args.rows:,} finished calls "
        f"(large run with fill: {time.perf_counter() - started:.0f} s)"
    )
    print(
        f"submit p50: {small[0]:.2f} ms vs {large[0]:.2f} ms "
        f"= {large[0] / small[0]:.2f}x"
    )
    print(
        f"claim  p50: {small[1]:.2f} ms vs {large[1]:.2f} ms "
        f"= {large[1] / small[1]:.2f}x"
    )


if __name__ == "__main__":
    main()
