"""A chain of batch calls handed to the real Slurm at once, linked by afterok."""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]


def chain(api, first: str) -> dict:
    doc = {
        "calls": [
            {"name": "a", "function": first, "args": {"seconds": "3"}},
            {"name": "b", "function": "slurm_hello", "after": ["a"]},
            {"name": "c", "function": "slurm_hello", "after": ["b"]},
        ]
    }
    answer = api.post("/api/v1/jobs", json=doc)
    assert answer.status_code == 201, answer.text
    return answer.json()


def job_ended(api, job: dict) -> dict[str, dict]:
    calls = {}
    for call in job["calls"]:
        status = api.wait_terminal(call["status_url"], timeout=120)
        calls[call["name"]] = status
    return calls


def submitted_and_ended(call_id: str) -> tuple[str, str]:
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", f"--name=hpcsera-{call_id}", "-S", "now-1days"]
        + ["-o", "Submit,End"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    submit, end = done.stdout.strip().splitlines()[-1].split("|")
    return submit, end


def test_a_chain_is_submitted_at_once_and_every_step_succeeds(api, agent, slurm):
    job = chain(api, "slurm_sleeper")
    calls = job_ended(api, job)

    assert {name: c["state"] for name, c in calls.items()} == dict.fromkeys(
        "abc", "succeeded"
    )
    a_ended = submitted_and_ended(calls["a"]["id"])[1]
    # Slurm timestamps are ISO 8601 in one zone, so they compare as text.
    assert submitted_and_ended(calls["b"]["id"])[0] <= a_ended
    assert submitted_and_ended(calls["c"]["id"])[0] <= a_ended
    assert calls["c"]["output"]["slurm_job"] == calls["c"]["batch_job_id"]


def test_a_failing_first_step_cancels_the_rest_here_and_in_slurm(api, agent, slurm):
    job = chain(api, "slurm_fail_later")
    calls = job_ended(api, job)

    assert calls["a"]["state"] == "failed"
    for name in ("b", "c"):
        assert calls[name]["state"] == "cancelled", calls[name]
        assert calls[name]["reason"].startswith("dependency")
    # Cancelled calls stay open until the agent confirms their Slurm jobs ended.
    for name in ("b", "c"):
        status = api.wait_terminal(calls[name]["status_url"])
        status = _wait_finished(api, status)
        assert slurm_state(status["batch_job_id"]).startswith("CANCELLED")


def slurm_state(job_id: str) -> str:
    """A job that never became eligible (its dependency failed) is listed by
    its id only: time windows do not cover it."""
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def _wait_finished(api, status: dict) -> dict:
    deadline = time.monotonic() + 60
    while not status["timings"]["finished_at"] and time.monotonic() < deadline:
        time.sleep(0.2)
        status = api.get(status["status_url"]).json()
    assert status["timings"]["finished_at"], status
    return status
