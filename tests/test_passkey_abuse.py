"""Abuse of the passkey consent mode: a stale session stretching the server's
signature, keys off the curve, counters falling back, statements of another
shape, and ceremonies inside a foreign frame."""

# ruff: noqa: F811 - fixtures are imported by name

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from django.test import Client
from fido2 import cbor
from hpcsera_agent.approval import NotApproved, statement_challenge, verify_passkey

from consent.models import Passkey, RunApproval
from tests.fakes.webauthn import UP, UV, b64url, b64url_decode
from tests.test_agent_passkey import (  # noqa: F401 - fixtures
    EXPECTED,
    approved,
    authenticator,
    pin,
    statement,
)
from tests.test_agent_passkey import (
    ORIGIN as AGENT_ORIGIN,
)
from tests.test_passkeys import (  # noqa: F401 - fixtures
    approve_with,
    key,
    post_json,
    registered,
)
from tests.test_run_approvals import (  # noqa: F401 - fixtures
    agent,
    alice_api,
    alice_web,
    approval_key,
    ask,
    asked,
    expected_by_agent,
    held_call,
    look,
    pinned,
)
from web.recent import SESSION_KEY

pytestmark = pytest.mark.django_db


# -- server: registration error handling -------------------------------------------


def test_a_registration_whose_p256_point_is_off_the_curve_is_a_400_not_a_500(
    alice, alice_web, key
):
    """COSE alg -7, crv 1, but x/y not a point of P-256: fido2 passes it on,
    _spki_pem's EllipticCurvePublicNumbers.public_key() raises ValueError,
    which nothing catches (500, traceback under DEBUG)."""
    options = post_json(alice_web, "/ui/passkeys/options").json()
    credential = key.create(b64url_decode(options["challenge"]))
    response = credential["response"]
    attestation = cbor.decode(b64url_decode(response["attestationObject"]))
    auth_data = attestation["authData"]
    cose_at = 55 + struct.unpack(">H", auth_data[53:55])[0]
    cose = cbor.decode(auth_data[cose_at:])
    cose[-2], cose[-3] = b"\x01" * 32, b"\x02" * 32
    attestation["authData"] = auth_data[:cose_at] + cbor.encode(cose)
    credential["response"]["attestationObject"] = b64url(cbor.encode(attestation))
    web = Client(raise_request_exception=False)
    web.cookies = alice_web.cookies

    answer = post_json(web, "/ui/passkeys/add", {"credential": credential})

    assert answer.status_code == 400
    assert answer.json()["code"] in ("not_es256", "invalid_passkey")
    assert not Passkey.objects.exists()


# -- server: sign counter ------------------------------------------------------------


def test_a_sign_counter_that_falls_back_to_zero_is_refused_and_not_stored(
    agent, held_call, alice_web, key, registered
):
    """WebAuthn: if the stored or the new counter is non-zero, the new one must
    be greater. `if counter and counter <= stored` lets 0 through after 50
    and then stores 0, which also resets the clone detection for good."""
    Passkey.objects.update(sign_count=50)
    approval_id = ask(agent, asked(held_call)).json()["id"]
    key.count = -1  # the fake authenticator's next counter is 0

    answer = approve_with(alice_web, key, approval_id)

    assert answer.status_code == 400
    assert answer.json()["code"] == "counter"
    assert RunApproval.objects.get().state == "pending"
    assert Passkey.objects.get().sign_count == 50


# -- server: the passkey path and server-key agents ----------------------------------


def test_a_passkey_approval_without_a_recent_login_is_not_server_signed(
    agent, held_call, alice_web, key, registered, pinned
):
    """Server-key agents need an approval made with a recent login
    (decide_run). run_passkey_decide skips that check and still attaches the
    server's Ed25519 signature, so a passkey added during a stolen recent
    session (attestation "none": any software key will do) keeps approving
    runs for server-key agents for as long as the session lives."""
    from hpcsera_agent.approval import verify

    session = alice_web.session
    session[SESSION_KEY] = 0  # logged in long ago
    session.save()
    body = asked(held_call)
    approval_id = ask(agent, body).json()["id"]

    answer = approve_with(alice_web, key, approval_id)

    if answer.status_code == 200:
        given = look(agent, approval_id).json()["approval"]
        with pytest.raises(NotApproved):
            verify(given, expected_by_agent(approval_id, body, agent), pinned)
    else:
        assert answer.status_code == 403
        assert RunApproval.objects.get().state == "pending"


# -- agent: what it accepts as a statement -------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"add": {"standing": True}}, id="extra-field"),
        pytest.param({"drop": ("approved_by", "approved_at")}, id="missing-fields"),
        pytest.param({"add": {"v": 1.0}}, id="version-as-float"),
    ],
)
def test_the_agent_refuses_a_passkey_statement_not_shaped_as_the_server_makes_it(
    authenticator, pin, change
):
    """In passkey mode the server is not trusted, so the agent is the only one
    that can hold the statement to its schema (the server's statement_sign
    does, the agent does not): exactly the 14 fields, v the integer 1."""
    shown = {**statement(), **change.get("add", {})}
    for name in change.get("drop", ()):
        del shown[name]

    with pytest.raises(NotApproved):
        verify_passkey(approved(authenticator, shown), EXPECTED, pin)


def test_the_agent_refuses_an_assertion_made_in_a_cross_origin_frame(
    authenticator, pin
):
    """clientData.crossOrigin true means the ceremony ran in a frame embedded
    by another site (topOrigin); the UI is never framed (X-Frame-Options
    DENY), so the verifier should refuse it (WebAuthn L3, 7.2)."""
    shown = statement()
    auth_data = hashlib.sha256(b"localhost").digest() + bytes([UP | UV]) + b"\0\0\0\7"
    client_data = json.dumps(
        {
            "type": "webauthn.get",
            "challenge": b64url(statement_challenge(shown)),
            "origin": AGENT_ORIGIN,
            "crossOrigin": True,
            "topOrigin": "https://evil.example",
        }
    ).encode()
    signature = authenticator.key.sign(
        auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
    )
    approval = {
        "statement": shown,
        "passkey": {
            "credential_id": b64url(authenticator.credential_id),
            "authenticator_data": b64url(auth_data),
            "client_data_json": b64url(client_data),
            "signature": b64url(signature),
        },
    }

    with pytest.raises(NotApproved):
        verify_passkey(approval, EXPECTED, pin)
