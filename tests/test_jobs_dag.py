"""Job documents and their dependency graph, through HTTP and the agent protocol."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.dag import calls_expire_deadlines
from jobs.models import FunctionCall
from tests.conftest import register_agent

pytestmark = pytest.mark.django_db

FUNCTIONS = ("build", "stage", "run", "post")


@pytest.fixture
def alice_client(alice, make_token, client_for):
    return client_for(make_token(alice))


@pytest.fixture
def agent(alice_client) -> str:
    return register_agent(alice_client, functions=FUNCTIONS)


def submit(client, doc, **kwargs):
    return client.post("/api/v1/jobs", doc, format="json", **kwargs)


def claim(client, agent_id) -> list[str]:
    answer = client.post(
        f"/api/agent/v1/agents/{agent_id}/claim", {"max": 10}, format="json"
    )
    return sorted(c["function"] for c in answer.json()["calls"])


def finish(client, agent_id, function, state="succeeded", exit_code=0):
    call = FunctionCall.objects.get(function=function, agent_id=agent_id)
    answer = client.post(
        f"/api/agent/v1/agents/{agent_id}/calls/{call.id}/report",
        {"state": state, "exit_code": exit_code},
        format="json",
    )
    assert answer.status_code == 200, answer.content


def states(client, job_id) -> dict[str, str]:
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    return {c["name"]: c["state"] for c in job["calls"]}


DIAMOND = {
    "name": "diamond",
    "calls": [
        {"name": "build", "function": "build"},
        {"name": "stage", "function": "stage", "after": ["build"]},
        {"name": "run", "function": "run", "after": ["build"]},
        {"name": "post", "function": "post", "after": ["stage", "run"]},
    ],
}


def test_a_diamond_runs_its_middle_concurrently_and_joins(alice_client, agent):
    answer = submit(alice_client, DIAMOND)
    assert answer.status_code == 201, answer.content
    job = answer.json()
    assert answer["Location"] == job["url"]
    assert [c["after"] for c in job["calls"]] == [
        [],
        ["build"],
        ["build"],
        ["run", "stage"],
    ]

    assert claim(alice_client, agent) == ["build"]
    finish(alice_client, agent, "build")
    assert claim(alice_client, agent) == ["run", "stage"]
    finish(alice_client, agent, "stage")
    assert claim(alice_client, agent) == []
    finish(alice_client, agent, "run")
    assert claim(alice_client, agent) == ["post"]
    finish(alice_client, agent, "post")
    assert set(states(alice_client, job["id"]).values()) == {"succeeded"}


def test_a_failure_cancels_its_dependents_and_theirs(alice_client, agent):
    job = submit(alice_client, DIAMOND).json()
    claim(alice_client, agent)
    finish(alice_client, agent, "build", state="failed", exit_code=2)

    detail = alice_client.get(f"/api/v1/jobs/{job['id']}").json()
    by_name = {c["name"]: c for c in detail["calls"]}
    assert by_name["build"]["state"] == "failed"
    assert by_name["stage"]["state"] == "cancelled"
    assert by_name["stage"]["reason"] == "dependency 'build' ended failed"
    assert by_name["post"]["state"] == "cancelled"
    assert "ended cancelled" in by_name["post"]["reason"]
    assert detail["state"] == "failed"
    assert claim(alice_client, agent) == []


def test_a_yaml_job_runs_in_the_listed_order(alice_client, agent):
    doc = b"""
name: pipeline
calls:
  - function: build
    args: {target: release}
    time_limit: 600
  - function: run
    input: {steps: 3}
  - function: post
