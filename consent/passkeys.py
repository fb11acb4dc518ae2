"""Passkeys: the user's own authenticator signs run approvals.

With a passkey, the approval statement (consent.approvals._statement) is not
signed with the server's key: its SHA-256, behind the same domain prefix, is
the WebAuthn challenge, and the user's authenticator signs it. Agents that pin
the passkey's public key ([consent] verify = "passkey") then need nothing from
the server's keys, so the server cannot approve on the user's behalf.

fido2 checks registrations and assertions here; the agent checks the stored
assertion again with its own code (hpcsera_agent.approval.verify_passkey).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone
from fido2.cose import ES256
from fido2.server import Fido2Server
from fido2.webauthn import (
    Aaguid,
    AttestedCredentialData,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialType,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from consent import signing
from consent.approvals import _statement, approval_channel
from consent.models import Passkey, RunApproval
from hpcsera.errors import BadInput, Conflict, NotFound
from hpcsera.notify import publish_on_commit
from tokens.audit import security_event_record
from tokens.models import SecurityEvent

logger = logging.getLogger(__name__)

REGISTRATION_KEY = "hpcsera_passkey_registration"
ASSERTION_PARTS = (
    "credential_id",
    "authenticator_data",
    "client_data_json",
    "signature",
)
# The WebAuthn ceremony is seconds of the user's time; a statement prepared
# longer ago than this is not signed any more (prepare again).
PREPARED_SECONDS = 300


def relying_party(request: HttpRequest) -> tuple[str, str]:
    """(rp id, origin) as configured, else those of the host serving the UI."""
    rp_id = settings.HPCSERA["WEBAUTHN_RP_ID"] or request.get_host().rsplit(":", 1)[0]
    origin = settings.HPCSERA["WEBAUTHN_ORIGIN"] or (
        f"{request.scheme}://{request.get_host()}"
    )
    return rp_id.strip("[]"), origin.rstrip("/")


def _server(request: HttpRequest) -> Fido2Server:
    rp_id, origin = relying_party(request)
    server = Fido2Server(
        PublicKeyCredentialRpEntity(name="HPCSerA", id=rp_id),
        # The exact origin, as the agent checks it, not any origin under rp_id.
        verify_origin=lambda seen: seen == origin,
    )
    # ES256 only: the agent verifies P-256 signatures and nothing else.
    server.allowed_algorithms = [
        PublicKeyCredentialParameters(type=PublicKeyCredentialType.PUBLIC_KEY, alg=-7)
    ]
    return server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: Any, name: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise BadInput(f"{name} is missing.", code="invalid_assertion")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadInput(f"{name} is not base64url.", code="invalid_assertion")


def _descriptors(user) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(
            type=PublicKeyCredentialType.PUBLIC_KEY,
            id=_b64url_decode(passkey.credential_id, "credential_id"),
        )
        for passkey in Passkey.objects.filter(user=user)
    ]


def passkey_register_begin(*, user, request: HttpRequest) -> dict[str, Any]:
    """Creation options for navigator.credentials.create (JSON form)."""
    options, state = _server(request).register_begin(
        {
            "id": str(user.pk).encode(),
            "name": user.get_username(),
            "displayName": user.get_username(),
        },
        credentials=_descriptors(user),
        resident_key_requirement=ResidentKeyRequirement.PREFERRED,
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    request.session[REGISTRATION_KEY] = state
    return dict(options)["publicKey"]


def passkey_register_complete(
    *, user, request: HttpRequest, response: dict[str, Any], name: str
) -> Passkey:
    state = request.session.pop(REGISTRATION_KEY, None)
    if state is None:
        raise Conflict("No passkey registration was started.", code="not_started")
    name = name.strip()[:100] or "passkey"
    try:
        auth_data = _server(request).register_complete(state, response)
    except (ValueError, KeyError, TypeError) as exc:
        # fido2's messages name the failed check, never key material.
        raise BadInput(f"The passkey was not accepted: {exc}", code="invalid_passkey")
    credential = auth_data.credential_data
    if credential is None or not isinstance(credential.public_key, ES256):
        raise BadInput("Only ES256 (P-256) passkeys are accepted.", code="not_es256")
    pem = _spki_pem(credential.public_key)
    credential_id = _b64url(credential.credential_id)
    try:
        # The unique credential id settles two registrations of one passkey.
        with transaction.atomic():
            passkey = Passkey.objects.create(
                user=user,
                credential_id=credential_id,
                public_key=pem,
                rp_id=relying_party(request)[0],
                name=name,
                sign_count=auth_data.counter,
            )
    except IntegrityError:
        raise Conflict("This passkey is registered already.", code="duplicate")
    security_event_record(
        user=user,
        kind=SecurityEvent.Kind.PASSKEY_ADDED,
        request=request,
        passkey_id=str(passkey.id),
        name=passkey.name,
    )
    logger.info("%s passkey added by %s", passkey.id, user.pk)
    return passkey


def _spki_pem(cose: ES256) -> str:
    # COSE EC2 key: -1 curve (1 = P-256), -2 x, -3 y.
    if cose.get(-1) != 1:
        raise BadInput("Only ES256 (P-256) passkeys are accepted.", code="not_es256")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(cose[-2], "big"), int.from_bytes(cose[-3], "big"), ec.SECP256R1()
    )
    try:
        key = numbers.public_key()
    except ValueError:
        raise BadInput("The passkey's key is not a P-256 point.", code="not_es256")
    return key.public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")


def passkey_remove(*, passkey: Passkey, request: HttpRequest) -> None:
    security_event_record(
        user=passkey.user,
        kind=SecurityEvent.Kind.PASSKEY_REMOVED,
        request=request,
        passkey_id=str(passkey.id),
        name=passkey.name,
    )
    passkey.delete()


def run_approval_prepare(
    *, approval: RunApproval, user, request: HttpRequest
) -> dict[str, Any]:
    """The statement to sign with a passkey, fixed now, and its challenge.

    Preparing again replaces the earlier statement: only the latest one can
    be completed, and each only once.
    """
    now = timezone.now()
    _pending_for(approval, user, now)
    if not Passkey.objects.filter(user=user).exists():
        raise Conflict("Add a passkey first (Passkeys page).", code="no_passkey")
    statement = _statement(approval, user, now)
    challenge = _b64url(_challenge(statement))
    changed = RunApproval.objects.filter(
        pk=approval.pk, state=RunApproval.State.PENDING
    ).update(prepared=statement, prepared_challenge=challenge)
    if not changed:
        raise Conflict("This request was decided meanwhile.", code="decided")
    rp_id, _ = relying_party(request)
    return {
        "statement": statement,
        "challenge": challenge,
        "rp_id": rp_id,
        "allow_credentials": [
            p.credential_id for p in Passkey.objects.filter(user=user)
        ],
    }


def _challenge(statement: dict[str, Any]) -> bytes:
    # The same bytes the server's Ed25519 key would sign, hashed to fit a
    # challenge; the agent recomputes them (approval.statement_challenge).
    return hashlib.sha256(signing.DOMAIN + signing.canonical(statement)).digest()


def _pending_for(approval: RunApproval, user, now) -> None:
    if approval.user_id != user.pk:
        raise NotFound("No such approval request.")
    if approval.state != RunApproval.State.PENDING:
        raise Conflict(f"This request is already {approval.state}.", code="decided")
    if approval.is_expired(now):
        raise Conflict("This request expired before it was decided.", code="expired")


def run_approval_passkey_decide(
    *,
    approval: RunApproval,
    user,
    assertion: dict[str, Any],
    request: HttpRequest,
    recent_login: bool = False,
) -> RunApproval:
    """Approve with the passkey's assertion over the prepared statement.

    The server's own signature is added only with a recent login: agents that
    pin the server key expect that rule, and a passkey registered from a
    stolen session must not stretch it."""
    now = timezone.now()
    _pending_for(approval, user, now)
    statement, challenge = approval.prepared, approval.prepared_challenge
    if not statement or not challenge:
        raise Conflict("No statement was prepared for a passkey.", code="not_prepared")
    approved_at = approval.prepared.get("approved_at", "")
    if _too_old(approved_at, now):
        raise Conflict("The prepared statement is stale; try again.", code="stale")
    parts = {name: assertion.get(name) for name in ASSERTION_PARTS}
    passkey = Passkey.objects.filter(
        user=user, credential_id=parts["credential_id"] or ""
    ).first()
    if passkey is None:
        raise BadInput("That passkey is not one of yours.", code="unknown_passkey")
    counter = _assertion_verify(request, passkey, parts, challenge)

    signature = signing.statement_sign(statement)["signature"] if recent_login else ""
    with transaction.atomic():
        # Single use: only this prepared statement of a pending request.
        changed = RunApproval.objects.filter(
            pk=approval.pk,
            state=RunApproval.State.PENDING,
            expires_at__gt=now,
            prepared_challenge=challenge,
        ).update(
            state=RunApproval.State.APPROVED,
            decided_at=now,
            decided_by=user.get_username(),
            statement=statement,
            # Besides the passkey: agents that pin the server's key accept it
            # too; agents that pin the passkey ignore this signature.
            signature=signature,
            passkey={name: parts[name] for name in ASSERTION_PARTS},
            prepared=None,
            prepared_challenge="",
        )
        if not changed:
            raise Conflict("This request was decided meanwhile.", code="decided")
        # Conditional on the count read: two approvals at once cannot both
        # move it, so a clone racing the original is noticed.
        moved = Passkey.objects.filter(
            pk=passkey.pk, sign_count=passkey.sign_count
        ).update(sign_count=counter, last_used_at=now)
        if not moved:
            raise Conflict("The passkey was used meanwhile; try again.", code="counter")
    security_event_record(
        user=user,
        kind=SecurityEvent.Kind.RUN_APPROVED,
        request=request,
        approval_id=str(approval.id),
        function=approval.function,
        site=approval.agent.site,
        passkey_id=str(passkey.id),
    )
    publish_on_commit(approval_channel(approval.id))
    approval.refresh_from_db()
    return approval


def _too_old(approved_at: str, now) -> bool:
    try:
        moment = datetime.strptime(approved_at, "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return True
    moment = moment.replace(tzinfo=dt_timezone.utc)
    return now - moment > timedelta(seconds=PREPARED_SECONDS)


def _refuse_framed(client_data_json: str) -> None:
    """The UI is never framed (X-Frame-Options: DENY): a ceremony inside
    another site's frame is refused here as by the agent."""
    try:
        client_data = json.loads(_b64url_decode(client_data_json, "client_data_json"))
    except ValueError:
        raise BadInput("clientDataJSON is not JSON.", code="bad_assertion")
    if not isinstance(client_data, dict):
        raise BadInput("clientDataJSON is not an object.", code="bad_assertion")
    if client_data.get("crossOrigin") is True or "topOrigin" in client_data:
        raise BadInput(
            "The passkey was used inside a cross-origin frame.", code="bad_assertion"
        )


