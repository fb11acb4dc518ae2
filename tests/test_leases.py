"""Leases through HTTP: heartbeats renew them; running out requeues or loses.

Time is not slept through: a lease "runs out" by moving its expiry into the
past, as the clock would.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs.leases import leases_expire
from jobs.models import FunctionCall
from tokens import roles

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sweep_every_time(settings):
    settings.HPCSERA = {**settings.HPCSERA, "LEASE_SWEEP_SECONDS": 0}


@pytest.fixture
def alice_client(alice, make_token, client_for):
    return client_for(make_token(alice))


def register(client, site="a", idempotent=False, functions=("hello",)):
    answer = client.post(
        "/api/agent/v1/agents",
        {
            "site": site,
            "capabilities": ["local"],
            "functions": [
                {"name": f, "runner": "local", "idempotent": idempotent}
                for f in functions
            ],
        },
        format="json",
    )
    assert answer.status_code == 200, answer.content
    return answer.json()["agent_id"]


def claim(client, agent_id):
    answer = client.post(
        f"/api/agent/v1/agents/{agent_id}/claim", {"max": 10}, format="json"
    )
    assert answer.status_code == 200, answer.content
    return [c["id"] for c in answer.json()["calls"]]


def heartbeat(client, agent_id, calls):
    return client.post(
        f"/api/agent/v1/agents/{agent_id}/heartbeat", {"calls": calls}, format="json"
    )


def report(client, agent_id, call_id, **body):
    return client.post(
        f"/api/agent/v1/agents/{agent_id}/calls/{call_id}/report", body, format="json"
    )


def run_out(call_id: str, seconds: int = 1) -> None:
    """Let the lease of `call_id` run out, as if its agent fell silent."""
    past = timezone.now() - timedelta(seconds=seconds)
    FunctionCall.objects.filter(id=call_id).update(lease_expires_at=past)


def test_a_lease_of_an_idempotent_function_that_runs_out_is_queued_again(
    alice_client,
):
    dead = register(alice_client, site="dead", idempotent=True)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    assert claim(alice_client, dead) == [call_id]
    report(alice_client, dead, call_id, state="running")

    run_out(call_id)
    alive = register(alice_client, site="alive", idempotent=True)

    assert claim(alice_client, alive) == [call_id]
    call = FunctionCall.objects.get(id=call_id)
    assert call.state == "leased" and call.attempt == 2
    assert "ran out" in call.reason and "dead" in call.reason
    late = report(alice_client, dead, call_id, state="succeeded", exit_code=0)
    assert late.status_code == 404, "the old holder must not finish the call"


def test_a_lease_of_another_function_that_runs_out_ends_lost_with_a_reason(
    alice_client,
):
    agent = register(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    claim(alice_client, agent)

    run_out(call_id)
    status = alice_client.get(f"/api/v1/calls/{call_id}").json()

    assert status["state"] == "lost" and status["terminal"]
    assert "not declared idempotent" in status["reason"]
    assert status["timings"]["finished_at"]
    assert claim(alice_client, agent) == []


def test_a_heartbeat_renews_the_leases_it_names_and_only_those(alice_client):
    agent = register(alice_client)
    named, forgotten = (
        alice_client.post("/alice/async-function/hello").json()["call_id"]
        for _ in range(2)
    )
    claim(alice_client, agent)
    run_out(named)
    run_out(forgotten)

    answer = heartbeat(alice_client, agent, [named])
    assert answer.status_code == 200 and answer.json()["released"] == []
    claim(alice_client, agent)  # the claim path sweeps

    assert FunctionCall.objects.get(id=named).state == "leased"
    assert FunctionCall.objects.get(id=named).lease_expires_at > timezone.now()
    assert FunctionCall.objects.get(id=forgotten).state == "lost"
    answer = heartbeat(alice_client, agent, [named, forgotten])
    assert answer.json()["released"] == [forgotten]


def test_a_sweep_loses_to_a_renewal_that_came_first(alice_client):
    agent = register(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    claim(alice_client, agent)
    sweep_time = timezone.now() + timedelta(seconds=10)
    run_out(call_id)
    heartbeat(alice_client, agent, [call_id])

    # A sweep that decided on a clock older than the renewal changes nothing.
    assert leases_expire(now=sweep_time - timedelta(seconds=5)) == 0
    assert FunctionCall.objects.get(id=call_id).state == "leased"


def test_a_running_report_renews_the_lease(alice_client):
    agent = register(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    claim(alice_client, agent)
    run_out(call_id)

    assert report(alice_client, agent, call_id, state="running").status_code == 200
    assert leases_expire() == 0
    assert FunctionCall.objects.get(id=call_id).state == "running"


def test_the_expire_leases_command_sweeps_without_any_request(alice_client):
    agent = register(alice_client)
    lost_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    claim(alice_client, agent)
    run_out(lost_id)

    call_command("expire_leases", stdout=open("/dev/null", "w"))

    assert FunctionCall.objects.get(id=lost_id).state == "lost"


def test_an_agent_may_report_a_call_lost(alice_client):
    agent = register(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    claim(alice_client, agent)
    answer = report(
        alice_client, agent, call_id, state="lost", reason="batch job vanished"
    )
    assert answer.status_code == 200
    status = alice_client.get(f"/api/v1/calls/{call_id}").json()
    assert status["state"] == "lost" and status["reason"] == "batch job vanished"


def test_heartbeats_are_fenced_by_user_tag_and_role(
    alice_client, alice, bob, make_token, client_for
):
    agent = register(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    claim(alice_client, agent)
    for outsider in (
        client_for(make_token(bob)),
        client_for(make_token(alice, tag="proj-b")),
    ):
        assert heartbeat(outsider, agent, [call_id]).status_code == 404
    pull_only = client_for(make_token(alice, role_list=[roles.GET_JOB]))
    assert heartbeat(pull_only, agent, [call_id]).status_code == 403
    assert heartbeat(alice_client, agent, ["not-a-uuid"]).status_code == 400


def test_a_claim_from_an_older_process_of_the_agent_leases_nothing(alice_client):
    body = {"site": "a", "capabilities": ["local"], "session": "old"}
    body["functions"] = [{"name": "hello", "runner": "local"}]
    agent = alice_client.post("/api/agent/v1/agents", body, format="json").json()
    alice_client.post("/api/agent/v1/agents", {**body, "session": "new"}, format="json")
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    url = f"/api/agent/v1/agents/{agent['agent_id']}/claim"

    stale = alice_client.post(url, {"max": 5, "session": "old"}, format="json")
    assert stale.json()["calls"] == []
    fresh = alice_client.post(url, {"max": 5, "session": "new"}, format="json")
    assert [c["id"] for c in fresh.json()["calls"]] == [call_id]


def test_a_complete_heartbeat_requeues_leased_calls_the_agent_never_received(
    alice_client,
):
    agent = register(alice_client)  # not idempotent: only "never ran" allows this
    received, unreceived, running = (
        alice_client.post("/alice/async-function/hello").json()["call_id"]
        for _ in range(3)
    )
    claim(alice_client, agent)
    report(alice_client, agent, running, state="running")

    answer = alice_client.post(
        f"/api/agent/v1/agents/{agent}/heartbeat",
        {"calls": [received], "complete": True},
        format="json",
    )

    assert answer.status_code == 200
    assert FunctionCall.objects.get(id=received).state == "leased"
    assert FunctionCall.objects.get(id=unreceived).state == "ready"
    assert "never received" in FunctionCall.objects.get(id=unreceived).reason
    # A running call may have done work: only its lease decides.
    assert FunctionCall.objects.get(id=running).state == "running"
    assert claim(alice_client, agent) == [unreceived]
