"""DRF glue: Bearer authentication and the one place where roles are enforced.

Every API view declares `required_roles`, a mapping from HTTP method to the
roles that method needs. A method a view does not declare is refused, so a
new endpoint cannot forget its roles and end up open.
"""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.permissions import BasePermission

from hpcsera.errors import Forbidden, NotAuthenticated
from tokens import roles
from tokens.models import Token
from tokens.services import token_authenticate

SESSION_TAG_KEY = "hpcsera_tag"
DEFAULT_TAG = "default"


@dataclass(frozen=True)
class SessionPrincipal:
    """A person logged into the web UI, browsing the API in one tag.

    It stands where a token stands, so selectors fence it the same way. It may
    only read: anything that changes state or runs code takes a token, whose
    roles the user chose on purpose.
    """

    user_id: int
    user: object
    tag: str
    role_set: frozenset = frozenset({roles.GET_JOB_STATUS})


class ReadOnlySessionAuthentication(SessionAuthentication):
    def authenticate(self, request):
        found = super().authenticate(request)
        if found is None:
            return None
        user, _ = found
        tag = request.session.get(SESSION_TAG_KEY, DEFAULT_TAG)
        return (user, SessionPrincipal(user_id=user.pk, user=user, tag=tag))


class BearerTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise NotAuthenticated(
                "Send the token as 'Authorization: Bearer <token>'.",
                code="invalid_token",
            )
        token = token_authenticate(value.strip())
        return (token.user, token)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="hpcsera"'


def required_roles(view: object, method: str) -> frozenset[str] | None:
    declared = getattr(view, "required_roles", None) or {}
    if method == "HEAD":
        method = "GET"
    roles = declared.get(method)
    return frozenset(roles) if roles is not None else None


class RolePermission(BasePermission):
    def has_permission(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, (Token, SessionPrincipal)):
            raise NotAuthenticated(
                "This endpoint needs 'Authorization: Bearer <token>'.",
                code="not_authenticated",
            )
        if request.method == "OPTIONS" or not hasattr(view, request.method.lower()):
            return True  # DRF answers a method the view lacks with 405.
        needed = required_roles(view, request.method)
        if needed is None:
            # A handled method without declared roles is a coding error: fail
            # closed rather than open.
            raise Forbidden("This operation is not open to tokens.", code="forbidden")
        missing = needed - token.role_set
        if missing:
            raise Forbidden(
                "The token lacks the role(s) this operation needs.",
                code="missing_role",
                required_roles=sorted(needed),
                missing_roles=sorted(missing),
            )
        return True
