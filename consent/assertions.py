"""Client authentication by signed assertion (RFC 7523, `private_key_jwt`).

The assertion must be issued by the client about itself (`iss` = `sub` =
client id), for this server only (`aud` = its issuer), short-lived (`exp` at
most five minutes ahead) and used once (`jti`, recorded until it expires, so a
replay is refused by any server process). There is no fallback to a shared
secret.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import jwt
from django.db import IntegrityError, transaction
from django.utils import timezone

from consent.keys import ALGORITHMS, allowed_algorithms
from consent.models import Client, UsedAssertion
from consent.oauth import OAuthError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME = timedelta(minutes=5)
LEEWAY_SECONDS = 30


def authenticate_client(params: dict, issuer: str) -> Client:
    if (
        "client_secret" in params
        or params.get("client_assertion_type") != ASSERTION_TYPE
    ):
        raise OAuthError(
            "invalid_client",
            "Authenticate with a signed client assertion (private_key_jwt).",
            status=401,
        )
    assertion = params.get("client_assertion", "")
    client = _client_of(assertion)
    claims = _verified_claims(assertion, client, issuer)
    _use_once(client, claims)
    return client


def _client_of(assertion: str) -> Client:
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise OAuthError("invalid_client", "The client assertion is malformed.", 401)
    if header.get("alg") not in ALGORITHMS:
        raise OAuthError(
            "invalid_client", "That signing algorithm is not allowed.", 401
        )
    client = (
        Client.objects.filter(
            client_id=str(unverified.get("iss", "")), revoked_at__isnull=True
        )
        .select_related("user")
        .first()
    )
    if client is None or not client.user.is_active:
        raise OAuthError("invalid_client", "Unknown or revoked client.", 401)
    return client


def _verified_claims(assertion: str, client: Client, issuer: str) -> dict:
    try:
        claims = jwt.decode(
            assertion,
            client.public_key,
            algorithms=allowed_algorithms(client.algorithm),
            audience=issuer,
            issuer=client.client_id,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "sub", "aud", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise OAuthError("invalid_client", "The client assertion has expired.", 401)
    except jwt.InvalidAudienceError:
        raise OAuthError(
            "invalid_client", "The assertion is for another audience.", 401
        )
    except jwt.PyJWTError:
        raise OAuthError("invalid_client", "The client assertion is not valid.", 401)
    if claims["sub"] != client.client_id:
        raise OAuthError(
            "invalid_client", "The assertion's subject is not the client.", 401
        )
    expires = datetime.fromtimestamp(claims["exp"], tz=dt_timezone.utc)
    if expires - timezone.now() > MAX_LIFETIME:
        raise OAuthError(
            "invalid_client", "The assertion lives too long (5 min at most).", 401
        )
    return claims


def _use_once(client: Client, claims: dict) -> None:
    expires = datetime.fromtimestamp(claims["exp"], tz=dt_timezone.utc)
    try:
        with transaction.atomic():
            UsedAssertion.objects.create(
                client=client,
                jti=str(claims["jti"])[:255],
                expires_at=expires + timedelta(seconds=LEEWAY_SECONDS),
            )
    except IntegrityError:
        raise OAuthError("invalid_client", "The client assertion was used before.", 401)
    # Forget assertions that can no longer be replayed anyway.
    UsedAssertion.objects.filter(client=client, expires_at__lt=timezone.now()).delete()
