"""The server's signature on a run approval, checked by agents with a pinned key.

The Ed25519 signing key lives in a PEM file (HPCSERA_APPROVAL_KEY_FILE), never
in the database: a copy of the database must not be enough to forge consent.
Outside production, without the setting, a development key is made once under
var/. The agent verifies with hpcsera_agent.approval; both sides must compute
`canonical` and the hashes byte for byte alike.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

# Prefixed so that a signature made for an approval can never be passed off as
# a signature over some other kind of message signed with the same key.
DOMAIN = b"hpcsera-approval-v1\n"
STATEMENT_FIELDS = frozenset(
    {
        "v",
        "approval_id",
        "decision",
        "purpose",
        "subject_id",
        "agent_id",
        "site",
        "function",
        "executable_sha256",
        "arguments_sha256",
        "nonce",
        "approved_by",
        "approved_at",
        "expires_at",
    }
)
DEV_KEY_NAME = "approval-key.pem"


def canonical(obj: Any) -> bytes:
    # Duplicated on purpose in hpcsera_agent/approval.py: the packages are independent.
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def arguments_sha256_for_call(args: dict[str, Any], input: str | None) -> str:
    input_sha256 = None if input is None else _sha256_hex(input.encode("utf-8"))
    return _sha256_hex(canonical({"args": args, "input_sha256": input_sha256}))


def arguments_sha256_for_prepare(archive_sha256: str, prepare: str) -> str:
    obj = {"archive_sha256": archive_sha256, "prepare": prepare}
    return _sha256_hex(canonical(obj))


def statement_sign(statement: dict[str, Any]) -> dict[str, Any]:
    """{"statement", "signature"} as the agent API hands it to the agent."""
    fields = set(statement)
    if fields != STATEMENT_FIELDS:
        # A programming error, not user input: an agent would refuse the
        # approval anyway, but a signature over a partial statement must not
        # exist at all.
        missing = sorted(STATEMENT_FIELDS - fields)
        extra = sorted(fields - STATEMENT_FIELDS)
        raise ValueError(f"statement fields: missing {missing}, unexpected {extra}")
    if statement["v"] != 1 or statement["decision"] != "approved":
        raise ValueError("only a version 1 statement of an approval is signed")
    signature = _signing_key().sign(DOMAIN + canonical(statement))
    return {"statement": dict(statement), "signature": _b64url(signature)}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def approval_public_pem() -> str:
    """The public key agents pin (`public_key_file` in their [consent] table)."""
    return public_pem(_signing_key())


def public_pem(key: ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode("ascii")
    )


def key_file_create(path: Path) -> ed25519.Ed25519PrivateKey:
    """Write a new private key to `path` (0600); FileExistsError if it exists.

    The key is written to a private temporary file first and then linked into
    place: `os.link` fails when the name exists, so two processes racing to
    make the development key end with one complete file, never a half-written
    one, and neither overwrites the other.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".approval-key-")
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp makes it 0600
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return key


def _key_path() -> Path:
    configured = settings.HPCSERA.get("APPROVAL_KEY_FILE", "")
    if configured:
        return Path(configured).expanduser()
    if settings.PRODUCTION:
        raise ImproperlyConfigured(
            "HPCSERA_APPROVAL_KEY_FILE is required in production "
            "(manage.py approval_key --create PATH makes a key)"
        )
    path = Path(settings.VAR_DIR) / DEV_KEY_NAME
    if not path.exists():
        try:
            key_file_create(path)
        except FileExistsError:
            pass  # another process made it first; its key is the one
    return path


@functools.lru_cache(maxsize=1)
def _signing_key() -> ed25519.Ed25519PrivateKey:
    # Cached per process: reading and parsing the file on every approval buys
    # nothing, and a rotated key takes effect with the next restart.
    path = _key_path()
    return load_private_key(path)


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    name = f"the approval key file {path}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImproperlyConfigured(f"{name} cannot be read: {exc.strerror}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The parser's message is not repeated: it may quote the file.
        raise ImproperlyConfigured(f"{name} is not an unencrypted PEM private key")
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ImproperlyConfigured(f"{name} must hold an Ed25519 key")
    return key


@receiver(setting_changed)
def _forget_key(*, setting: str, **kwargs: Any) -> None:
    # Tests that override the key file get the new key, not the cached one.
    if setting in ("HPCSERA", "VAR_DIR", "PRODUCTION"):
        _signing_key.cache_clear()
