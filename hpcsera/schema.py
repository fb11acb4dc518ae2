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
    def get_auth(self) -> list[dict[str, list[str]]]:
        needed = required_roles(self.view, self.method)
        return [{SCHEME: sorted(needed or [])}]


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tokens.auth.BearerTokenAuthentication"
    name = SCHEME

    def get_security_definition(self, auto_schema):  # noqa: ANN001, ANN201
        return {
            "type": "oauth2",
            "description": (
                "A bearer token ('Authorization: Bearer hpcsera_...'), made in the "
                "web UI or by the decoupled login of a registered client. Its "
                "roles are the scopes below."
            ),
            # TODO: the token URL is where the decoupled (CIBA-style) flow will
            # hand out tokens; until it exists, tokens come from the web UI.
            "flows": {
                "clientCredentials": {
                    "tokenUrl": "/oauth/token",
                    "scopes": ROLE_HELP,
                }
            },
        }
