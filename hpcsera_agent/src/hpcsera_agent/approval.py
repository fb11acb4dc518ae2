"""Checking the signed word that the user approved one run.

The agent trusts an approval only through a public key pinned in its own
config, never through anything the server says besides the signature. Two
kinds of key can be pinned ([consent] verify):

- "server": the server's Ed25519 approval key (public_key_file). A token in
  the wrong hands can still lease calls, but cannot make them run without the
  user's consent as the server signs it; whoever controls the server's key can.
- "passkey": the public key of the user's own WebAuthn passkey
  (passkey_public_key_file). The statement is the challenge the authenticator
  signed, so not even the server can make an approval up.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# Must match consent.signing.DOMAIN on the server.
DOMAIN = b"hpcsera-approval-v1\n"
# What the agent asked for, field by field; the statement must repeat each.
CHECKED_FIELDS = (
    "approval_id",
    "purpose",
    "subject_id",
    "agent_id",
    "site",
    "function",
    "executable_sha256",
    "arguments_sha256",
    "nonce",
)
# Everything a statement holds, as the server makes it (consent/signing.py
# keeps its own copy: the packages are independent).
STATEMENT_FIELDS = frozenset(
    CHECKED_FIELDS + ("v", "decision", "approved_by", "approved_at", "expires_at")
)
SIGNATURE = re.compile(r"[A-Za-z0-9_-]{86}")  # 64 bytes, base64url without padding
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
B64URL = re.compile(r"[A-Za-z0-9_-]*")
# authenticatorData: rpIdHash (32 bytes), flags (1), signCount (4), then more.
AUTH_DATA_MIN = 37
FLAG_UP = 0x01  # user present: someone touched the authenticator
FLAG_UV = 0x04  # user verified: with a PIN or a biometric
PASSKEY_PARTS = ("credential_id", "authenticator_data", "client_data_json", "signature")


class NotApproved(Exception):
    """Nothing may run: the user did not approve it, or that cannot be proven."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def canonical(obj: Any) -> bytes:
    # Duplicated on purpose in the server's consent/signing.py (independent packages).
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def call_arguments_sha256(call: dict[str, Any]) -> str:
    text = call.get("input")
    input_sha256 = None if text is None else _sha256_hex(text.encode("utf-8"))
    obj = {"args": call.get("args") or {}, "input_sha256": input_sha256}
    return _sha256_hex(canonical(obj))


def prepare_arguments_sha256(archive_sha256: str, prepare: str) -> str:
    obj = {"archive_sha256": archive_sha256, "prepare": prepare}
    return _sha256_hex(canonical(obj))


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The pinned key; ValueError with a readable reason when it is unusable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror}")
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{path} holds a private key; pin the server's public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not a PEM public key")
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(
            f"{path} is not an Ed25519 key (the server signs approvals with Ed25519)"
        )
    return key


def verify(
    approval: dict[str, Any],
    expected: dict[str, Any],
    public_key: Ed25519PublicKey,
    now: float | None = None,
) -> dict[str, Any]:
    """The signed statement when it approves exactly `expected`, else NotApproved.

    The signature is checked first: until then no field of the statement is
    worth reading.
    """
    statement = _signed_statement(approval, public_key)
    return _approves(statement, expected, now)


def verify_passkey(
    approval: dict[str, Any],
    expected: dict[str, Any],
    pin: PasskeyPin,
    now: float | None = None,
) -> dict[str, Any]:
    """As `verify`, but the statement must be what the pinned passkey signed.

    A server signature, present or not, counts for nothing here.
    """
    statement = _passkey_statement(approval, pin)
    return _approves(statement, expected, now)


def _approves(
    statement: dict[str, Any], expected: dict[str, Any], now: float | None
) -> dict[str, Any]:
    version = statement.get("v")
    if type(version) is not int or version != 1:
        raise NotApproved(f"statement version {version!r} is not supported")
    # Exactly the fields the server makes: a field this agent does not know
    # could carry a meaning it never checked.
    if set(statement) != STATEMENT_FIELDS:
        odd = sorted(set(statement) ^ STATEMENT_FIELDS)
        raise NotApproved(f"the statement's fields are not the expected ones: {odd}")
    if statement.get("decision") != "approved":
        raise NotApproved(f"the statement's decision is {statement.get('decision')!r}")
    for name in CHECKED_FIELDS:
        if statement.get(name) != expected[name]:
            raise NotApproved(f"the approval's {name} is not the one asked for")
    expires_at = _timestamp(statement.get("expires_at"))
    if (time.time() if now is None else now) >= expires_at:
        raise NotApproved(f"the approval expired at {statement['expires_at']}")
    return statement


