"""Run approvals: the agent asks (agent API), alice decides (web UI), and the
signed answer verifies on the agent's side against the pinned public key."""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from hpcsera_agent.approval import NotApproved
from rest_framework.test import APIClient

from consent import signing
from consent.models import RunApproval
from hpcsera_agent import approval as agent_approval
from jobs.models import FunctionCall
from tests.conftest import register_agent
from tokens import roles
from web.recent import SESSION_KEY

pytestmark = pytest.mark.django_db

EXECUTABLE = hashlib.sha256(b"#!/bin/sh\necho hello\n").hexdigest()
NONCE = "5e" * 16
AGENT_ROLES = [roles.GET_JOB, roles.UPDATE_JOB_STATUS]


@pytest.fixture(autouse=True)
def approval_key(tmp_path, settings):
    path = tmp_path / "approval-key.pem"
    signing.key_file_create(path)
    settings.HPCSERA = {**settings.HPCSERA, "APPROVAL_KEY_FILE": str(path)}
    return path


@pytest.fixture
def pinned(approval_key, tmp_path):
    """The public key as an agent pins it: printed by the server, read from a file."""
    path = tmp_path / "pinned.pem"
    path.write_text(signing.approval_public_pem())
    return agent_approval.load_public_key(path)


@pytest.fixture
def alice_api(alice, make_token, client_for) -> APIClient:
    return client_for(make_token(alice))


@pytest.fixture
def agent(alice, make_token, client_for) -> dict:
    client = client_for(make_token(alice, role_list=AGENT_ROLES))
    return {"client": client, "id": register_agent(client, site="site-a")}


@pytest.fixture
def held_call(alice_api, agent) -> FunctionCall:
    """A call of hello with arguments and a body, leased to alice's agent."""
    call_id = alice_api.post(
        "/alice/async-function/hello?size=3&mode=fast",
        '{"x": 1}',
        content_type="application/json",
    ).json()["call_id"]
    claim(agent)
    call = FunctionCall.objects.get(id=call_id)
    assert call.agent_id is not None and str(call.agent_id) == agent["id"]
    return call


@pytest.fixture
def alice_web(alice) -> Client:
    web = Client()
    web.force_login(alice)
    return web


def claim(agent: dict) -> dict:
    answer = agent["client"].post(
        f"/api/agent/v1/agents/{agent['id']}/claim", {"max": 5}, format="json"
    )
    assert answer.status_code == 200
    return answer.json()


def asked(call: FunctionCall, **changes) -> dict:
    body = {
        "purpose": "call",
        "subject_id": str(call.id),
        "function": call.function,
        "executable_sha256": EXECUTABLE,
        "arguments_sha256": signing.arguments_sha256_for_call(call.args, call.input),
        "nonce": NONCE,
    }
    return {**body, **changes}


def ask(agent: dict, body: dict):
    return agent["client"].post(
        f"/api/agent/v1/agents/{agent['id']}/approvals", body, format="json"
    )


def look(agent: dict, approval_id: str, wait: float = 0):
    return agent["client"].get(
        f"/api/agent/v1/agents/{agent['id']}/approvals/{approval_id}?wait={wait}"
    )


def decide(web: Client, approval_id: str, decision: str = "approve"):
    return web.post(f"/ui/runs/{approval_id}/decide", {"decision": decision})


def expected_by_agent(approval_id: str, body: dict, agent: dict) -> dict:
    """What the agent compares the statement with: exactly what it asked."""
    return {
        "approval_id": approval_id,
        "purpose": body["purpose"],
        "subject_id": body["subject_id"],
        "agent_id": agent["id"],
        "site": "site-a",
        "function": body["function"],
        "executable_sha256": body["executable_sha256"],
        "arguments_sha256": body["arguments_sha256"],
        "nonce": body["nonce"],
    }


@contextmanager
def clock_moved(seconds: float):
    later = timezone.now() + timedelta(seconds=seconds)
    with mock.patch("django.utils.timezone.now", return_value=later):
        yield


# -- asking --------------------------------------------------------------------------


def test_asking_about_a_held_call_is_pending_and_shown_to_alice(
    agent, held_call, alice_web
):
    answer = ask(agent, asked(held_call))

    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["state"] == "pending" and "approval" not in body
    assert body["expires_at"]
    html = alice_web.get("/ui/requests").content.decode()
    assert f'data-id="{body["id"]}"' in html
    assert f'<code class="exe">{EXECUTABLE}</code>' in html
    assert "site <strong>site-a</strong>" in html


def test_the_arguments_hash_covers_the_calls_arguments_and_body(held_call):
    assert held_call.args and held_call.input
    without_body = signing.arguments_sha256_for_call(held_call.args, None)
    assert asked(held_call)["arguments_sha256"] != without_body


