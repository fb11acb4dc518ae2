#!/usr/bin/env python3
"""Round-trip figures for HPCSerA on this machine, all in one run.

1. The floor: starting the trivial function directly, as the agent does.
2. Sync FaaS round trip of the same function through server and agent: p50/p99,
   and the distance from the floor.
3. Async throughput: 2,000 calls submitted by 4 client threads, one agent,
   timed from the first submission until every call is finished.

The server runs as in production (gunicorn); the database is PostgreSQL when
DATABASE_URL names one, else SQLite. Usage: python bench/roundtrip.py [--sync N]
[--async N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import harness

TRIVIAL = "#!/bin/sh\necho '{\"ok\": true}'\n"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def floor_ms(executable: Path, runs: int, workdir: Path) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with open(workdir / "out", "wb") as out, open(workdir / "err", "wb") as err:
            subprocess.Popen(
                [str(executable)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                start_new_session=True,
            ).wait()
        times.append((time.perf_counter() - started) * 1000)
    return times


def sync_ms(session: requests.Session, url: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = session.post(url, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise SystemExit(f"sync call failed: {answer.status_code} {answer.text}")
    return times


def async_throughput(
    server: harness.Server, token: str, count: int
) -> tuple[float, float]:
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Bearer {token}"
        return local.session

    def submit(_: int) -> str:
        answer = session().post(
            f"{server.url}/alice/async-function/trivial", timeout=60
        )
        return answer.json()["status_url"]

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        urls = list(pool.map(submit, range(count)))
    submitted = time.perf_counter() - started
    pending = list(urls)
    while pending:
        state = session().get(server.url + pending[-1], timeout=60).json()
        if state["terminal"]:
            pending = [
                u
                for u in pending
                if not session().get(server.url + u, timeout=60).json()["terminal"]
            ]
        else:
            time.sleep(0.05)
    elapsed = time.perf_counter() - started
    return count / elapsed, count / submitted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sync", type=int, default=300)
    parser.add_argument("--async", dest="async_count", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        functions = tmp / "functions"
        executable = harness.install_function(functions, "trivial", TRIVIAL)
        server = harness.start_server(tmp)
        agent = None
        try:
            token = server.token(
                "alice", "POST_Job,GET_JobStatus,GET_Job,UPDATE_JobStatus"
            )
            config = harness.write_agent_config(
                tmp, server, token, functions, extra="max_parallel = 8"
            )
            agent = harness.start_agent(config)

            floor = floor_ms(executable, args.sync, tmp)
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
            url = f"{server.url}/alice/function/trivial"
            sync_ms(session, url, 20)  # warm-up: connections, caches
            sync = sync_ms(session, url, args.sync)
            rate, submit_rate = async_throughput(server, token, args.async_count)
        finally:
            if agent:
                agent.stop()
            server.stop()

    database = (
        "PostgreSQL" if server.env["DATABASE_URL"].startswith("postgres") else "SQLite"
    )
    f50, s50, s99 = (
        statistics.median(floor),
        statistics.median(sync),
        percentile(sync, 0.99),
    )
    print(
        f"database: {database}; sync runs: {args.sync}; async calls: {args.async_count}"
    )
    f99 = percentile(floor, 0.99)
    print(f"floor (direct exec)   p50 {f50:7.2f} ms  p99 {f99:7.2f} ms")
    print(f"sync round trip       p50 {s50:7.2f} ms  p99 {s99:7.2f} ms")
    print(
        f"sync over floor       p50 +{s50 - f50:6.2f} ms  ratio p50 {s50 / f50:5.2f}x  "
        f"p99 {s99 / f99:5.2f}x"
    )
    print(f"async end to end      {rate:7.1f} calls/s", end=" ")
    print(f"(submission alone {submit_rate:.1f}/s)")


if __name__ == "__main__":
    main()
