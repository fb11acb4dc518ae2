"""The agent's journal and what a restarted agent does with it.

A fake server (FakeClient) and a fake batch system (tests/fakes/fake_batch.py,
which counts its submissions) let each test play one crash exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hpcsera_agent.client import Refused, ServerUnavailable
from hpcsera_agent.config import parse
from hpcsera_agent.journal import Journal
from hpcsera_agent.service import Agent

FAKE = Path(__file__).parent / "fakes" / "fake_batch.py"
CALL = "0b9c7f40-0000-4000-8000-000000000001"


class FakeClient:
    """The agent API as the agent sees it; `down` makes the server unreachable."""

    def __init__(self, calls=(), released=()):
        self.queue = list(calls)
        self.reports: list[tuple[str, dict]] = []
        self.released = set(released)
        self.down = False

    def register(self, site, capabilities, functions):
        return {"agent_id": "agent-1", "lease_seconds": 30}

    def claim(self, agent_id, max_calls, wait, chain=False):
        taken, self.queue = self.queue[:max_calls], self.queue[max_calls:]
        return taken

    def heartbeat(self, agent_id, call_ids, complete=False):
        if self.down:
            raise ServerUnavailable("down")
        return {"released": sorted(self.released & set(call_ids))}

    def report(self, agent_id, call_id, report):
        if self.down:
            raise ServerUnavailable("down")
        if call_id in self.released:
            raise Refused(404, "not_found", "not leased")
        self.reports.append((call_id, report))
        return {"id": call_id, "state": report["state"]}

    def final(self, call_id: str) -> dict:
        finals = [
            r for c, r in self.reports if c == call_id and r["state"] != "running"
        ]
        assert len(finals) == 1, self.reports
        return finals[0]


@pytest.fixture
def fake_batch(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("sbatch", "sacct", "squeue", "scancel", "qsub", "qstat", "qselect"):
        (folder / name).symlink_to(FAKE)
    db = tmp_path / "batch.json"
    monkeypatch.setenv("FAKE_BATCH_DB", str(db))
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    class Batch:
        def read(self) -> dict:
            return json.loads(db.read_text()) if db.exists() else {"jobs": {}}

        def write(self, data: dict) -> None:
            db.write_text(json.dumps({"calls": [], "fail": [], "next": 100, **data}))

        def submissions(self) -> int:
            calls = self.read().get("calls", [])
            return sum(c[0] in ("sbatch", "qsub") for c in calls)

        def set_job(self, job_id: str, **fields: str) -> None:
            data = self.read()
            data["jobs"][job_id].update(fields)
            db.write_text(json.dumps(data))

    return Batch()


def make_agent(tmp_path: Path, client: FakeClient, **overrides) -> Agent:
    raw = {
        "server": "http://127.0.0.1:9",
        "token": "t",
        "functions_dir": str(tmp_path / "functions"),
        "state_dir": str(tmp_path / "state"),
        "functions": {
            "again": {"idempotent": True},
            "once": {"idempotent": False},
            "batch": {"runner": "slurm"},
            "pbsjob": {"runner": "pbs"},
        },
        "slurm": {"poll_seconds": 0.1},
    }
    raw.update(overrides)
    agent = Agent(parse(raw), client)
    agent.register()
    return agent


def function(tmp_path: Path, name: str, source: str) -> None:
    folder = tmp_path / "functions"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(source)
    (folder / name).chmod(0o755)


def call(function_name: str, mode: str = "async", call_id: str = CALL) -> dict:
    return {"id": call_id, "job_id": "j1", "function": function_name, "mode": mode}


def journal_as_if_killed(tmp_path: Path, phase: str, call_: dict, **fields) -> None:
    runner = {"batch": "slurm", "pbsjob": "pbs"}.get(call_["function"], "local")
    Journal(tmp_path / "state").record(
        call_["id"],
        phase,
        call=call_,
        runner=runner,
        idempotent=call_["function"] == "again",
        **fields,
    )


def settle(agent: Agent) -> None:
    agent._pool.shutdown(wait=True)


def test_the_journal_is_private_and_atomic(tmp_path):
    journal = Journal(tmp_path / "state")
    journal.record(CALL, "claimed", call={"id": CALL})
    journal.record(CALL, "submitted", batch_job_id="7")

    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert journal.folder.stat().st_mode & 0o777 == 0o700
    assert (journal.folder / f"{CALL}.json").stat().st_mode & 0o777 == 0o600
    entry = Journal(tmp_path / "state").get(CALL)
    assert entry["phase"] == "submitted" and entry["call"] == {"id": CALL}
    assert not list(journal.folder.glob("*.tmp"))
    journal.forget(CALL)
    assert list(journal.entries()) == []
    with pytest.raises(ValueError):
        journal.record("../escape", "claimed")


def test_a_claimed_call_is_journaled_before_it_runs_and_forgotten_once_reported(
    tmp_path,
):
    function(tmp_path, "once", "#!/bin/sh\necho done\n")
    client = FakeClient([call("once")])
    agent = make_agent(tmp_path, client)
    seen = []
    agent._start = lambda call_id: seen.append(agent.journal.get(call_id)["phase"])

    agent.claim_step(0)

    assert seen == ["claimed"]
    agent._execute(CALL)
    assert client.final(CALL)["stdout"] == "done\n"
    assert agent.journal.get(CALL) is None


def test_a_report_the_server_never_acknowledged_is_sent_after_a_restart(tmp_path):
    function(tmp_path, "once", "#!/bin/sh\necho result\n")
    first = FakeClient([call("once")])
    first.down = True
    agent = make_agent(tmp_path, first)
    agent.claim_step(0)
    settle(agent)
    assert agent.journal.get(CALL)["phase"] == "reporting"

    second = FakeClient()
    make_agent(tmp_path, second).recover()

    assert second.final(CALL)["stdout"] == "result\n"
    assert list(Journal(tmp_path / "state").entries()) == []


def test_an_interrupted_idempotent_call_runs_again(tmp_path):
    function(tmp_path, "again", "#!/bin/sh\necho again\n")
    journal_as_if_killed(tmp_path, "started", call("again"))
    client = FakeClient()

    agent = make_agent(tmp_path, client)
    agent.recover()
    settle(agent)

    assert client.final(CALL)["state"] == "succeeded"
    assert client.final(CALL)["stdout"] == "again\n"


def test_an_interrupted_call_that_is_not_idempotent_is_reported_failed_not_rerun(
    tmp_path,
):
    marker = tmp_path / "ran"
    function(tmp_path, "once", f"#!/bin/sh\ntouch {marker}\n")
    journal_as_if_killed(tmp_path, "started", call("once"))
    client = FakeClient()

    agent = make_agent(tmp_path, client)
    agent.recover()
    settle(agent)

    report = client.final(CALL)
    assert report["state"] == "failed" and "not declared idempotent" in report["reason"]
    assert not marker.exists()


def test_the_process_a_killed_agent_left_is_killed_before_the_rerun(tmp_path):
    function(tmp_path, "again", "#!/bin/sh\necho fresh\n")
    orphan = subprocess.Popen(
        ["sleep", "60"],
        env={**os.environ, "HPCSERA_CALL_ID": CALL},
        start_new_session=True,
    )
    journal_as_if_killed(tmp_path, "started", call("again"), pid=orphan.pid)

    agent = make_agent(tmp_path, FakeClient())
    agent.recover()
    settle(agent)

    assert orphan.wait(timeout=10) == -9


def test_a_process_with_a_recycled_pid_is_left_alone(tmp_path):
    function(tmp_path, "once", "#!/bin/sh\n")
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    journal_as_if_killed(tmp_path, "started", call("once"), pid=bystander.pid)
    try:
        agent = make_agent(tmp_path, FakeClient())
        agent.recover()
        settle(agent)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_restart_attaches_to_the_batch_job_instead_of_submitting_again(
    tmp_path, fake_batch
):
    function(tmp_path, "batch", "#!/bin/sh\n")
    # Killed after sbatch created the job and before the journal heard of it.
    fake_batch.write(
        {"jobs": {"55": {"name": f"hpcsera-{CALL}", "state": "RUNNING", "exit": ""}}}
    )
    journal_as_if_killed(tmp_path, "submitting", call("batch"))
    client = FakeClient()

    agent = make_agent(tmp_path, client)
    agent.recover()
    settle(agent)

    assert fake_batch.submissions() == 0
    assert agent.journal.get(CALL)["batch_job_id"] == "55"
    fake_batch.set_job("55", state="COMPLETED", exit="0:0")
    assert agent.poll_batch_step() == 1
    assert client.final(CALL)["state"] == "succeeded"
    assert client.final(CALL)["batch_job_id"] == "55"


def test_a_submission_that_never_reached_the_scheduler_is_made_on_restart(
    tmp_path, fake_batch
):
    function(tmp_path, "batch", "#!/bin/sh\n")
    fake_batch.write({"jobs": {}})
    journal_as_if_killed(tmp_path, "submitting", call("batch"))

    agent = make_agent(tmp_path, FakeClient())
    agent.recover()
    settle(agent)

    assert fake_batch.submissions() == 1
    job = fake_batch.read()["jobs"]["101"]
    assert job["name"] == f"hpcsera-{CALL}"


def test_recovery_waits_for_an_orphaned_submission_before_looking(tmp_path, fake_batch):
    function(tmp_path, "batch", "#!/bin/sh\n")
    fake_batch.write({"jobs": {}})
    journal_as_if_killed(tmp_path, "submitting", call("batch"))
    lock = tmp_path / "state" / "journal" / f"{CALL}.lock"
    # An sbatch the killed agent started: it holds the lock, then creates the job.
    slow_sbatch = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, json, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(1)\n"
            f"db = {str(tmp_path / 'batch.json')!r}\n"
            "data = json.load(open(db))\n"
            f"data['jobs']['77'] = {{'name': 'hpcsera-{CALL}', 'state': 'PENDING',"
            " 'exit': ''}\n"
            "json.dump(data, open(db, 'w'))\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert slow_sbatch.stdout.readline() == "locked\n"

    agent = make_agent(tmp_path, FakeClient())
    agent.recover()
    settle(agent)
    slow_sbatch.wait()

    assert fake_batch.submissions() == 0
    assert agent.journal.get(CALL)["batch_job_id"] == "77"


def test_a_job_not_visible_gets_a_grace_period_then_its_call_is_lost(
    tmp_path, fake_batch
):
    fake_batch.write({"jobs": {}})
    journal_as_if_killed(
        tmp_path,
        "submitted",
        call("batch"),
        batch_job_id="404",
        job_name=f"hpcsera-{CALL}",
    )
    client = FakeClient()
    agent = make_agent(tmp_path, client, batch_grace_seconds=60)

    assert agent.poll_batch_step() == 0, "within the grace period nothing is said"
    assert client.reports == []
    agent._doubt[CALL] -= 61  # the grace period has passed

    assert agent.poll_batch_step() == 1
    report = client.final(CALL)
    assert report["state"] == "lost" and "not known" in report["reason"]


def test_a_failing_sacct_falls_back_to_squeue_and_fails_nothing(tmp_path, fake_batch):
    name = f"hpcsera-{CALL}"
    fake_batch.write(
        {
            "jobs": {"60": {"name": name, "state": "RUNNING", "exit": ""}},
            "fail": ["sacct"],
        }
    )
    journal_as_if_killed(
        tmp_path, "submitted", call("batch"), batch_job_id="60", job_name=name
    )
    client = FakeClient()
    agent = make_agent(tmp_path, client)

    assert agent.poll_batch_step() == 0
    assert client.reports == [] and CALL not in agent._doubt
    assert ["squeue", "-h", "-t", "all", "-j", "60", "-o", "%i|%j|%T"] in [
        c for c in fake_batch.read()["calls"]
    ]


def test_when_every_query_fails_jobs_stay_tracked_without_doubt(tmp_path, fake_batch):
    name = f"hpcsera-{CALL}"
    fake_batch.write(
        {
            "jobs": {"61": {"name": name, "state": "RUNNING", "exit": ""}},
            "fail": ["sacct", "squeue"],
        }
    )
    journal_as_if_killed(
        tmp_path, "submitted", call("batch"), batch_job_id="61", job_name=name
    )
    client = FakeClient()
    agent = make_agent(tmp_path, client)

    assert agent.poll_batch_step() == 0
    assert client.reports == [] and CALL not in agent._doubt
    assert agent.journal.get(CALL)["phase"] == "submitted"


def test_one_scheduler_query_per_cycle_covers_all_tracked_jobs(tmp_path, fake_batch):
    jobs = {}
    for n in range(5):
        call_id = f"0b9c7f40-0000-4000-8000-00000000010{n}"
        jobs[str(200 + n)] = {"name": f"hpcsera-{call_id}", "state": "RUNNING"}
        journal_as_if_killed(
            tmp_path,
            "submitted",
            call("batch", call_id=call_id),
            batch_job_id=str(200 + n),
            job_name=f"hpcsera-{call_id}",
        )
    fake_batch.write({"jobs": {i: {**j, "exit": ""} for i, j in jobs.items()}})
    agent = make_agent(tmp_path, FakeClient())

    agent.poll_batch_step()

    queries = [c for c in fake_batch.read()["calls"] if c[0] in ("sacct", "squeue")]
    assert len(queries) == 1
    assert queries[0][queries[0].index("-j") + 1] == "200,201,202,203,204"


def test_calls_the_server_released_are_abandoned_and_their_jobs_cancelled(
    tmp_path, fake_batch
):
    name = f"hpcsera-{CALL}"
    fake_batch.write({"jobs": {"62": {"name": name, "state": "RUNNING", "exit": ""}}})
    journal_as_if_killed(
        tmp_path, "submitted", call("batch"), batch_job_id="62", job_name=name
    )
    client = FakeClient(released=[CALL])

    agent = make_agent(tmp_path, client)
    agent.recover()

    assert fake_batch.read()["jobs"]["62"]["state"] == "CANCELLED"
    assert agent.journal.get(CALL) is None and client.reports == []


def test_a_second_agent_on_the_same_state_folder_is_refused(tmp_path):
    from hpcsera_agent.service import AlreadyRunning

    make_agent(tmp_path, FakeClient()).take_state_folder()
    with pytest.raises(AlreadyRunning):
        make_agent(tmp_path, FakeClient()).take_state_folder()


def test_the_tracker_wait_ends_when_the_agent_is_told_to_stop(tmp_path):
    agent = make_agent(tmp_path, FakeClient(), slurm={"poll_seconds": 600})
    tracker = threading.Thread(target=agent._track_loop)
    tracker.start()
    while agent._last_heartbeat == 0:  # the first cycle ran; now it waits
        time.sleep(0.01)
    agent.stop.set()
    tracker.join(timeout=30)
    assert not tracker.is_alive()


def test_a_resumed_submission_runs_only_the_file_that_was_approved(
    tmp_path, fake_batch
):
    import hashlib

    function(tmp_path, "batch", "#!/bin/sh\necho approved\n")
    executable = tmp_path / "functions" / "batch"
    approved_sha256 = hashlib.sha256(executable.read_bytes()).hexdigest()
    fake_batch.write({"jobs": {}})
    journal_as_if_killed(
        tmp_path,
        "submitting",
        call("batch"),
        approved_executable=str(executable),
        approved_sha256=approved_sha256,
    )
    # Between the approval and the restart, the file was rewritten.
    executable.write_text("#!/bin/sh\necho never approved\n")
    client = FakeClient()

    agent = make_agent(tmp_path, client)
    agent.recover()
    settle(agent)

    assert fake_batch.submissions() == 0
    assert client.final(CALL)["state"] == "failed"
    assert "approved executable changed" in client.final(CALL)["reason"]


def test_a_resumed_submission_of_an_unchanged_approved_file_goes_ahead(
    tmp_path, fake_batch
):
    import hashlib

    function(tmp_path, "batch", "#!/bin/sh\necho approved\n")
    executable = tmp_path / "functions" / "batch"
    fake_batch.write({"jobs": {}})
    journal_as_if_killed(
        tmp_path,
        "submitting",
        call("batch"),
        approved_executable=str(executable),
        approved_sha256=hashlib.sha256(executable.read_bytes()).hexdigest(),
    )

    agent = make_agent(tmp_path, FakeClient())
    agent.recover()
    settle(agent)

    assert fake_batch.submissions() == 1
