"""The agent's passkey verifier (approval.verify_passkey) and its [consent]
settings. A P-256 key in the test stands in for the user's authenticator:
each test builds the assertion a browser would hand over, changes one thing,
and expects a refusal that names it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hpcsera_agent.approval import (
    NotApproved,
    PasskeyPin,
    statement_challenge,
    verify_passkey,
)
from hpcsera_agent.config import ConfigError, parse

from consent import signing
from tests.fakes.webauthn import UP, UV, Authenticator, b64url, b64url_decode

ORIGIN = "http://localhost:8000"
EXPECTED = {
    "approval_id": "9f1c0000-0000-4000-8000-000000000001",
    "purpose": "call",
    "subject_id": "0b9c7f40-0000-4000-8000-0000000000c1",
    "agent_id": "7a000000-0000-4000-8000-0000000000a1",
    "site": "cluster",
    "function": "touch",
    "executable_sha256": "a" * 64,
    "arguments_sha256": "b" * 64,
    "nonce": "c" * 32,
}


def statement(**changes) -> dict:
    now = time.time()
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "v": 1,
        "decision": "approved",
        "approved_by": "alice",
        "approved_at": time.strftime(stamp, time.gmtime(now)),
        "expires_at": time.strftime(stamp, time.gmtime(now + 600)),
        **EXPECTED,
        **changes,
    }


@pytest.fixture
def authenticator() -> Authenticator:
    return Authenticator(rp_id="localhost", origin=ORIGIN)


@pytest.fixture
def pin(authenticator) -> PasskeyPin:
    return PasskeyPin(authenticator.key.public_key(), "localhost", ORIGIN)


def approved(authenticator: Authenticator, signed: dict | None = None, **how) -> dict:
    """The approval the server hands over: a statement and the passkey's word."""
    shown = statement() if signed is None else signed
    assertion = authenticator.get(statement_challenge(shown), **how)
    return {"statement": shown, "passkey": assertion}


def refused(approval: dict, pin: PasskeyPin, now: float | None = None) -> str:
    with pytest.raises(NotApproved) as caught:
        verify_passkey(approval, EXPECTED, pin, now=now)
    return caught.value.reason


def test_an_assertion_of_the_pinned_passkey_over_the_statement_passes(
    authenticator, pin
):
    approval = approved(authenticator)

    assert verify_passkey(approval, EXPECTED, pin) == approval["statement"]


def test_an_assertion_made_on_another_origin_is_refused(authenticator, pin):
    approval = approved(authenticator, origin="https://evil.example")

    assert "origin 'https://evil.example'" in refused(approval, pin)


def test_an_assertion_for_another_rp_id_is_refused(authenticator, pin):
    approval = approved(authenticator, rp_id="evil.example")

    assert "rpIdHash" in refused(approval, pin)


@pytest.mark.parametrize(
    "flags, missing", [(UV, "user-present (UP)"), (UP, "user-verified (UV)")]
)
def test_an_assertion_without_up_or_uv_is_refused(authenticator, pin, flags, missing):
    approval = approved(authenticator, flags=flags)

    assert missing in refused(approval, pin)


def test_a_registration_response_is_no_assertion(authenticator, pin):
    approval = approved(authenticator, kind="webauthn.create")

    assert "type is not webauthn.get" in refused(approval, pin)


def test_a_statement_changed_after_the_passkey_signed_is_refused(authenticator, pin):
    approval = approved(authenticator)
    approval["statement"] = dict(
        approval["statement"], expires_at="2099-01-01T00:00:00Z"
    )

    assert "challenge differs" in refused(approval, pin)


def test_an_assertion_for_another_run_is_refused(authenticator, pin):
    # Signed and unchanged, but about another executable: the challenge holds,
    # the field check does not.
    approval = approved(authenticator, statement(executable_sha256="d" * 64))

    assert "executable_sha256 is not the one asked for" in refused(approval, pin)


def test_an_assertion_by_another_key_is_refused(authenticator, pin):
    approval = approved(authenticator, key=ec.generate_private_key(ec.SECP256R1()))

    assert "passkey signature is not valid under the pinned key" in refused(
        approval, pin
    )


