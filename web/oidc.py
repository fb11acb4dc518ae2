"""Login through the institution's OpenID provider (mozilla-django-oidc).

On top of the library's signature and nonce checks, the ID token's issuer and
audience are checked here, and users are mapped by issuer and subject.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from django.db import IntegrityError, transaction
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationRequestView

from web.models import OidcIdentity
from web.recent import AUTH_TIME_KEY

logger = logging.getLogger(__name__)

USERNAME_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
# A username is a FaaS namespace at the root of the URL space: it must not be
# a path the server itself answers.
RESERVED_USERNAMES = frozenset(
    {
        "admin",
        "api",
        "ui",
        "oidc",
        "oauth",
        "static",
        "healthz",
        "well-known",
        ".well-known",
        "media",
        "login",
        "logout",
    }
)


class IdentityBackend(OIDCAuthenticationBackend):
    def get_user(self, user_id):
        # Checked on every request of a session: a disabled account is out at
        # once, not when its session expires.
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None

    def verify_token(self, token: str, **kwargs: Any) -> dict:
        payload = super().verify_token(token, **kwargs)
        issuer = settings.OIDC_OP_ISSUER
        if not issuer or payload.get("iss") != issuer:
            raise SuspiciousOperation("ID token from an unexpected issuer")
        audience = payload.get("aud")
        audiences = [audience] if isinstance(audience, str) else list(audience or [])
        client_id = settings.OIDC_RP_CLIENT_ID
        if client_id not in audiences:
            raise SuspiciousOperation("ID token for another audience")
        if len(audiences) > 1 and payload.get("azp") != client_id:
            raise SuspiciousOperation("ID token authorized for another party")
        if not payload.get("sub"):
            raise SuspiciousOperation("ID token without a subject")
        # When the person last proved who they are at the provider, which may
        # be long before this login (a remembered session there): approving
        # code needs that to be recent, not this callback (web.recent).
        auth_time = payload.get("auth_time")
        request = getattr(self, "request", None)
        if request is not None and isinstance(auth_time, (int, float)):
            request.session[AUTH_TIME_KEY] = int(auth_time)
        return payload

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict):
        claims = self.get_userinfo(access_token, id_token, payload)
        if claims.get("sub") != payload["sub"]:
            # OpenID Connect Core 5.3.2: userinfo must describe the same subject.
            raise SuspiciousOperation("userinfo subject differs from the ID token")
        identity = (
            OidcIdentity.objects.select_related("user")
            .filter(issuer=payload["iss"], subject=payload["sub"])
            .first()
        )
        if identity is not None:
            return identity.user if identity.user.is_active else None
        if not self.get_settings("OIDC_CREATE_USER", True):
            return None
        return self._create(payload["iss"], payload["sub"], claims)

    def _create(self, issuer: str, subject: str, claims: dict):
        User = get_user_model()
        base = _username_from(claims, subject)
        for attempt in range(50):
            username = base if attempt == 0 else f"{base[:60]}-{attempt + 1}"
            # Names differing only in case would be easy to mistake for
            # each other in URLs.
            if User.objects.filter(username__iexact=username).exists():
                continue
            try:
                with transaction.atomic():
                    user = User.objects.create_user(
                        username, email=claims.get("email", "")
                    )
                    OidcIdentity.objects.create(
                        user=user, issuer=issuer, subject=subject
                    )
                logger.info("%s created from an OIDC login", user.pk)
                return user
            except IntegrityError:
                continue
        raise SuspiciousOperation("no free username for this identity")


def _username_from(claims: dict, subject: str) -> str:
    """A URL-safe username: it is the user's FaaS namespace."""
    wanted = claims.get("preferred_username") or claims.get("email", "").split("@")[0]
    cleaned = USERNAME_SAFE.sub("", str(wanted))[:64].strip(".")
    if cleaned.lower() in RESERVED_USERNAMES:
        cleaned = f"{cleaned}-user"
    return cleaned or "user-" + USERNAME_SAFE.sub("", subject)[:32]


class AuthenticationRequestView(OIDCAuthenticationRequestView):
    """Starts the SSO login; `?prompt=login` asks the provider for a fresh one
    (web.recent: approving code needs a recent login, not a remembered one)."""

    def get_extra_params(self, request):
        params = dict(super().get_extra_params(request) or {})
        if request.GET.get("prompt") == "login":
            # Both: providers differ in which one they honour.
            params.update(prompt="login", max_age="0")
        return params
