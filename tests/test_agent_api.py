"""The agent protocol through HTTP: register, claim (lease), report."""

from __future__ import annotations

import pytest

from jobs.models import FunctionCall
from tests.conftest import register_agent
from tokens import roles

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_client(alice, make_token, client_for):
    return client_for(make_token(alice))


def _claim(client, agent_id, max_calls=10, wait=0):
    return client.post(
        f"/api/agent/v1/agents/{agent_id}/claim",
        {"max": max_calls, "wait": wait},
        format="json",
    )


def _report(client, agent_id, call_id, **body):
    return client.post(
        f"/api/agent/v1/agents/{agent_id}/calls/{call_id}/report", body, format="json"
    )


def test_a_claim_leases_ready_calls_once(alice_client):
    agent = register_agent(alice_client)
    call_id = alice_client.post("/alice/async-function/hello?x=1").json()["call_id"]

    first = _claim(alice_client, agent).json()["calls"]
    second = _claim(alice_client, agent).json()["calls"]

    assert [c["id"] for c in first] == [call_id]
    assert first[0]["args"] == {"x": "1"} and first[0]["mode"] == "async"
    assert second == []
    assert FunctionCall.objects.get(id=call_id).state == "leased"


def test_a_claim_only_sees_functions_the_agent_offers_and_its_site(alice_client):
    agent_a = register_agent(alice_client, functions=("hello",), site="a")
    agent_b = register_agent(alice_client, functions=("other",), site="b")
    alice_client.post("/alice/async-function/hello", HTTP_X_HPCSERA_SITE="a")

    assert _claim(alice_client, agent_b).json()["calls"] == []
    assert len(_claim(alice_client, agent_a).json()["calls"]) == 1


