"""Issuing and checking API tokens.

A token reads `hpcsera_<prefix>_<secret>`: the kind is visible to secret
scanners and people, the 12-hex-digit prefix finds the row, and only the
SHA-256 digest of the whole token is stored and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from hpcsera.errors import BadInput, NotAuthenticated
from tokens import roles as role_names
from tokens.audit import security_event_record
from tokens.models import SecurityEvent, Token

KIND = "hpcsera_"
PREFIX_HEX = 12
TOKEN_SHAPE = re.compile(rf"{KIND}([0-9a-f]{{{PREFIX_HEX}}})_[A-Za-z0-9_-]{{20,100}}")
# Writing last_used_at on every request would make each read a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class IssuedToken:
    token: Token
    secret: str

    @property
    def callback_secret(self) -> str:
        """What callbacks of this token's submissions are signed with."""
        from jobs.callbacks import callback_secret

        return callback_secret(self.token.id)


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def lifetime_caps() -> dict[str, int]:
    caps = dict(role_names.DEFAULT_LIFETIME_CAPS)
    caps.update(settings.HPCSERA.get("ROLE_LIFETIME_CAPS", {}))
    return caps


@transaction.atomic
def token_issue(
    *,
    user: AbstractBaseUser,
    tag: str,
    roles: list[str] | tuple[str, ...] | frozenset[str],
    lifetime_seconds: int | None = None,
    name: str = "",
    request: object = None,
) -> IssuedToken:
    try:
        role_set = role_names.parse_roles(roles)
    except ValueError as exc:
        raise BadInput(str(exc), code="invalid_roles")
    if not role_names.valid_tag(tag):
        raise BadInput(
            "A tag is 1 to 63 characters of a-z, 0-9, _ and -, starting with a "
            "letter or digit.",
            code="invalid_tag",
        )
    if len(name) > 100:
        raise BadInput("A token name is at most 100 characters.", code="invalid_name")
    cap = role_names.lifetime_cap(role_set, lifetime_caps())
    if lifetime_seconds is None:
        lifetime_seconds = min(cap, settings.HPCSERA["TOKEN_DEFAULT_LIFETIME_SECONDS"])
    if lifetime_seconds <= 0 or lifetime_seconds > cap:
        raise BadInput(
            f"The lifetime must be between 1 and {cap} seconds for these roles.",
            code="invalid_lifetime",
            max_lifetime_seconds=cap,
        )

    prefix = secrets.token_hex(PREFIX_HEX // 2)
    raw = f"{KIND}{prefix}_{secrets.token_urlsafe(32)}"
    token = Token.objects.create(
        user=user,
        tag=tag,
        roles=sorted(role_set),
        name=name,
        prefix=prefix,
        digest=_digest(raw),
        expires_at=timezone.now() + timedelta(seconds=lifetime_seconds),
    )
    security_event_record(
        user=user,
        kind=SecurityEvent.Kind.TOKEN_CREATED,
        request=request,
        prefix=prefix,
        tag=tag,
        roles=sorted(role_set),
        name=name,
    )
    return IssuedToken(token=token, secret=raw)


def token_find(raw: str) -> Token | None:
    """The token row for `raw` whatever its state, or None (constant-time check)."""
    prefix = _prefix_of(raw)
    token = (
        Token.objects.select_related("user").filter(prefix=prefix).first()
        if prefix
        else None
    )
    expected = token.digest if token else _digest("")
    if not hmac.compare_digest(expected, _digest(raw)) or token is None:
        return None
    return token


def token_authenticate(raw: str) -> Token:
    """The live token for `raw`, or NotAuthenticated saying why not."""
    token = token_find(raw)
    if token is None:
        raise NotAuthenticated("The token is not valid.", code="invalid_token")
    if token.is_revoked:
        raise NotAuthenticated("The token was revoked.", code="token_revoked")
    now = timezone.now()
    if token.is_expired(now):
        raise NotAuthenticated("The token has expired.", code="token_expired")
    if not token.user.is_active:
        raise NotAuthenticated("The token's user is disabled.", code="user_inactive")
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        Token.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def token_still_live(token: object) -> None:
    """For requests that wait: revocation and expiry count while they wait too.

    Raises NotAuthenticated when the token stopped being valid since the
    request began. A web session (not a Token) is checked by its middleware.
    """
    if not isinstance(token, Token):
        return
    live = Token.objects.filter(
        pk=token.pk,
        revoked_at__isnull=True,
        expires_at__gt=timezone.now(),
        user__is_active=True,
    ).exists()
    if not live:
        raise NotAuthenticated(
            "The token was revoked or expired while the request waited.",
            code="token_revoked",
        )


def token_revoke(*, token: Token, request: object = None) -> bool:
    """Revoke `token`; True if this call revoked it (False: it already was)."""
    revoked = Token.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if revoked:
        security_event_record(
            user=token.user,
            kind=SecurityEvent.Kind.TOKEN_REVOKED,
            request=request,
            prefix=token.prefix,
            tag=token.tag,
        )
    return bool(revoked)


def _prefix_of(raw: str) -> str | None:
    match = TOKEN_SHAPE.fullmatch(raw)
    return match.group(1) if match else None
