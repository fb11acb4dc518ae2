"""OpenAPI: each operation's required roles appear as OAuth2 scopes."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from tokens import roles
from tokens.auth import required_roles

SCHEME = "hpcseraToken"
ROLE_HELP = {
    roles.GET_JOB_STATUS: "read jobs, calls, states and outputs",
    roles.UPDATE_JOB_STATUS: "report call states (agents); finish virtual functions",
    roles.GET_JOB: "pull ready calls (agents)",
    roles.POST_CODE: "upload new code; every use needs the user's consent",
    roles.GET_CODE: "download approved code (agents)",
    roles.POST_JOB: "create jobs and call functions",
    roles.UPDATE_JOB: "change a job that has not finished",
    roles.DELETE_JOB: "cancel or delete a job",
}


class RoleAutoSchema(AutoSchema):
    """The project's schema class; roles enter through BearerTokenScheme."""


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tokens.auth.BearerTokenAuthentication"
    name = SCHEME

    def get_security_requirement(self, auto_schema):
        needed = required_roles(auto_schema.view, auto_schema.method)
        return {SCHEME: sorted(needed or [])}

    def get_security_definition(self, auto_schema):
        return {
            "type": "oauth2",
            "description": (
                "A bearer token ('Authorization: Bearer hpcsera_...'), made in the "
                "web UI or by the decoupled login of a registered client. Its "
                "roles are the scopes below."
            ),
            # OpenAPI has no flow for the decoupled (CIBA-style) login; its
            # token endpoint is named here, the rest is in the metadata at
            # /.well-known/oauth-authorization-server.
            "flows": {
                "clientCredentials": {
                    "tokenUrl": "/oauth/token",
                    "scopes": ROLE_HELP,
                }
            },
        }


class SessionScheme(OpenApiAuthenticationExtension):
    """The web UI's session, for browsing the API read-only."""

    target_class = "tokens.auth.ReadOnlySessionAuthentication"
    name = "webSession"

    def get_security_requirement(self, auto_schema):
        needed = required_roles(auto_schema.view, auto_schema.method) or set()
        # A session may only read; operations needing more are token-only.
        return {self.name: []} if needed <= {roles.GET_JOB_STATUS} else None

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
