"""Run approvals signed by the server (consent.signing), checked by the agent
(hpcsera_agent.approval): both halves against each other, as they meet in use."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from hpcsera_agent.approval import NotApproved

from consent import signing
from hpcsera_agent import approval

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the verifier's frozen clock


def statement(**changes) -> dict:
    base = {
        "v": 1,
        "approval_id": "ap-1",
        "decision": "approved",
        "purpose": "call",
        "subject_id": "call-1",
        "agent_id": "agent-1",
        "site": "site-a",
        "function": "hello",
        "executable_sha256": "ab" * 32,
        "arguments_sha256": "cd" * 32,
        "nonce": "0f" * 16,
        "approved_by": "alice",
        "approved_at": "2025-12-31T23:59:00Z",
        "expires_at": "2026-01-01T00:10:00Z",
    }
    return {**base, **changes}


def asked() -> dict:
    """What the agent asked for: the statement's checked fields, untouched."""
    return {name: statement()[name] for name in approval.CHECKED_FIELDS}


def sign_raw(key: ed25519.Ed25519PrivateKey, body: dict) -> dict:
    """A signature the server's statement_sign would refuse to make."""
    signature = key.sign(approval.DOMAIN + approval.canonical(body))
    return {"statement": body, "signature": signing._b64url(signature)}


def write_public(path: Path, key) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    return path


@pytest.fixture
def server_key(tmp_path, settings) -> Path:
    path = tmp_path / "server" / "approval-key.pem"
    signing.key_file_create(path)
    settings.HPCSERA = {**settings.HPCSERA, "APPROVAL_KEY_FILE": str(path)}
    return path


@pytest.fixture
def pinned(server_key, tmp_path) -> ed25519.Ed25519PublicKey:
    """The agent's pinned key, copied from what the server prints."""
    path = tmp_path / "pinned.pem"
    path.write_text(signing.approval_public_pem())
    return approval.load_public_key(path)


def test_a_statement_signed_by_the_server_verifies_on_the_agent(pinned):
    signed = signing.statement_sign(statement())

    checked = approval.verify(signed, asked(), pinned, now=NOW)

    assert checked == statement()
    assert "=" not in signed["signature"]


@pytest.mark.parametrize("field", approval.CHECKED_FIELDS)
def test_an_approval_of_something_else_is_refused_naming_the_field(pinned, field):
    signed = signing.statement_sign(statement(**{field: "something-else"}))

    with pytest.raises(NotApproved) as refused:
        approval.verify(signed, asked(), pinned, now=NOW)

    assert refused.value.reason == f"the approval's {field} is not the one asked for"


@pytest.mark.parametrize(
    "field", [*approval.CHECKED_FIELDS, "decision", "expires_at", "approved_by"]
)
def test_a_statement_changed_after_signing_is_refused(pinned, field):
    signed = signing.statement_sign(statement())
    signed["statement"][field] = "2099-01-01T00:00:00Z"

    with pytest.raises(NotApproved, match="not valid under the pinned key"):
        approval.verify(signed, asked(), pinned, now=NOW)


def test_a_signature_from_another_key_is_refused(pinned):
    forged = sign_raw(ed25519.Ed25519PrivateKey.generate(), statement())

    with pytest.raises(NotApproved, match="not valid under the pinned key"):
        approval.verify(forged, asked(), pinned, now=NOW)


def test_an_expired_approval_is_refused(pinned):
    signed = signing.statement_sign(statement(expires_at="2026-01-01T00:00:00Z"))

    with pytest.raises(NotApproved, match="expired at 2026-01-01T00:00:00Z"):
        approval.verify(signed, asked(), pinned, now=NOW)
    assert approval.verify(signed, asked(), pinned, now=NOW - 1)


def test_a_stripped_or_garbled_signature_is_refused(pinned):
    signed = signing.statement_sign(statement())

    with pytest.raises(NotApproved, match="not signed"):
        approval.verify({"statement": signed["statement"]}, asked(), pinned, now=NOW)
    with pytest.raises(NotApproved, match="garbled"):
        garbled = {**signed, "signature": signed["signature"][:-2] + "!!"}
        approval.verify(garbled, asked(), pinned, now=NOW)
    with pytest.raises(NotApproved, match="no statement"):
        approval.verify({"signature": signed["signature"]}, asked(), pinned, now=NOW)


def test_a_signed_denial_is_not_an_approval(server_key, pinned):
    denied = statement(decision="denied")
    with pytest.raises(ValueError):
        signing.statement_sign(denied)
    signed = sign_raw(signing.load_private_key(server_key), denied)

    with pytest.raises(NotApproved, match="decision is 'denied'"):
        approval.verify(signed, asked(), pinned, now=NOW)


def test_a_statement_of_another_version_is_refused(server_key, pinned):
    signed = sign_raw(signing.load_private_key(server_key), statement(v=2))

    with pytest.raises(NotApproved, match="version 2"):
        approval.verify(signed, asked(), pinned, now=NOW)


