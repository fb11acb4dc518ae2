"""Passkeys through the web UI: alice registers one, approves a run with it,
and the agent's answer carries the assertion that verifies against exactly
that passkey. The browser and authenticator are played by
tests.fakes.webauthn; fido2 checks everything on the server."""

# ruff: noqa: F811 - the fixtures of test_run_approvals are imported by name

from __future__ import annotations

import json

import pytest
from django.test import Client
from hpcsera_agent.approval import NotApproved, PasskeyPin, verify_passkey

from consent.models import Passkey, RunApproval
from jobs.models import FunctionCall
from tests.conftest import register_agent
from tests.fakes.webauthn import UP, Authenticator, b64url_decode
from tests.test_run_approvals import (  # noqa: F401 - fixtures
    AGENT_ROLES,
    agent,
    alice_api,
    alice_web,
    approval_key,
    ask,
    asked,
    claim,
    decide,
    expected_by_agent,
    held_call,
    look,
)
from tokens.models import SecurityEvent
from web.recent import SESSION_KEY

pytestmark = pytest.mark.django_db

ORIGIN = "http://testserver"  # Django's test client serves this host


def post_json(web: Client, url: str, body: dict | None = None):
    return web.post(url, json.dumps(body or {}), content_type="application/json")


def register(web: Client, authenticator: Authenticator, name: str = "yubikey"):
    options = post_json(web, "/ui/passkeys/options")
    assert options.status_code == 200, options.content
    challenge = b64url_decode(options.json()["challenge"])
    credential = authenticator.create(challenge)
    return post_json(web, "/ui/passkeys/add", {"name": name, "credential": credential})


@pytest.fixture
def key() -> Authenticator:
    return Authenticator(rp_id="testserver", origin=ORIGIN)


@pytest.fixture
def registered(alice_web, key) -> Passkey:
    answer = register(alice_web, key)
    assert answer.status_code == 201, answer.content
    return Passkey.objects.get()


def approve_with(web: Client, key: Authenticator, approval_id: str, **how):
    prepared = post_json(web, f"/ui/runs/{approval_id}/passkey/prepare")
    assert prepared.status_code == 200, prepared.content
    challenge = b64url_decode(prepared.json()["challenge"])
    assertion = key.get(challenge, **how)
    return post_json(web, f"/ui/runs/{approval_id}/passkey/approve", assertion)


# -- registering ---------------------------------------------------------------------


def test_registering_stores_the_public_key_shown_for_the_agent(
    alice_web, alice, key, registered
):
    assert registered.user == alice
    assert registered.public_key == key.public_pem()
    assert registered.rp_id == "testserver"
    page = alice_web.get("/ui/passkeys")
    assert key.public_pem().strip() in page.content.decode()
    kinds = SecurityEvent.objects.values_list("kind", flat=True)
    assert SecurityEvent.Kind.PASSKEY_ADDED in kinds


def test_the_creation_options_ask_for_es256_and_user_verification(alice_web):
    options = post_json(alice_web, "/ui/passkeys/options").json()

    assert options["rp"]["id"] == "testserver"
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-7]
    assert options["authenticatorSelection"]["userVerification"] == "required"


def test_a_registration_from_another_origin_is_refused(alice_web):
    stranger = Authenticator(rp_id="testserver", origin="http://evil.example")

    answer = register(alice_web, stranger)

    assert answer.status_code == 400
    assert "origin" in answer.json()["detail"].lower()
    assert not Passkey.objects.exists()


def test_a_registration_without_user_verification_is_refused(alice_web, key):
    challenge = b64url_decode(
        post_json(alice_web, "/ui/passkeys/options").json()["challenge"]
    )
    credential = key.create(challenge, flags=UP)

    answer = post_json(alice_web, "/ui/passkeys/add", {"credential": credential})

    assert answer.status_code == 400
    assert not Passkey.objects.exists()


def test_adding_a_passkey_needs_a_recent_login(alice_web, key):
    session = alice_web.session
    session[SESSION_KEY] = 0
    session.save()

    assert post_json(alice_web, "/ui/passkeys/options").status_code == 403
    assert post_json(alice_web, "/ui/passkeys/add", {}).status_code == 403


def test_a_registration_never_started_is_refused(alice_web, key):
    answer = post_json(
        alice_web, "/ui/passkeys/add", {"credential": key.create(b"x" * 32)}
    )

    assert answer.status_code == 409


def test_removing_a_passkey_deletes_it(alice_web, registered):
    answer = alice_web.post(f"/ui/passkeys/{registered.id}/remove")

    assert answer.status_code == 302
    assert not Passkey.objects.exists()


# -- approving -----------------------------------------------------------------------


def test_a_passkey_approval_reaches_the_agent_and_verifies_there(
    agent, held_call, alice_web, key, registered
):
    body = asked(held_call)
    approval_id = ask(agent, body).json()["id"]

    answer = approve_with(alice_web, key, approval_id)

    assert answer.status_code == 200, answer.content
    assert answer.json()["state"] == "approved"
    given = look(agent, approval_id).json()["approval"]
    assert set(given["passkey"]) == {
        "credential_id",
        "authenticator_data",
        "client_data_json",
        "signature",
    }
    pin = PasskeyPin(key.key.public_key(), "testserver", ORIGIN)
    expected = expected_by_agent(approval_id, body, agent)
    assert verify_passkey(given, expected, pin) == given["statement"]
    registered.refresh_from_db()
    assert registered.sign_count > 0 and registered.last_used_at is not None