def test_asking_about_a_call_not_leased_to_this_agent_is_404(
    alice, alice_api, agent, make_token, client_for
):
    other_client = client_for(make_token(alice, role_list=AGENT_ROLES))
    other = {"client": other_client, "id": register_agent(other_client, site="b")}
    call_id = alice_api.post("/alice/async-function/hello").json()["call_id"]
    call = FunctionCall.objects.get(id=call_id)

    assert ask(agent, asked(call)).status_code == 404  # leased to nobody yet
    claim(other)
    call.refresh_from_db()
    assert str(call.agent_id) == other["id"]
    assert ask(agent, asked(call)).status_code == 404  # leased to another agent
    unknown = asked(call, subject_id="00000000-0000-0000-0000-000000000000")
    assert ask(agent, unknown).status_code == 404
    assert not RunApproval.objects.exists()


def test_asking_about_a_call_under_another_function_name_is_404(agent, held_call):
    answer = ask(agent, asked(held_call, function="other"))
    assert answer.status_code == 404
    assert not RunApproval.objects.exists()


def test_a_wrong_arguments_hash_is_refused(agent, held_call):
    wrong = signing.arguments_sha256_for_call({**held_call.args, "size": "4"}, None)
    answer = ask(agent, asked(held_call, arguments_sha256=wrong))
    assert answer.status_code == 400
    assert answer.json()["code"] == "arguments_mismatch"
    assert not RunApproval.objects.exists()


@pytest.mark.parametrize(
    "field, value, code",
    [
        ("nonce", "5e" * 8, "invalid_nonce"),
        ("nonce", "5E" * 16, "invalid_nonce"),
        ("nonce", "zz" * 16, "invalid_nonce"),
        ("executable_sha256", EXECUTABLE.upper(), "invalid_hash"),
        ("executable_sha256", EXECUTABLE[:-1], "invalid_hash"),
        ("arguments_sha256", "g" * 64, "invalid_hash"),
        ("nonce", "5e" * 33, "invalid_input"),
        ("purpose", "anything", "invalid_input"),
        ("subject_id", "not-a-uuid", "invalid_input"),
    ],
)
def test_malformed_requests_are_refused(agent, held_call, field, value, code):
    answer = ask(agent, asked(held_call, **{field: value}))
    assert answer.status_code == 400
    assert answer.json()["code"] == code
    assert not RunApproval.objects.exists()


# -- deciding ------------------------------------------------------------------------


def test_an_approval_is_signed_and_verifies_for_exactly_what_was_asked(
    agent, held_call, alice_web, pinned
):
    body = asked(held_call)
    approval_id = ask(agent, body).json()["id"]

    assert decide(alice_web, approval_id).status_code == 302

    answer = look(agent, approval_id)
    assert answer.status_code == 200
    assert answer.json()["state"] == "approved"
    signed = answer.json()["approval"]
    expected = expected_by_agent(approval_id, body, agent)
    statement = agent_approval.verify(signed, expected, pinned)
    assert statement["approved_by"] == "alice"
    assert statement["decision"] == "approved"
    for name, value in expected.items():
        assert statement[name] == value
    for name, other in (
        ("nonce", "6f" * 16),
        ("arguments_sha256", "0" * 64),
        ("executable_sha256", "1" * 64),
        ("site", "site-b"),
        ("subject_id", "00000000-0000-0000-0000-000000000000"),
    ):
        with pytest.raises(NotApproved):
            agent_approval.verify(signed, {**expected, name: other}, pinned)


def test_a_statement_changed_after_signing_does_not_verify(
    agent, held_call, alice_web, pinned
):
    body = asked(held_call)
    approval_id = ask(agent, body).json()["id"]
    decide(alice_web, approval_id)
    signed = look(agent, approval_id).json()["approval"]
    forged = {
        **signed,
        "statement": {**signed["statement"], "expires_at": "2999-01-01T00:00:00Z"},
    }
    with pytest.raises(NotApproved):
        agent_approval.verify(
            forged, expected_by_agent(approval_id, body, agent), pinned
        )


def test_a_denial_carries_no_approval(agent, held_call, alice_web):
    approval_id = ask(agent, asked(held_call)).json()["id"]

    assert decide(alice_web, approval_id, "deny").status_code == 302

    body = look(agent, approval_id).json()
    assert body["state"] == "denied" and "approval" not in body
    assert RunApproval.objects.get().signature == ""


def test_an_unanswered_request_expires(agent, held_call, alice_web, settings):
    approval_id = ask(agent, asked(held_call)).json()["id"]

    with clock_moved(settings.HPCSERA["APPROVAL_SECONDS"] + 1):
        refused = decide(alice_web, approval_id)
        body = look(agent, approval_id).json()

    assert refused.status_code == 409
    assert body["state"] == "expired" and "approval" not in body


def test_a_stale_login_cannot_approve(agent, held_call, alice_web, settings):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    session = alice_web.session
    session[SESSION_KEY] = (
        int(time.time()) - settings.HPCSERA["RECENT_LOGIN_SECONDS"] - 1
    )
    session.save()

    answer = decide(alice_web, approval_id)

    assert answer.status_code == 403
    assert look(agent, approval_id).json()["state"] == "pending"


def test_approving_twice_is_refused_and_changes_nothing(agent, held_call, alice_web):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    assert decide(alice_web, approval_id).status_code == 302
    first = RunApproval.objects.get()

    for decision in ("approve", "deny"):
        assert decide(alice_web, approval_id, decision).status_code == 409
    again = RunApproval.objects.get()
    assert again.state == "approved"
    assert (again.signature, again.statement) == (first.signature, first.statement)