def test_the_server_signs_only_complete_statements(server_key):
    partial = statement()
    del partial["nonce"]

    with pytest.raises(ValueError, match="nonce"):
        signing.statement_sign(partial)
    with pytest.raises(ValueError, match="extra"):
        signing.statement_sign(statement(extra="x"))


CALLS = [
    ({}, None),
    ({"name": "world"}, ""),
    ({"name": "Zoë", "city": "Göttingen ✓"}, "Grüße, 世界\n"),
    ({"nested": {"b": [1, 2.5, None, True], "a": {"z": "ü"}}}, '{"x": 1}'),
]


@pytest.mark.parametrize(("args", "text"), CALLS)
def test_both_sides_hash_call_arguments_alike(args, text):
    call = {"id": "call-1", "args": args, "input": text}

    agent_side = approval.call_arguments_sha256(call)

    assert agent_side == signing.arguments_sha256_for_call(args, text)


def test_call_argument_hashes_follow_the_spec_byte_for_byte():
    args, text = {"b": "é", "a": "1"}, "ü"
    input_sha256 = hashlib.sha256("ü".encode()).hexdigest()
    spelled_out = (
        '{"args":{"a":"1","b":"\\u00e9"},"input_sha256":"' + input_sha256 + '"}'
    )

    expected = hashlib.sha256(spelled_out.encode("ascii")).hexdigest()

    assert signing.arguments_sha256_for_call(args, text) == expected
    assert approval.call_arguments_sha256({"args": args, "input": text}) == expected
    # No input and an empty input are different runs.
    assert signing.arguments_sha256_for_call({}, None) != (
        signing.arguments_sha256_for_call({}, "")
    )


def test_both_sides_hash_a_preparation_alike():
    digest = "12" * 32

    agent_side = approval.prepare_arguments_sha256(digest, "tools/setup ü.sh")

    assert agent_side == signing.arguments_sha256_for_prepare(
        digest, "tools/setup ü.sh"
    )


def test_the_agent_hashes_a_file_by_its_bytes(tmp_path):
    path = tmp_path / "run"
    path.write_bytes(b"#!/bin/sh\n" * 300_000)  # more than one read

    assert approval.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_command_prints_the_public_key_only(server_key, pinned):
    out = io.StringIO()

    call_command("approval_key", stdout=out)

    printed = out.getvalue()
    assert printed.startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in printed
    key = serialization.load_pem_public_key(printed.encode())
    assert isinstance(key, ed25519.Ed25519PublicKey)
    assert printed == signing.approval_public_pem()


def test_the_command_creates_a_private_key_file_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "keys" / "approval.pem"
    out, err = io.StringIO(), io.StringIO()

    call_command("approval_key", "--create", str(path), stdout=out, stderr=err)

    assert os.stat(path).st_mode & 0o777 == 0o600
    created = path.read_bytes()
    assert b"PRIVATE KEY" in created
    assert "PRIVATE" not in out.getvalue() + err.getvalue()
    assert out.getvalue() == signing.public_pem(signing.load_private_key(path))
    with pytest.raises(CommandError, match="exists already"):
        call_command("approval_key", "--create", str(path), stdout=io.StringIO())
    assert path.read_bytes() == created
    assert [p.name for p in path.parent.iterdir()] == ["approval.pem"]


def test_development_makes_one_key_under_var_and_keeps_it(tmp_path, settings):
    settings.VAR_DIR = tmp_path / "var"
    settings.HPCSERA = {**settings.HPCSERA, "APPROVAL_KEY_FILE": ""}

    first = signing.approval_public_pem()
    signing._signing_key.cache_clear()  # as a second process would start
    second = signing.approval_public_pem()

    path = tmp_path / "var" / "approval-key.pem"
    assert first == second
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_process_losing_the_race_for_the_key_file_keeps_the_winners(tmp_path):
    path = tmp_path / "approval-key.pem"
    winner = signing.key_file_create(path)

    with pytest.raises(FileExistsError):
        signing.key_file_create(path)

    assert signing.public_pem(signing.load_private_key(path)) == (
        signing.public_pem(winner)
    )
    assert [p.name for p in tmp_path.iterdir()] == ["approval-key.pem"]


def test_production_without_a_key_file_is_refused(tmp_path, settings):
    settings.PRODUCTION = True
    settings.VAR_DIR = tmp_path / "var"
    settings.HPCSERA = {**settings.HPCSERA, "APPROVAL_KEY_FILE": ""}

    with pytest.raises(ImproperlyConfigured, match="HPCSERA_APPROVAL_KEY_FILE"):
        signing.statement_sign(statement())
    assert not (tmp_path / "var").exists()


def test_a_server_key_that_is_not_ed25519_is_refused(tmp_path, settings):
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings.HPCSERA = {**settings.HPCSERA, "APPROVAL_KEY_FILE": str(path)}

    with pytest.raises(ImproperlyConfigured, match="must hold an Ed25519 key"):
        signing.approval_public_pem()
