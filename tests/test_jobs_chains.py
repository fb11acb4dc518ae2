"""Chains of batch calls leased ahead to one agent (jobs.chains)."""

from __future__ import annotations

import pytest

from jobs.leases import leases_expire
from jobs.models import Function, FunctionCall
from tests.test_jobs_dag import states, submit

pytestmark = pytest.mark.django_db

A_B_C = {
    "calls": [
        {"name": "a", "function": "step"},
        {"name": "b", "function": "step", "after": ["a"]},
        {"name": "c", "function": "step", "after": ["b"]},
    ]
}


@pytest.fixture
def alice_client(alice, make_token, client_for):
    return client_for(make_token(alice))


def register(client, site: str = "site-a", local: tuple = ()) -> str:
    functions = [{"name": "step", "runner": "slurm"}]
    functions += [{"name": name, "runner": "local"} for name in local]
    answer = client.post(
        "/api/agent/v1/agents",
        {"site": site, "capabilities": ["local", "slurm"], "functions": functions},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    return answer.json()["agent_id"]


@pytest.fixture
def agent(alice_client) -> str:
    return register(alice_client)


def claim(client, agent_id, chain=True, max_calls=10) -> dict:
    answer = client.post(
        f"/api/agent/v1/agents/{agent_id}/claim",
        {"max": max_calls, "chain": chain},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    return answer.json()


def report(client, agent_id, call_id, state, **fields) -> dict:
    answer = client.post(
        f"/api/agent/v1/agents/{agent_id}/calls/{call_id}/report",
        {"state": state, **fields},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    return answer.json()


def ids(job: dict) -> dict[str, str]:
    return {c["name"]: c["id"] for c in job["calls"]}


def test_a_chain_is_leased_at_once_each_step_after_the_one_before(alice_client, agent):
    job = submit(alice_client, A_B_C).json()
    call = ids(job)

    leases = claim(alice_client, agent)["calls"]

    assert [(c["id"], c["after"]) for c in leases] == [
        (call["a"], []),
        (call["b"], [call["a"]]),
        (call["c"], [call["b"]]),
    ]
    assert states(alice_client, job["id"]) == {
        "a": "leased",
        "b": "leased",
        "c": "leased",
    }


def test_an_agent_not_asking_for_chains_gets_only_ready_calls(alice_client, agent):
    submit(alice_client, A_B_C)

    leases = claim(alice_client, agent, chain=False)["calls"]

    assert [c["after"] for c in leases] == [[]]


def test_a_local_dependency_keeps_the_dependent_waiting(alice_client):
    agent = register(alice_client, local=("prepare",))
    doc = {
        "calls": [
            {"name": "a", "function": "step"},
            {"name": "p", "function": "prepare", "after": []},
            {"name": "b", "function": "step", "after": ["a", "p"]},
        ]
    }
    job = submit(alice_client, doc).json()

    leased = {c["id"] for c in claim(alice_client, agent)["calls"]}

    assert leased == {ids(job)["a"], ids(job)["p"]}
    assert states(alice_client, job["id"])["b"] == "pending"


def test_a_dependency_held_by_another_agent_keeps_the_dependent_waiting(
    alice_client,
):
    here, there = register(alice_client), register(alice_client, site="site-b")
    doc = {
        "calls": [
            {"name": "a", "function": "step", "site": "site-b"},
            {"name": "b", "function": "step", "after": ["a"], "site": "site-a"},
        ]
    }
    job = submit(alice_client, doc).json()

    assert [c["id"] for c in claim(alice_client, there)["calls"]] == [ids(job)["a"]]
    assert claim(alice_client, here)["calls"] == []
    assert states(alice_client, job["id"])["b"] == "pending"


def test_a_call_for_another_site_is_not_leased_ahead(alice_client, agent):
    doc = {
        "calls": [
            {"name": "a", "function": "step"},
            {"name": "b", "function": "step", "after": ["a"], "site": "site-b"},
        ]
    }
    job = submit(alice_client, doc).json()

    assert [c["id"] for c in claim(alice_client, agent)["calls"]] == [ids(job)["a"]]
    assert states(alice_client, job["id"])["b"] == "pending"


def test_a_dependent_added_after_its_step_was_leased_waits_for_it(
    alice_client,
    agent,
):
    job = submit(alice_client, {"calls": [{"name": "a", "function": "step"}]}).json()
    claim(alice_client, agent)
    report(alice_client, agent, ids(job)["a"], "running", batch_job_id="41")
    added = alice_client.post(
        f"/api/v1/jobs/{job['id']}/calls",
        {"calls": [{"name": "b", "function": "step", "after": ["a"]}]},
        format="json",
    )
    assert added.status_code in (200, 201), added.content

    # Only calls leased by a claim lead to their dependents: b waits for the
    # claim after a's end, or for the next call leased in its chain.
    assert claim(alice_client, agent)["calls"] == []
    assert states(alice_client, job["id"])["b"] == "pending"


def test_success_keeps_the_steps_leased_ahead_and_the_chain_ends(alice_client, agent):
    job = submit(alice_client, A_B_C).json()
    call = ids(job)
    claim(alice_client, agent)

    for name in ("a", "b", "c"):
        report(alice_client, agent, call[name], "running", batch_job_id=name)
    report(alice_client, agent, call["a"], "succeeded", exit_code=0)
    assert states(alice_client, job["id"]) == {
        "a": "succeeded",
        "b": "running",
        "c": "running",
    }
    report(alice_client, agent, call["b"], "succeeded", exit_code=0)
    report(alice_client, agent, call["c"], "succeeded", exit_code=0)

    assert set(states(alice_client, job["id"]).values()) == {"succeeded"}
    assert FunctionCall.objects.get(id=call["c"]).open_deps == 0


def test_a_failed_step_cancels_the_steps_ahead_and_lists_them_to_stop(
    alice_client,
    agent,
):
    job = submit(alice_client, A_B_C).json()
    call = ids(job)
    claim(alice_client, agent)
    report(alice_client, agent, call["a"], "running", batch_job_id="10")
    report(alice_client, agent, call["b"], "running", batch_job_id="11")

    report(alice_client, agent, call["a"], "failed", exit_code=3)

    assert states(alice_client, job["id"]) == {
        "a": "failed",
        "b": "cancelled",
        "c": "cancelled",
    }
    stop = claim(alice_client, agent)["cancel"]
    assert sorted((s["id"], s["batch_job_id"]) for s in stop) == sorted(
        [(call["b"], "11"), (call["c"], None)]
    )
    final = report(
        alice_client, agent, call["b"], "failed", reason="CANCELLED in Slurm"
    )
    assert final["state"] == "cancelled"
    b = alice_client.get(f"/api/v1/calls/{call['b']}").json()
    assert b["reason"] == "dependency 'a' ended failed; CANCELLED in Slurm"
    assert b["timings"]["finished_at"]


def test_an_expired_lease_puts_a_step_leased_ahead_back_to_waiting(
    alice_client,
    agent,
):
    job = submit(alice_client, A_B_C).json()
    claim(alice_client, agent)
    FunctionCall.objects.filter(job_id=job["id"]).update(
        lease_expires_at="2000-01-01T00:00Z"
    )
    Function.objects.filter(agent_id=agent).update(idempotent=True)

    leases_expire()

    assert states(alice_client, job["id"]) == {
        "a": "ready",
        "b": "pending",
        "c": "pending",
    }


def test_bob_never_gets_alice_s_chain(alice_client, bob, make_token, client_for):
    bob_client = client_for(make_token(bob))
    bobs_agent = register(bob_client)
    submit(alice_client, A_B_C)

    assert claim(bob_client, bobs_agent)["calls"] == []