def _signed_statement(
    approval: dict[str, Any], public_key: Ed25519PublicKey
) -> dict[str, Any]:
    if not isinstance(approval, dict):
        raise NotApproved("the approval is missing")
    statement, signature = approval.get("statement"), approval.get("signature")
    if not isinstance(statement, dict):
        raise NotApproved("the approval has no statement")
    if not signature:
        raise NotApproved("the approval is not signed")
    if not isinstance(signature, str) or not SIGNATURE.fullmatch(signature):
        raise NotApproved("the approval's signature is garbled")
    try:
        raw = base64.urlsafe_b64decode(signature + "==")
        public_key.verify(raw, DOMAIN + canonical(statement))
    except (binascii.Error, InvalidSignature, ValueError, TypeError):
        # TypeError/ValueError: a statement that is not plain JSON data cannot
        # have been signed by the server either.
        raise NotApproved("the signature is not valid under the pinned key")
    return statement


class PasskeyPin:
    """What the agent pins of the user's passkey: its key, RP id and origin."""

    def __init__(self, public_key: ec.EllipticCurvePublicKey, rp_id: str, origin: str):
        self.public_key = public_key
        self.rp_id_hash = hashlib.sha256(rp_id.encode("utf-8")).digest()
        self.origin = origin


def load_passkey_key(path: Path) -> ec.EllipticCurvePublicKey:
    """The pinned passkey key (SPKI PEM, P-256); ValueError when unusable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror}")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not a PEM public key")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise ValueError(f"{path} is not a P-256 key (passkeys sign with ES256)")
    return key


def statement_challenge(statement: dict[str, Any]) -> bytes:
    """The WebAuthn challenge that stands for `statement` (server: consent.passkeys)."""
    return hashlib.sha256(DOMAIN + canonical(statement)).digest()


def _passkey_statement(approval: dict[str, Any], pin: PasskeyPin) -> dict[str, Any]:
    if not isinstance(approval, dict):
        raise NotApproved("the approval is missing")
    statement, assertion = approval.get("statement"), approval.get("passkey")
    if not isinstance(statement, dict):
        raise NotApproved("the approval has no statement")
    if not isinstance(assertion, dict):
        raise NotApproved("the approval is not signed with a passkey")
    parts = {name: _b64decode(assertion.get(name), name) for name in PASSKEY_PARTS}
    auth_data, client_json = parts["authenticator_data"], parts["client_data_json"]
    # The signature first: until it holds, nothing in the assertion is worth
    # reading (and what it reports would only help a forger).
    try:
        pin.public_key.verify(
            parts["signature"],
            auth_data + hashlib.sha256(client_json).digest(),
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, ValueError):
        raise NotApproved("the passkey signature is not valid under the pinned key")
    _check_client_data(client_json, statement, pin)
    _check_authenticator_data(auth_data, pin)
    return statement


def _check_client_data(
    client_json: bytes, statement: dict[str, Any], pin: PasskeyPin
) -> None:
    try:
        client_data = json.loads(client_json)
    except (UnicodeDecodeError, ValueError):
        raise NotApproved("the passkey's clientDataJSON is not JSON")
    if not isinstance(client_data, dict):
        raise NotApproved("the passkey's clientDataJSON is not an object")
    if client_data.get("type") != "webauthn.get":
        raise NotApproved("the passkey's clientDataJSON type is not webauthn.get")
    try:
        challenge = statement_challenge(statement)
    except (TypeError, ValueError):
        raise NotApproved("the statement is not plain JSON data")
    if client_data.get("challenge") != _b64encode(challenge):
        raise NotApproved("the passkey signed another statement (challenge differs)")
    # The web UI is never framed: a ceremony inside another site's frame is
    # no approval of the user's.
    if client_data.get("crossOrigin") is True or "topOrigin" in client_data:
        raise NotApproved("the passkey was used inside a cross-origin frame")
    if client_data.get("origin") != pin.origin:
        raise NotApproved(
            f"the passkey was used on origin {client_data.get('origin')!r}, "
            f"not the pinned {pin.origin!r}"
        )


def _check_authenticator_data(auth_data: bytes, pin: PasskeyPin) -> None:
    if len(auth_data) < AUTH_DATA_MIN:
        raise NotApproved("the passkey's authenticatorData is too short")
    if auth_data[:32] != pin.rp_id_hash:
        raise NotApproved("the passkey's rpIdHash is not that of the pinned rp_id")
    flags = auth_data[32]
    if not flags & FLAG_UP:
        raise NotApproved("the passkey's user-present (UP) flag is not set")
    if not flags & FLAG_UV:
        raise NotApproved("the passkey's user-verified (UV) flag is not set")


def _b64decode(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not value or not B64URL.fullmatch(value):
        raise NotApproved(f"the passkey assertion's {name} is missing or garbled")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise NotApproved(f"the passkey assertion's {name} is garbled")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _timestamp(value: Any) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, TIME_FORMAT)))
    except (TypeError, ValueError):
        raise NotApproved(f"the approval's expires_at {value!r} is not a UTC time")
