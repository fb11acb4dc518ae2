"""Calls that run through the real local Slurm cluster: srun for sync calls,
sbatch for async ones, followed with sacct until they end."""

from __future__ import annotations

import subprocess

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]


def sacct(job_id: str) -> tuple[str, str, str]:
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobName,State,ExitCode"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    # After a cluster reset job ids repeat, and the accounting may not list
    # the newest job yet: take the row of ours, by its name.
    rows = [line.split("|") for line in done.stdout.strip().splitlines()]
    ours = [row for row in rows if row[0].startswith("hpcsera-")] or rows
    name, state, exit_code = ours[-1]
    return name, state, exit_code


def test_a_sync_call_runs_through_srun(api, agent, slurm):
    answer = api.post("/alice/function/slurm_hello", params={"name": "Grace"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["greeting"] == "Hello, Grace"
    assert body["slurm_job"], "the function should run inside a Slurm job"


def test_an_async_call_runs_through_sbatch_and_succeeds(api, agent, slurm):
    answer = api.post("/alice/async-function/slurm_hello", params={"name": "Ada"})
    assert answer.status_code == 202
    status = api.wait_terminal(answer.json()["status_url"], timeout=60)

    assert status["state"] == "succeeded", status
    assert status["output"]["greeting"] == "Hello, Ada"
    job_id = status["batch_job_id"]
    assert job_id and status["output"]["slurm_job"] == job_id
    name, state, exit_code = sacct(job_id)
    assert name == f"hpcsera-{status['id']}"
    assert (state, exit_code) == ("COMPLETED", "0:0")


def test_a_batch_function_exiting_3_ends_failed_with_exit_code_3(api, agent, slurm):
    answer = api.post("/alice/async-function/slurm_fail3")
    status = api.wait_terminal(answer.json()["status_url"], timeout=60)

    assert status["state"] == "failed"
    assert status["exit_code"] == 3
    assert "exited with code 3" in status["reason"]
    assert "about to fail" in status["stderr_tail"]
    assert sacct(status["batch_job_id"])[1:] == ("FAILED", "3:0")


def test_a_sync_srun_call_exiting_3_is_502_with_exit_code_3(api, agent, slurm):
    answer = api.post("/alice/function/slurm_fail3")
    assert answer.status_code == 502
    assert answer.json()["exit_code"] == 3


def test_a_batch_job_over_its_time_limit_ends_failed_saying_so(api, agent, slurm):
    # Slurm's smallest limit is one minute and it checks limits every 30 s, so
    # this takes 60 to 100 seconds.
    answer = api.post(
        "/alice/async-function/slurm_sleeper",
        params={"seconds": "300"},
        headers={"X-Hpcsera-Time-Limit": "60"},
    )
    status = api.wait_terminal(answer.json()["status_url"], timeout=180)

    assert status["state"] == "failed"
    assert "time limit" in status["reason"] and "TIMEOUT" in status["reason"]
    assert sacct(status["batch_job_id"])[1] == "TIMEOUT"