def test_bob_can_neither_decide_nor_read_alices_request(
    bob, agent, held_call, make_token, client_for
):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    bob_web = Client()
    bob_web.force_login(bob)
    bobs_client = client_for(make_token(bob, role_list=AGENT_ROLES))
    bobs = {"client": bobs_client, "id": register_agent(bobs_client)}

    assert decide(bob_web, approval_id).status_code == 404
    assert look(bobs, approval_id).status_code == 404
    with_alices_agent = bobs_client.get(
        f"/api/agent/v1/agents/{agent['id']}/approvals/{approval_id}"
    )
    assert with_alices_agent.status_code == 404
    assert RunApproval.objects.get().state == "pending"


# -- the long-poll -------------------------------------------------------------------


def test_the_long_poll_answers_at_once_when_already_decided(
    agent, held_call, alice_web
):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    decide(alice_web, approval_id)

    started = time.monotonic()
    answer = look(agent, approval_id, wait=25)

    assert time.monotonic() - started < 1
    assert answer.json()["state"] == "approved"


def test_a_pending_request_without_wait_answers_pending_at_once(agent, held_call):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    started = time.monotonic()
    assert look(agent, approval_id).json()["state"] == "pending"
    assert time.monotonic() - started < 1


@pytest.mark.django_db(transaction=True)
def test_the_long_poll_returns_as_soon_as_alice_decides(agent, held_call, alice_web):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    answers: list = []
    listening = threading.Event()

    def long_poll() -> None:
        listening.set()
        started = time.monotonic()
        answers.append((look(agent, approval_id, wait=20), time.monotonic() - started))
        connection.close()

    poller = threading.Thread(target=long_poll)
    poller.start()
    listening.wait(1)
    # Let the poll reach its wait; a decision before that is found at once anyway.
    threading.Event().wait(0.3)
    assert decide(alice_web, approval_id).status_code == 302
    poller.join(timeout=10)

    assert not poller.is_alive()
    answer, took = answers[0]
    assert answer.json()["state"] == "approved"
    assert took < 5


# -- preparation steps -------------------------------------------------------------


def test_a_preparation_step_of_the_agents_deployment_can_be_asked_about(
    alice, alice_api, make_token, client_for
):
    import io
    import tarfile

    from django.core.files.uploadedfile import SimpleUploadedFile

    from consent.code import code_upload_decide
    from consent.models import CodeUpload

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("setup.sh")
        info.size, info.mode = 3, 0o755
        archive.addfile(info, io.BytesIO(b"#!\n"))
    data = buffer.getvalue()
    form = {"function": "hello", "archive": SimpleUploadedFile("a.tgz", data)}
    upload_id = alice_api.post(
        "/api/v1/code", {**form, "prepare": "setup.sh"}, format="multipart"
    ).json()["id"]
    digest = hashlib.sha256(data).hexdigest()
    code_upload_decide(
        upload=CodeUpload.objects.get(id=upload_id),
        user=alice,
        approve=True,
        sha256=digest,
    )
    client = client_for(make_token(alice, role_list=[*AGENT_ROLES, roles.GET_CODE]))
    agent = {"client": client, "id": register_agent(client)}
    [offer] = client.post(
        f"/api/agent/v1/agents/{agent['id']}/claim", {"deploy": True}, format="json"
    ).json()["deploy"]
    body = {
        "purpose": "prepare",
        "subject_id": offer["id"],
        "function": "hello",
        "executable_sha256": EXECUTABLE,
        "arguments_sha256": signing.arguments_sha256_for_prepare(digest, "setup.sh"),
        "nonce": NONCE,
    }

    wrong = ask(agent, {**body, "arguments_sha256": "0" * 64})
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "arguments_mismatch"
    answer = ask(agent, body)
    assert answer.status_code == 201 and answer.json()["state"] == "pending"
    assert RunApproval.objects.get().deployment_id is not None


def test_the_inbox_shows_the_arguments_as_json_and_who_submitted_the_call(
    alice, agent, alice_web
):
    from tests.test_code_consent import api_client

    ci = api_client(alice, name="nightly-ci")
    call_id = ci.post("/alice/async-function/hello?name=%C3%89ve").json()["call_id"]
    claim(agent)
    call = FunctionCall.objects.get(id=call_id)
    assert ask(agent, asked(call)).status_code == 201

    html = alice_web.get("/ui/requests").content.decode()

    assert "{&quot;name&quot;: &quot;\u00c9ve&quot;}" in html
    assert "token <strong>nightly-ci</strong>" in html


@pytest.mark.parametrize("wait", ["soon", "-1"])
def test_a_malformed_wait_is_refused(agent, held_call, wait):
    approval_id = ask(agent, asked(held_call)).json()["id"]

    answer = agent["client"].get(
        f"/api/agent/v1/agents/{agent['id']}/approvals/{approval_id}?wait={wait}"
    )

    assert answer.status_code == 400 and answer.json()["code"] == "invalid_input"