def _assertion_verify(
    request: HttpRequest, passkey: Passkey, parts: dict[str, Any], challenge: str
) -> int:
    """fido2's checks of the assertion; the authenticator's new sign count."""
    raw_id = _b64url_decode(parts["credential_id"], "credential_id")
    for name in ASSERTION_PARTS[1:]:
        _b64url_decode(parts[name], name)
    key = serialization.load_pem_public_key(passkey.public_key.encode("ascii"))
    credential = AttestedCredentialData.create(
        Aaguid.NONE, raw_id, ES256.from_cryptography_key(key)
    )
    response = {
        "id": parts["credential_id"],
        "rawId": parts["credential_id"],
        "type": "public-key",
        "response": {
            "clientDataJSON": parts["client_data_json"],
            "authenticatorData": parts["authenticator_data"],
            "signature": parts["signature"],
        },
    }
    state = {
        "challenge": challenge,
        "user_verification": UserVerificationRequirement.REQUIRED,
    }
    _refuse_framed(parts["client_data_json"])
    server = _server(request)
    try:
        server.authenticate_complete(state, [credential], response)
        counter = _counter(parts["authenticator_data"])
    except (ValueError, KeyError, TypeError) as exc:
        logger.info("%s passkey assertion refused: %s", passkey.id, exc)
        raise BadInput(f"The passkey's answer was refused: {exc}", code="bad_assertion")
    # A counter that does not grow hints at a cloned authenticator; many
    # passkeys always report 0, which is allowed.
    # WebAuthn: once either counter is non-zero, the new one must be larger.
    if (counter or passkey.sign_count) and counter <= passkey.sign_count:
        raise BadInput("The passkey's counter went back.", code="counter")
    return counter


def _counter(authenticator_data: str) -> int:
    data = _b64url_decode(authenticator_data, "authenticator_data")
    if len(data) < 37:
        raise ValueError("authenticatorData is too short")
    return int.from_bytes(data[33:37], "big")