"""
    answer = alice_client.post("/api/v1/jobs", doc, content_type="application/yaml")
    assert answer.status_code == 201, answer.content
    calls = answer.json()["calls"]
    assert [c["after"] for c in calls] == [[], ["build"], ["run"]]
    assert calls[0]["args"] == {"target": "release"}
    assert calls[0]["time_limit_seconds"] == 600

    assert claim(alice_client, agent) == ["build"]
    finish(alice_client, agent, "build")
    answer = alice_client.post(
        f"/api/agent/v1/agents/{agent}/claim", {"max": 10}, format="json"
    )
    assert answer.json()["calls"][0]["input"] == '{"steps": 3}'


@pytest.mark.parametrize(
    "calls, code, culprit",
    [
        (
            [
                {"name": "a", "function": "build", "after": ["c"]},
                {"name": "b", "function": "run", "after": ["a"]},
                {"name": "c", "function": "post", "after": ["b"]},
            ],
            "dependency_cycle",
            "a",
        ),
        (
            [{"name": "a", "function": "build", "after": ["nowhere"]}],
            "unknown_dependency",
            "a",
        ),
        (
            [{"name": "a", "function": "build"}, {"name": "a", "function": "run"}],
            "duplicate_call_name",
            "a",
        ),
        ([{"name": "a", "function": "missing"}], "unknown_function", "a"),
        ([{"name": "a", "function": "build", "after": "b"}], "invalid_call", "a"),
    ],
)
def test_a_bad_graph_is_a_400_naming_the_call(
    alice_client, agent, calls, code, culprit
):
    answer = submit(alice_client, {"calls": calls})

    assert answer.status_code == 400
    assert answer["Content-Type"] == "application/problem+json"
    assert answer.json()["code"] == code
    assert answer.json()["call"] == culprit
    assert FunctionCall.objects.count() == 0


def test_a_cycle_reports_its_path(alice_client, agent):
    calls = [
        {"name": "a", "function": "build", "after": ["b"]},
        {"name": "b", "function": "run", "after": ["a"]},
    ]
    body = submit(alice_client, {"calls": calls}).json()
    assert body["cycle"] in (["a", "b", "a"], ["b", "a", "b"])


@pytest.mark.parametrize(
    "body, content_type, code",
    [
        (b"calls: [", "application/yaml", "malformed_document"),
        (b"a: &x [1]\nb: *x\n", "application/yaml", "malformed_document"),
        (b"{", "application/json", "malformed_json"),
        (b"[]", "application/json", "invalid_job"),
        (b'{"calls": []}', "application/json", "invalid_job"),
        (
            b'{"calls": [{"function": "build", "x": 1}]}',
            "application/json",
            "invalid_call",
        ),
        (b'{"calls": [{"virtual": {}}]}', "application/json", "invalid_call"),
    ],
)
def test_malformed_documents_are_refused(alice_client, agent, body, content_type, code):
    answer = alice_client.post("/api/v1/jobs", body, content_type=content_type)
    assert answer.status_code == 400
    assert answer.json()["code"] == code


def test_calls_added_later_wait_for_calls_already_there(alice_client, agent):
    job = submit(alice_client, {"calls": [{"function": "build"}]}).json()
    added = alice_client.post(
        f"/api/v1/jobs/{job['id']}/calls",
        {"calls": [{"function": "run", "after": ["build"]}, {"function": "post"}]},
        format="json",
    )
    assert added.status_code == 201, added.content
    assert claim(alice_client, agent) == ["build"]
    finish(alice_client, agent, "build")
    assert claim(alice_client, agent) == ["run"]
    assert states(alice_client, job["id"]) == {
        "build": "succeeded",
        "run": "leased",
        "post": "pending",
    }


def test_a_call_added_after_a_failed_call_is_cancelled_at_once(alice_client, agent):
    job = submit(alice_client, {"calls": [{"function": "build"}]}).json()
    claim(alice_client, agent)
    finish(alice_client, agent, "build", state="failed", exit_code=1)

    added = alice_client.post(
        f"/api/v1/jobs/{job['id']}/calls",
        {"calls": [{"function": "run", "after": ["build"]}, {"function": "post"}]},
        format="json",
    ).json()
    assert states(alice_client, added["id"]) == {
        "build": "failed",
        "run": "cancelled",
        "post": "cancelled",
    }


def test_adding_a_name_the_job_has_is_refused(alice_client, agent):
    job = submit(alice_client, {"calls": [{"function": "build"}]}).json()
    answer = alice_client.post(
        f"/api/v1/jobs/{job['id']}/calls",
        {"calls": [{"function": "build"}]},
        format="json",
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "duplicate_call_name"


VIRTUAL = {
    "calls": [
        {"function": "build"},
        {"name": "approval", "virtual": {"deadline_seconds": 60}},
        {"function": "run", "after": ["approval"]},
    ]
}


def test_a_virtual_call_is_finished_by_rest_and_releases_its_dependents(
    alice_client, agent
):
    job = submit(alice_client, VIRTUAL).json()
    approval = next(c for c in job["calls"] if c["name"] == "approval")
    assert approval["virtual"] and approval["deadline_at"]
    early = alice_client.post(
        approval["status_url"] + "/finish", {"state": "succeeded"}, format="json"
    )
    assert early.status_code == 409  # it waits for "build" still
    assert claim(alice_client, agent) == ["build"]  # never the virtual call
    finish(alice_client, agent, "build")
    assert claim(alice_client, agent) == []

    done = alice_client.post(
        approval["status_url"] + "/finish",
        {"state": "succeeded", "message": "approved by Grace"},
        format="json",
    )
    assert done.status_code == 200, done.content
    assert done.json()["state"] == "succeeded"
    assert claim(alice_client, agent) == ["run"]


def test_a_virtual_call_can_be_finished_as_failed(alice_client, agent):
    job = submit(alice_client, {"calls": [VIRTUAL["calls"][1], VIRTUAL["calls"][2]]})
    approval = job.json()["calls"][0]
    answer = alice_client.post(
        approval["status_url"] + "/finish",
        {"state": "failed", "message": "rejected"},
        format="json",
    )
    assert answer.json()["reason"] == "rejected"
    assert states(alice_client, approval["job_id"])["run"] == "cancelled"


def test_only_virtual_calls_are_finished_by_rest(alice_client, agent):
    call = submit(alice_client, {"calls": [{"function": "build"}]}).json()["calls"][0]
    answer = alice_client.post(
        call["status_url"] + "/finish", {"state": "succeeded"}, format="json"
    )
    assert answer.status_code == 409 and answer.json()["code"] == "not_virtual"
    bad = alice_client.post(
        call["status_url"] + "/finish", {"state": "x"}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_input"


def test_a_virtual_call_fails_at_its_deadline(alice_client, agent):
    job = submit(alice_client, {"calls": VIRTUAL["calls"][1:]}).json()

    assert calls_expire_deadlines() == 0
    later = timezone.now() + timedelta(seconds=61)
    assert calls_expire_deadlines(now=later) == 1
    assert calls_expire_deadlines(now=later) == 0

    call = alice_client.get(job["calls"][0]["status_url"]).json()
    assert call["state"] == "failed"
    assert call["reason"].startswith("deadline passed")
    assert states(alice_client, job["id"])["run"] == "cancelled"


def test_the_timer_command_fails_due_virtual_calls(alice_client, agent):
    job = submit(alice_client, {"calls": VIRTUAL["calls"][1:2]}).json()
    FunctionCall.objects.filter(job_id=job["id"]).update(
        deadline_at=timezone.now() - timedelta(seconds=1)
    )
    call_command("run_timers", "--once")
    assert states(alice_client, job["id"]) == {"approval": "failed"}


def test_resolution_touches_only_the_edges_of_the_call_that_ended(alice_client, agent):
    for _ in range(20):
        submit(alice_client, DIAMOND)
    job = submit(alice_client, DIAMOND).json()
    build = job["calls"][0]["id"]
    FunctionCall.objects.filter(id=build).update(state="leased", agent_id=agent)

    with CaptureQueriesContext(connection) as small:
        finish(alice_client, agent, "build")
    for _ in range(100):
        submit(alice_client, DIAMOND)
    other = submit(alice_client, DIAMOND).json()["calls"][0]["id"]
    FunctionCall.objects.filter(id=other).update(state="leased", agent_id=agent)
    FunctionCall.objects.filter(id=build).update(function="done")
    with CaptureQueriesContext(connection) as large:
        finish(alice_client, agent, "build")
    assert len(large) == len(small)


def test_another_projects_job_cannot_be_extended(
    alice, bob, make_token, client_for, agent, alice_client
):
    job = submit(alice_client, {"calls": [{"function": "build"}]}).json()
    for secret in (make_token(bob), make_token(alice, tag="proj-b")):
        answer = client_for(secret).post(
            f"/api/v1/jobs/{job['id']}/calls",
            {"calls": [{"function": "run"}]},
            format="json",
        )
        assert answer.status_code == 404
    assert FunctionCall.objects.count() == 1