def test_a_server_signed_approval_is_not_accepted_in_passkey_mode(
    tmp_path, settings, pin
):
    key = tmp_path / "server-key.pem"
    signing.key_file_create(key)
    settings.HPCSERA = {**settings.HPCSERA, "APPROVAL_KEY_FILE": str(key)}
    approval = signing.statement_sign(statement())

    assert "not signed with a passkey" in refused(approval, pin)


def test_an_expired_passkey_approval_is_refused(authenticator, pin):
    approval = approved(authenticator)

    reason = refused(approval, pin, now=time.time() + 601)

    assert reason.startswith("the approval expired at")


@pytest.mark.parametrize(
    "part", ["credential_id", "authenticator_data", "client_data_json", "signature"]
)
def test_a_missing_or_garbled_assertion_part_is_refused(authenticator, pin, part):
    approval = approved(authenticator)
    approval["passkey"][part] = "not base64url!"

    assert f"assertion's {part} is missing or garbled" in refused(approval, pin)


def test_truncated_authenticator_data_is_refused(authenticator, pin):
    shown = statement()
    # A signature over only 20 bytes of "authenticatorData": valid, but short.
    good = authenticator.get(statement_challenge(shown))
    short = b64url_decode(good["authenticator_data"])[:20]
    client = b64url_decode(good["client_data_json"])
    signature = authenticator.key.sign(
        short + hashlib.sha256(client).digest(), ec.ECDSA(hashes.SHA256())
    )
    good.update(authenticator_data=b64url(short), signature=b64url(signature))

    assert "too short" in refused({"statement": shown, "passkey": good}, pin)


# The [consent] table with verify = "passkey".


def config_with(tmp_path: Path, table: dict):
    return parse(
        {
            "server": "http://127.0.0.1:9",
            "token": "t",
            "functions_dir": str(tmp_path / "functions"),
            "state_dir": str(tmp_path / "state"),
            "consent": table,
        }
    )


def passkey_table(tmp_path: Path, authenticator: Authenticator, **changes) -> dict:
    path = tmp_path / "passkey.pem"
    path.write_text(authenticator.public_pem())
    table = {
        "mode": "all",
        "verify": "passkey",
        "passkey_public_key_file": str(path),
        "rp_id": "localhost",
        "origin": ORIGIN,
    }
    return {**table, **changes}


def test_the_pinned_passkey_is_loaded_with_the_config(tmp_path, authenticator):
    config = config_with(tmp_path, passkey_table(tmp_path, authenticator))

    assert config.consent.verify == "passkey"
    assert config.consent.rp_id == "localhost"
    assert config.consent.origin == ORIGIN
    assert config.consent.passkey is not None
    approval = approved(authenticator)
    assert verify_passkey(approval, EXPECTED, config.consent.passkey)


def test_the_verify_setting_defaults_to_the_server_key(tmp_path):
    assert config_with(tmp_path, {}).consent.verify == "server"


@pytest.mark.parametrize("missing", ["passkey_public_key_file", "rp_id", "origin"])
def test_passkey_mode_needs_its_three_settings(tmp_path, authenticator, missing):
    table = passkey_table(tmp_path, authenticator)
    del table[missing]

    with pytest.raises(ConfigError, match=f'verify = "passkey" needs {missing}'):
        config_with(tmp_path, table)


def test_a_pinned_passkey_key_must_be_p256(tmp_path, authenticator):
    other = tmp_path / "ed.pem"
    other.write_text(signing.public_pem(ed25519.Ed25519PrivateKey.generate()))
    table = passkey_table(tmp_path, authenticator, passkey_public_key_file=str(other))

    with pytest.raises(ConfigError, match="is not a P-256 key"):
        config_with(tmp_path, table)


@pytest.mark.parametrize(
    "key, value",
    [("rp_id", "https://localhost"), ("origin", "localhost:8000"), ("verify", "x")],
)
def test_malformed_passkey_settings_are_refused(tmp_path, authenticator, key, value):
    table = passkey_table(tmp_path, authenticator, **{key: value})

    with pytest.raises(ConfigError, match=key):
        config_with(tmp_path, table)
