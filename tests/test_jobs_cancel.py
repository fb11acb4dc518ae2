"""Cancelling jobs and holding, releasing and changing their calls."""

from __future__ import annotations

import pytest

from jobs.models import FunctionCall
from tests.conftest import register_agent
from tests.test_jobs_dag import claim, states, submit

pytestmark = pytest.mark.django_db

CHAIN = {"calls": [{"function": "build"}, {"function": "run"}]}


@pytest.fixture
def alice_client(alice, make_token, client_for):
    return client_for(make_token(alice))


@pytest.fixture
def agent(alice_client) -> str:
    return register_agent(alice_client, functions=("build", "run"))


def claim_answer(client, agent_id) -> dict:
    return client.post(
        f"/api/agent/v1/agents/{agent_id}/claim", {"max": 10}, format="json"
    ).json()


def test_cancelling_a_job_ends_pending_calls_and_tells_the_agent(alice_client, agent):
    job = submit(alice_client, CHAIN).json()
    claim(alice_client, agent)
    build = job["calls"][0]["id"]
    alice_client.post(
        f"/api/agent/v1/agents/{agent}/calls/{build}/report",
        {"state": "running", "batch_job_id": "77"},
        format="json",
    )

    answer = alice_client.delete(f"/api/v1/jobs/{job['id']}")
    assert answer.status_code == 200
    assert states(alice_client, job["id"]) == {"build": "cancelled", "run": "cancelled"}
    stop = claim_answer(alice_client, agent)["cancel"]
    assert stop == [{"id": build, "batch_job_id": "77"}]

    final = alice_client.post(
        f"/api/agent/v1/agents/{agent}/calls/{build}/report",
        {"state": "failed", "reason": "the batch system reports CANCELLED"},
        format="json",
    )
    assert final.status_code == 200 and final.json()["state"] == "cancelled"
    call = alice_client.get(f"/api/v1/calls/{build}").json()
    assert call["reason"] == "cancelled by the user; the batch system reports CANCELLED"
    assert call["timings"]["finished_at"]
    assert claim_answer(alice_client, agent)["cancel"] == []


def test_a_cancelled_job_stays_cancelled_when_cancelled_again(alice_client, agent):
    job = submit(alice_client, CHAIN).json()
    alice_client.delete(f"/api/v1/jobs/{job['id']}")
    assert alice_client.delete(f"/api/v1/jobs/{job['id']}").status_code == 200
    assert claim(alice_client, agent) == []


def test_a_held_call_waits_until_released(alice_client, agent):
    job = submit(alice_client, CHAIN).json()
    build = job["calls"][0]

    held = alice_client.patch(build["status_url"], {"held": True}, format="json")
    assert held.status_code == 200
    assert held.json()["held"] and held.json()["state"] == "pending"
    assert claim(alice_client, agent) == []

    alice_client.patch(build["status_url"], {"held": False}, format="json")
    assert claim(alice_client, agent) == ["build"]


def test_arguments_change_until_an_agent_takes_the_call(alice_client, agent):
    job = submit(alice_client, CHAIN).json()
    run = job["calls"][1]

    answer = alice_client.patch(run["status_url"], {"args": {"n": "4"}}, format="json")
    assert answer.json()["args"] == {"n": "4"}
    claim(alice_client, agent)
    build = job["calls"][0]
    late = alice_client.patch(build["status_url"], {"args": {"n": "5"}}, format="json")
    assert late.status_code == 409 and late.json()["state"] == "leased"


@pytest.mark.parametrize(
    "body", [{}, {"args": {"1x": "y"}}, {"held": "maybe"}, {"args": ["a"]}]
)
def test_bad_changes_are_a_400(alice_client, agent, body):
    call = submit(alice_client, CHAIN).json()["calls"][0]
    answer = alice_client.patch(call["status_url"], body, format="json")
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_input"


def test_other_projects_cannot_cancel_or_change(
    alice, bob, make_token, client_for, alice_client, agent
):
    job = submit(alice_client, CHAIN).json()
    for secret in (make_token(bob), make_token(alice, tag="proj-b")):
        client = client_for(secret)
        assert client.delete(f"/api/v1/jobs/{job['id']}").status_code == 404
        patch = client.patch(
            job["calls"][0]["status_url"], {"held": True}, format="json"
        )
        assert patch.status_code == 404
    assert set(FunctionCall.objects.values_list("state", flat=True)) == {
        "ready",
        "pending",
    }
