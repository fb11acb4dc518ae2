"""Checking the server's signed word that the user approved one run.

The agent trusts an approval only through the public key pinned in its own
config ([consent] public_key_file), never through anything the server says
besides the signature: a server (or token) in the wrong hands can then still
lease calls, but cannot make them run without the user's signed consent.
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
from cryptography.hazmat.primitives import serialization
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
SIGNATURE = re.compile(r"[A-Za-z0-9_-]{86}")  # 64 bytes, base64url without padding
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


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
    version = statement.get("v")
    if version != 1 or isinstance(version, bool):
        raise NotApproved(f"statement version {version!r} is not supported")
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


def _timestamp(value: Any) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, TIME_FORMAT)))
    except (TypeError, ValueError):
        raise NotApproved(f"the approval's expires_at {value!r} is not a UTC time")