def test_reports_move_the_call_and_repeating_one_is_harmless(alice_client):
    agent = register_agent(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    _claim(alice_client, agent)

    running = _report(alice_client, agent, call_id, state="running", batch_job_id="42")
    assert running.status_code == 200
    done = dict(state="succeeded", exit_code=0, stdout='{"ok": true}', stderr_tail="")
    assert _report(alice_client, agent, call_id, **done).status_code == 200
    again = _report(alice_client, agent, call_id, **done)
    assert again.status_code == 200 and again.json()["state"] == "succeeded"

    status = alice_client.get(f"/api/v1/calls/{call_id}").json()
    assert status["state"] == "succeeded" and status["output"] == {"ok": True}
    assert status["batch_job_id"] == "42" and status["exit_code"] == 0
    assert status["timings"]["started_at"] and status["timings"]["finished_at"]


def test_a_finished_call_cannot_be_reported_into_another_state(alice_client):
    agent = register_agent(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    _claim(alice_client, agent)
    _report(alice_client, agent, call_id, state="failed", exit_code=3)

    answer = _report(alice_client, agent, call_id, state="succeeded", exit_code=0)
    assert answer.status_code == 409
    assert answer.json()["code"] == "invalid_transition"
    assert FunctionCall.objects.get(id=call_id).exit_code == 3


def test_an_agent_cannot_report_a_call_leased_to_another(alice_client):
    holder = register_agent(alice_client, site="a")
    other = register_agent(alice_client, site="b")
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    _claim(alice_client, holder)

    answer = _report(alice_client, other, call_id, state="succeeded", exit_code=0)
    assert answer.status_code == 404
    assert FunctionCall.objects.get(id=call_id).state == "leased"


@pytest.mark.parametrize(
    "body",
    [
        {"state": "ready"},
        {"state": "succeeded", "exit_code": "zero"},
        {"state": "bogus"},
        {},
    ],
)
def test_bad_reports_are_400_and_change_nothing(alice_client, body):
    agent = register_agent(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    _claim(alice_client, agent)
    answer = _report(alice_client, agent, call_id, **body)
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_input"
    assert FunctionCall.objects.get(id=call_id).state == "leased"


@pytest.mark.parametrize(
    "body",
    [
        {"site": "bad site", "capabilities": [], "functions": []},
        {"site": "a", "capabilities": ["teleport"], "functions": []},
        {
            "site": "a",
            "capabilities": [],
            "functions": [{"name": "..", "runner": "local"}],
        },
        {
            "site": "a",
            "capabilities": [],
            "functions": [{"name": "x", "runner": "magic"}],
        },
        {
            "site": "a",
            "capabilities": [],
            "functions": [
                {"name": "x", "runner": "local"},
                {"name": "x", "runner": "local"},
            ],
        },
    ],
)
def test_bad_registrations_are_400(alice_client, body):
    answer = alice_client.post("/api/agent/v1/agents", body, format="json")
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_input"


def test_malformed_json_to_the_agent_api_is_400(alice_client):
    answer = alice_client.post(
        "/api/agent/v1/agents", "{oops", content_type="application/json"
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "malformed_json"


def test_other_users_and_tags_cannot_use_an_agent(
    alice_client, alice, bob, make_token, client_for
):
    agent = register_agent(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    for outsider in (
        client_for(make_token(bob)),
        client_for(make_token(alice, tag="proj-b")),
    ):
        assert _claim(outsider, agent).status_code == 404
        answer = _report(outsider, agent, call_id, state="failed", exit_code=1)
        assert answer.status_code == 404
    assert FunctionCall.objects.get(id=call_id).state == "ready"


def test_agent_endpoints_need_their_roles(alice_client, alice, make_token, client_for):
    agent = register_agent(alice_client)
    no_pull = client_for(make_token(alice, role_list=[roles.UPDATE_JOB_STATUS]))
    no_report = client_for(make_token(alice, role_list=[roles.GET_JOB]))
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]

    assert _claim(no_pull, agent).status_code == 403
    register = no_pull.post("/api/agent/v1/agents", {}, format="json")
    assert register.status_code == 403
    assert len(_claim(no_report, agent).json()["calls"]) == 1
    assert _report(no_report, agent, call_id, state="running").status_code == 403
    assert FunctionCall.objects.get(id=call_id).state == "leased"


def test_output_with_nul_characters_is_kept_not_refused(alice_client):
    agent = register_agent(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    _claim(alice_client, agent)
    answer = _report(
        alice_client,
        agent,
        call_id,
        state="succeeded",
        exit_code=0,
        stdout="a\x00b",
        stderr_tail="c\x00",
    )
    assert answer.status_code == 200
    call = FunctionCall.objects.get(id=call_id)
    assert call.stdout == "a\ufffdb" and call.stderr_tail == "c\ufffd"


@pytest.mark.parametrize(
    "body",
    [
        {"state": "succeeded", "exit_code": 5},
        {"state": "failed", "exit_code": 2**63},
        {"state": "failed", "exit_code": 1, "reason": "x" * 3000},
    ],
)
def test_contradictory_or_out_of_range_reports_are_400(alice_client, body):
    agent = register_agent(alice_client)
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    _claim(alice_client, agent)
    answer = _report(alice_client, agent, call_id, **body)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_input"
    assert FunctionCall.objects.get(id=call_id).state == "leased"


def test_deeply_nested_json_to_the_agent_api_is_400(alice_client):
    answer = alice_client.post(
        "/api/agent/v1/agents", "[" * 5000 + "]" * 5000, content_type="application/json"
    )
    assert answer.status_code == 400 and answer.json()["code"] == "malformed_json"


@pytest.mark.django_db(transaction=True)
def test_a_token_revoked_during_a_long_poll_gets_no_work(alice, make_token, client_for):
    import threading

    from django.db import connection

    from tokens.models import Token
    from tokens.services import token_revoke

    agent_secret = make_token(alice, role_list=[roles.GET_JOB, roles.UPDATE_JOB_STATUS])
    agent_client = client_for(agent_secret)
    agent = register_agent(agent_client)
    answers = []

    def long_poll() -> None:
        answers.append(_claim(agent_client, agent, wait=10))
        connection.close()

    poller = threading.Thread(target=long_poll)
    poller.start()
    time_to_settle = threading.Event()
    time_to_settle.wait(0.5)
    token_revoke(token=Token.objects.get(prefix=agent_secret.split("_")[1]))
    call_id = (
        client_for(make_token(alice))
        .post("/alice/async-function/hello?arg=secret")
        .json()["call_id"]
    )
    poller.join(timeout=15)

    assert answers[0].status_code == 401
    assert answers[0].json()["code"] == "token_revoked"
    assert FunctionCall.objects.get(id=call_id).state == "ready"