def test_a_server_key_approval_has_no_passkey_and_fails_in_passkey_mode(
    agent, held_call, alice_web, key, registered
):
    body = asked(held_call)
    approval_id = ask(agent, body).json()["id"]
    decide(alice_web, approval_id)

    given = look(agent, approval_id).json()["approval"]

    assert "passkey" not in given
    pin = PasskeyPin(key.key.public_key(), "testserver", ORIGIN)
    with pytest.raises(NotApproved, match="not signed with a passkey"):
        verify_passkey(given, expected_by_agent(approval_id, body, agent), pin)


def test_an_assertion_over_another_challenge_is_refused(
    agent, held_call, alice_web, key, registered
):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    post_json(alice_web, f"/ui/runs/{approval_id}/passkey/prepare")
    assertion = key.get(b"\x00" * 32)

    answer = post_json(alice_web, f"/ui/runs/{approval_id}/passkey/approve", assertion)

    assert answer.status_code == 400
    assert "challenge" in answer.json()["detail"].lower()
    assert RunApproval.objects.get().state == "pending"


@pytest.mark.parametrize(
    "how, says",
    [
        ({"flags": UP}, "verif"),
        ({"origin": "http://evil.example"}, "origin"),
        ({"rp_id": "evil.example"}, "rp id"),
    ],
)
def test_an_assertion_failing_a_webauthn_check_is_refused(
    agent, held_call, alice_web, key, registered, how, says
):
    approval_id = ask(agent, asked(held_call)).json()["id"]

    answer = approve_with(alice_web, key, approval_id, **how)

    assert answer.status_code == 400
    assert says in answer.json()["detail"].lower()
    assert RunApproval.objects.get().state == "pending"


def test_an_assertion_by_an_unregistered_key_is_refused(
    agent, held_call, alice_web, registered
):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    stranger = Authenticator(rp_id="testserver", origin=ORIGIN)

    answer = approve_with(alice_web, stranger, approval_id)

    assert answer.status_code == 400
    assert RunApproval.objects.get().state == "pending"


def test_a_prepared_statement_is_used_once(
    agent, held_call, alice_web, key, registered
):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    prepared = post_json(alice_web, f"/ui/runs/{approval_id}/passkey/prepare").json()
    assertion = key.get(b64url_decode(prepared["challenge"]))
    url = f"/ui/runs/{approval_id}/passkey/approve"

    assert post_json(alice_web, url, assertion).status_code == 200
    assert post_json(alice_web, url, assertion).status_code == 409


def test_preparing_without_a_passkey_is_refused(agent, held_call, alice_web):
    approval_id = ask(agent, asked(held_call)).json()["id"]

    answer = post_json(alice_web, f"/ui/runs/{approval_id}/passkey/prepare")

    assert answer.status_code == 409
    assert answer.json()["code"] == "no_passkey"


# -- bob -----------------------------------------------------------------------------


def test_bob_cannot_see_remove_or_use_alices_passkey(bob, alice_web, registered, key):
    bob_web = Client()
    bob_web.force_login(bob)

    assert key.public_pem().strip() not in bob_web.get("/ui/passkeys").content.decode()
    assert bob_web.post(f"/ui/passkeys/{registered.id}/remove").status_code == 404
    assert Passkey.objects.filter(pk=registered.pk).exists()


def test_bob_can_neither_prepare_nor_approve_alices_request(
    bob, agent, held_call, alice_web, key, registered
):
    approval_id = ask(agent, asked(held_call)).json()["id"]
    prepared = post_json(alice_web, f"/ui/runs/{approval_id}/passkey/prepare").json()
    assertion = key.get(b64url_decode(prepared["challenge"]))
    bob_web = Client()
    bob_web.force_login(bob)

    prepare = post_json(bob_web, f"/ui/runs/{approval_id}/passkey/prepare")
    approve = post_json(bob_web, f"/ui/runs/{approval_id}/passkey/approve", assertion)

    assert prepare.status_code == 404
    assert approve.status_code == 404
    assert RunApproval.objects.get().state == "pending"


def test_bob_cannot_approve_his_request_with_alices_passkey(
    bob, make_token, client_for, alice_web, key, registered
):
    bob_web = Client()
    bob_web.force_login(bob)
    bobs_client = client_for(make_token(bob, role_list=AGENT_ROLES))
    bobs = {"client": bobs_client, "id": register_agent(bobs_client)}
    call_id = client_for(make_token(bob)).post("/bob/async-function/hello")
    claim(bobs)
    call = FunctionCall.objects.get(id=call_id.json()["call_id"])
    approval_id = ask(bobs, asked(call)).json()["id"]

    prepared = post_json(bob_web, f"/ui/runs/{approval_id}/passkey/prepare")
    assertion = key.get(b"\x00" * 32)
    approve = post_json(bob_web, f"/ui/runs/{approval_id}/passkey/approve", assertion)

    assert prepared.status_code == 409  # bob has no passkey; alice's is not his
    assert prepared.json()["code"] == "no_passkey"
    assert approve.status_code == 409  # nothing prepared, and not his key anyway
    assert RunApproval.objects.get(id=approval_id).state == "pending"
