"""Cancelling jobs whose calls run: the agent stops the local process or
cancels the batch job, and the call records how it ended."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import Api
from tests.e2e.test_slurm_calls import sacct

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def owner(server) -> Api:
    token = server.token("alice", "POST_Job,GET_JobStatus,DELETE_Job")
    return Api(server.url, token)


def _running(api: Api, function: str, batch: bool) -> dict:
    doc = {"calls": [{"function": function, "args": {"seconds": "120"}}]}
    job = api.post("/api/v1/jobs", json=doc)
    assert job.status_code == 201, job.text
    call_url = job.json()["calls"][0]["status_url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        call = api.get(call_url).json()
        if call["state"] == "running" and (call["batch_job_id"] or not batch):
            return call
        time.sleep(0.2)
    pytest.fail(f"the call did not start: {call}")


def _confirmed(api: Api, call: dict) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = api.get(call["status_url"]).json()
        if status["timings"]["finished_at"]:
            return status
        time.sleep(0.2)
    pytest.fail(f"the agent never confirmed the cancellation: {status}")


def test_a_running_local_call_is_terminated(owner, agent):
    call = _running(owner, "sleeper", batch=False)

    assert owner.session.delete(owner.url + call["job_url"]).status_code == 200
    status = _confirmed(owner, call)

    assert status["state"] == "cancelled"
    assert status["reason"].startswith("cancelled by the user; killed by signal")


@pytest.mark.slurm
def test_a_running_batch_job_is_cancelled_in_slurm(owner, agent, slurm):
    call = _running(owner, "slurm_sleeper", batch=True)

    assert owner.session.delete(owner.url + call["job_url"]).status_code == 200
    status = _confirmed(owner, call)

    assert status["state"] == "cancelled"
    assert "CANCELLED" in status["reason"]
    assert sacct(call["id"])[1].startswith("CANCELLED")  # "CANCELLED by <uid>"
