"""GET /api/v1/capabilities: what this server is, allows and limits.

Open to every valid token whatever its roles (a token with none of the roles
an operation needs still learns why); without a token it is a 401 like the
rest of the API, so nothing about a deployment is shown to strangers. The
answer also tells the token who it is (user, tag, roles, expiry), which is how
clients find their FaaS namespace.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hpcsera.schema import ROLE_HELP
from jobs import openapi
from tokens import roles
from tokens.models import Token
from tokens.services import lifetime_caps

API_VERSION = "v1"
LIMITS = {
    "max_body_bytes": "MAX_BODY_BYTES",
    "max_args": "MAX_ARGS",
    "max_arg_value_chars": "MAX_ARG_VALUE_CHARS",
    "max_output_bytes": "MAX_OUTPUT_BYTES",
    "sync_wait_seconds": "SYNC_WAIT_SECONDS",
    "claim_wait_seconds": "CLAIM_WAIT_SECONDS",
    "claim_max_calls": "CLAIM_MAX_CALLS",
    "lease_seconds": "LEASE_SECONDS",
}
# What a client may rely on. The parts still being built say `false`, so an
# SDK can tell its user plainly instead of failing with a 404.
FEATURES = {
    "sync_calls": True,
    "async_calls": True,
    "job_documents": True,
    "cancellation": True,
    "virtual_calls": True,
    "leases": True,
    "decoupled_login": True,
    "callbacks": True,
    "token_listing": False,
}


class Capabilities(serializers.Serializer):
    server = serializers.CharField()
    version = serializers.CharField()
    api_version = serializers.CharField()
    token = serializers.DictField()
    roles = serializers.ListField(child=serializers.DictField())
    limits = serializers.DictField()
    features = serializers.DictField(child=serializers.BooleanField())


def _principal(auth: Any) -> dict[str, Any]:
    expires = auth.expires_at.isoformat() if isinstance(auth, Token) else None
    return {
        "user": auth.user.get_username(),
        "tag": auth.tag,
        "roles": sorted(auth.role_set),
        "expires_at": expires,
    }


def _roles() -> list[dict[str, Any]]:
    caps = lifetime_caps()
    return [
        {"name": name, "allows": ROLE_HELP[name], "max_lifetime_seconds": caps[name]}
        for name in roles.ALL_ROLES
    ]


class CapabilitiesView(APIView):
    required_roles: dict[str, set[str]] = {"GET": set()}

    @extend_schema(
        operation_id="capabilities",
        responses={200: Capabilities, **openapi.errors()},
    )
    def get(self, request: Request) -> Response:
        return Response(
            {
                "server": "hpcsera",
                "version": settings.SPECTACULAR_SETTINGS["VERSION"],
                "api_version": API_VERSION,
                "token": _principal(request.auth),
                "roles": _roles(),
                "limits": {k: settings.HPCSERA[v] for k, v in LIMITS.items()},
                "features": FEATURES,
            }
        )
