#!/usr/bin/env python3
"""Agent-side figures of HPCSerA on this machine, in one run.

1. Idle pickup latency: an idle agent is long-polling; a call is submitted;
   the time from the call's creation to its lease (both stamped by the server).
   Target: p50 <= 20 ms.
2. Server CPU with 100 idle long-polling agents: 100 registered agents each
   hold a claim request open (re-sent as soon as it returns empty); the CPU
   time of the server's processes over a window, as a share of one core.
   Target: <= 5 % of a core.

The server runs as in production (gunicorn, gthread); the database is
PostgreSQL when DATABASE_URL names one, else SQLite. Usage:
python bench/agents.py [--calls N] [--agents N] [--window S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import harness

TRIVIAL = "#!/bin/sh\necho '{\"ok\": true}'\n"
ROLES = "POST_Job,GET_JobStatus,GET_Job,UPDATE_JobStatus"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


def pickup_ms(server: harness.Server, token: str, calls: int) -> list[float]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    found = []
    for _ in range(calls):
        time.sleep(0.3)  # the agent is back in its long-poll, idle
        answer = session.post(f"{server.url}/alice/async-function/trivial", timeout=30)
        status_url = server.url + answer.json()["status_url"]
        while not (status := session.get(status_url, timeout=30).json())["terminal"]:
            time.sleep(0.02)
        timings = status["timings"]
        delta = _stamp(timings["leased_at"]) - _stamp(timings["created_at"])
        found.append(delta.total_seconds() * 1000)
    return found


def _cpu_seconds(root_pid: int) -> float:
    """User + system CPU of a process and its children (gunicorn workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if root_pid in (pid, ppid):
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def idle_agents_cpu(
    server: harness.Server, token: str, agents: int, window: float
) -> tuple[float, Counter[int]]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    ids = []
    for index in range(agents):
        answer = session.post(
            server.url + "/api/agent/v1/agents",
            json={"site": f"idle-{index}", "capabilities": ["local"], "functions": []},
            timeout=30,
        )
        ids.append(answer.json()["agent_id"])
    stop = threading.Event()
    polls: Counter[int] = Counter()

    def long_poll(agent_id: str) -> None:
        own = requests.Session()
        own.headers["Authorization"] = f"Bearer {token}"
        url = f"{server.url}/api/agent/v1/agents/{agent_id}/claim"
        while not stop.is_set():
            answer = own.post(url, json={"max": 4, "wait": 25}, timeout=60)
            polls[answer.status_code] += 1

    threads = [threading.Thread(target=long_poll, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    time.sleep(3)  # every agent is inside its first long-poll
    before, started = _cpu_seconds(server.process.pid), time.monotonic()
    time.sleep(window)
    used = _cpu_seconds(server.process.pid) - before
    share = used / (time.monotonic() - started)
    stop.set()
    return share, polls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        functions = tmp / "functions"
        harness.install_function(functions, "trivial", TRIVIAL)
        server = harness.start_server(
            tmp, HPCSERA_THREADS=str(args.agents + 32), HPCSERA_CLAIM_WAIT_SECONDS="25"
        )
        agent = None
        try:
            token = server.token("alice", ROLES)
            config = harness.write_agent_config(tmp, server, token, functions)
            agent = harness.start_agent(config)
            pickup = pickup_ms(server, token, args.calls)
            agent.stop()
            agent = None
            share, polls = idle_agents_cpu(server, token, args.agents, args.window)
        finally:
            if agent:
                agent.stop()
            # The long-polls still open are released by the server's stop.
            server.stop()

    database = "PostgreSQL" if "postgres" in server.env["DATABASE_URL"] else "SQLite"
    print(f"database: {database}; pickups: {args.calls}; idle agents: {args.agents}")
    p50, p99 = statistics.median(pickup), percentile(pickup, 0.99)
    print(
        f"idle pickup latency   p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
        "(target p50 <= 20)"
    )
    print(
        f"server CPU, {args.agents} idle long-polling agents: {share * 100:5.2f} % "
        f"of a core over {args.window:.0f} s (target <= 5 %); "
        f"answers by status: {dict(polls)}"
    )


if __name__ == "__main__":
    main()
