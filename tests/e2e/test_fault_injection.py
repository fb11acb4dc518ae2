"""Accepted work reaches a true terminal state, once, whatever happens to the
agent or the server.

The agent is killed with SIGKILL at random moments and restarted at once,
while it runs local processes and submits and follows Slurm batch jobs. Sizes
and the seed are set by environment variables so a failure can be replayed:
FAULT_CALLS (300), FAULT_KILLS (30), FAULT_SEED (random, printed).
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import requests

from tests import harness
from tests.e2e.conftest import AGENT_ROLES, CLIENT_ROLES, Api

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

CALLS = int(os.environ.get("FAULT_CALLS", "300"))
KILLS = int(os.environ.get("FAULT_KILLS", "30"))

# Each local run appends its call id to a log, so a second run shows.
LOCAL = """#!/bin/sh
echo "$HPCSERA_CALL_ID" >> {runs}
sleep 0.$(( $(od -An -N1 -tu1 /dev/urandom) % 10 ))
echo '{{"ok": true}}'
"""
BATCH = "#!/bin/sh\necho '{\"batch\": true}'\n"
FUNCTIONS = ("fi_again", "fi_once", "fi_batch")


def config_extra() -> str:
    return (
        "max_parallel = 8\nbatch_grace_seconds = 120\n"
        "[slurm]\npoll_seconds = 0.5\n"
        "[functions.fi_again]\nidempotent = true\n"
        "[functions.fi_once]\nidempotent = false\n"
        '[functions.fi_batch]\nrunner = "slurm"\n'
    )


@pytest.fixture
def cluster(tmp_path, slurm):
    server = harness.start_server(
        tmp_path,
        HPCSERA_LEASE_SECONDS="120",
        HPCSERA_LEASE_SWEEP_SECONDS="1",
        HPCSERA_CLAIM_WAIT_SECONDS="2",
    )
    functions = tmp_path / "functions"
    runs = tmp_path / "runs.log"
    for name in ("fi_again", "fi_once"):
        harness.install_function(functions, name, LOCAL.format(runs=runs))
    harness.install_function(functions, "fi_batch", BATCH)
    config = harness.write_agent_config(
        tmp_path,
        server,
        server.token("alice", AGENT_ROLES),
        functions,
        name="faulty",
        extra=config_extra(),
    )
    api = Api(server.url, server.token("alice", CLIENT_ROLES))
    agents: list[harness.AgentProcess] = []
    yield server, api, config, runs, agents
    for agent in agents:
        if agent.process.poll() is None:
            agent.stop()
    server.stop()


def submit(api: Api, function: str) -> str:
    answer = api.post(f"/alice/async-function/{function}")
    assert answer.status_code == 202, answer.text
    return answer.json()["call_id"]


def wait_all_terminal(api: Api, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for call_id in [i for i in ids if i not in done]:
            status = api.get(f"/api/v1/calls/{call_id}").json()
            if status["terminal"]:
                done[call_id] = status
        if len(done) == len(ids):
            break
        time.sleep(1)
    return done


def slurm_jobs_named(names: list[str], since: datetime) -> Counter:
    """How many jobs of each name Slurm knows: its accounting and controller."""
    found: dict[str, set[str]] = {}
    start = since.strftime("%Y-%m-%dT%H:%M:%S")
    for chunk in range(0, len(names), 50):
        part = ",".join(names[chunk : chunk + 50])
        commands = [
            [
                "sacct",
                "-X",
                "-n",
                "-P",
                "-S",
                start,
                "--name",
                part,
                "-o",
                "JobIDRaw,JobName",
            ],
            ["squeue", "-h", "-t", "all", f"--name={part}", "-o", "%i|%j"],
        ]
        for argv in commands:
            out = subprocess.run(argv, capture_output=True, text=True, check=True)
            for line in out.stdout.split():
                job_id, name = line.split("|")
                found.setdefault(name, set()).add(job_id)
    return Counter({name: len(ids) for name, ids in found.items()})


def test_sigkilled_agent_restarted_30_times_loses_and_duplicates_nothing(cluster):
    server, api, config, runs, agents = cluster
    seed = int(os.environ.get("FAULT_SEED", random.randrange(1 << 30)))
    print(f"FAULT_SEED={seed} FAULT_CALLS={CALLS} FAULT_KILLS={KILLS}")
    rng = random.Random(seed)
    started = datetime.now()
    clock = time.monotonic()
    agents.append(harness.start_agent(config))
    kinds = [FUNCTIONS[i % 3] for i in range(CALLS)]
    ids: list[str] = []
    per_round = -(-CALLS // max(KILLS, 1))

    for _ in range(KILLS):
        # New work in every life of the agent, so kills land on work in flight.
        ids += [submit(api, kind) for kind in kinds[len(ids) : len(ids) + per_round]]
        time.sleep(rng.uniform(0.05, 1.5))  # a random moment, not an assertion
        agents[-1].kill()
        agents.append(harness.start_agent(config))
    ids += [submit(api, kind) for kind in kinds[len(ids) :]]
    kind_of = dict(zip(ids, kinds))

    done = wait_all_terminal(api, ids, timeout=300)
    elapsed = time.monotonic() - clock
    print(f"{CALLS} calls, {KILLS} kills: all terminal after {elapsed:.1f} s")

    assert len(done) == len(ids), f"{len(ids) - len(done)} calls never ended"
    states = Counter((kind_of[i], s["state"]) for i, s in done.items())
    print(sorted(states.items()))
    # Nothing was left to a lease running out: every end was reported.
    assert all(s["state"] != "lost" for s in done.values()), states
    for call_id, status in done.items():
        if kind_of[call_id] == "fi_once" and status["state"] == "failed":
            assert "not declared idempotent" in status["reason"], status
        else:
            assert status["state"] == "succeeded", status
            assert status["output"], status
    batch_names = [f"hpcsera-{i}" for i in ids if kind_of[i] == "fi_batch"]
    per_name = slurm_jobs_named(batch_names, started)
    assert set(per_name) == set(batch_names)
    assert max(per_name.values()) == 1, per_name.most_common(3)
    local_runs = Counter(runs.read_text().split())
    once = [i for i in ids if kind_of[i] == "fi_once"]
    assert max(local_runs[i] for i in once) <= 1, "a non-idempotent call ran twice"
    journal = Path(str(config).removesuffix(".toml") + "-state") / "journal"
    deadline = time.monotonic() + 30
    while list(journal.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.5)  # the last acknowledgements are being recorded
    assert not list(journal.glob("*.json"))


def test_a_server_restart_under_load_loses_no_accepted_call(cluster):
    server, api, config, runs, agents = cluster
    agents.append(harness.start_agent(config))
    accepted: list[str] = []
    refused = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal refused
        while not stop.is_set():
            try:
                answer = api.post("/alice/async-function/fi_again", timeout=5)
            except requests.RequestException:
                refused += 1
                time.sleep(0.05)
                continue
            if answer.status_code == 202:
                accepted.append(answer.json()["call_id"])
            else:
                refused += 1

    clients = [threading.Thread(target=load) for _ in range(3)]
    for client in clients:
        client.start()
    while len(accepted) < 40:
        time.sleep(0.05)
    server.restart()
    while len(accepted) < 120:
        time.sleep(0.05)
    stop.set()
    for client in clients:
        client.join()

    done = wait_all_terminal(api, accepted, timeout=180)
    print(f"{len(accepted)} accepted, {refused} refused during the restart")
    assert len(done) == len(accepted)
    assert all(s["state"] == "succeeded" for s in done.values())


def test_sigterm_lets_the_running_call_finish_and_the_agent_exit_cleanly(cluster):
    server, api, config, runs, agents = cluster
    harness.install_function(
        config.parent / "functions", "fi_slow", "#!/bin/sh\nsleep 3\necho '{}'\n"
    )
    agents.append(harness.start_agent(config))
    deadline = time.monotonic() + 20
    while api.post("/alice/async-function/fi_slow").status_code == 404:
        assert time.monotonic() < deadline, "the agent never offered fi_slow"
        time.sleep(0.2)
    call_id = submit(api, "fi_slow")
    while api.get(f"/api/v1/calls/{call_id}").json()["state"] != "running":
        assert time.monotonic() < deadline + 20
        time.sleep(0.1)

    agents[-1].process.terminate()

    assert agents[-1].process.wait(timeout=60) == 0
    status = api.get(f"/api/v1/calls/{call_id}").json()
    assert status["state"] == "succeeded", status
