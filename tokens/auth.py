"""DRF glue: Bearer authentication and the one place where roles are enforced.

Every API view declares `required_roles`, a mapping from HTTP method to the
roles that method needs. A method a view does not declare is refused, so a
new endpoint cannot forget its roles and end up open.
"""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from hpcsera.errors import Forbidden, NotAuthenticated
from tokens.models import Token
from tokens.services import token_authenticate


class BearerTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):  # noqa: ANN001, ANN201
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

    def authenticate_header(self, request) -> str:  # noqa: ANN001
        return 'Bearer realm="hpcsera"'


def required_roles(view: object, method: str) -> frozenset[str] | None:
    declared = getattr(view, "required_roles", None) or {}
    if method == "HEAD":
        method = "GET"
    roles = declared.get(method)
    return frozenset(roles) if roles is not None else None


class RolePermission(BasePermission):
    def has_permission(self, request, view) -> bool:  # noqa: ANN001
        token = request.auth
        if not isinstance(token, Token):
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
