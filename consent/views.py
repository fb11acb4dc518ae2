"""OAuth endpoints of the decoupled flow, in the wire format of OpenID CIBA
(poll mode) with RFC 7523 client assertions, RFC 7009 revocation, RFC 7662
introspection and RFC 8414 metadata. Requests are form-encoded."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from consent.assertions import authenticate_client
from consent.keys import ALGORITHMS
from consent.oauth import OAuthError
from consent.services import auth_request_create, token_poll
from hpcsera.errors import NotAuthenticated
from tokens import roles
from tokens.models import Token
from tokens.services import token_authenticate, token_find, token_revoke

CIBA_GRANT = "urn:openid:params:grant-type:ciba"


def issuer(request: HttpRequest) -> str:
    return settings.HPCSERA["ISSUER"] or f"{request.scheme}://{request.get_host()}"


def _json(body: dict, status: int = 200) -> JsonResponse:
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    return response


def oauth_endpoint(view):
    """Form-encoded POST, no CSRF (no cookies involved), OAuth-style errors."""

    @csrf_exempt
    @require_POST
    def wrapper(request: HttpRequest) -> JsonResponse:
        if request.content_type != "application/x-www-form-urlencoded":
            return OAuthError(
                "invalid_request", "Send the parameters form-encoded."
            ).response()
        try:
            return view(request, request.POST.dict())
        except OAuthError as exc:
            return exc.response()

    return wrapper


@oauth_endpoint
def backchannel_authorize(request: HttpRequest, params: dict) -> JsonResponse:
    client = authenticate_client(params, issuer(request))
    request_id, auth = auth_request_create(
        client=client, params=params, request=request
    )
    return _json(
        {
            "auth_req_id": request_id,
            "expires_in": int((auth.expires_at - timezone.now()).total_seconds()),
            "interval": auth.interval,
        }
    )


@oauth_endpoint
def token(request: HttpRequest, params: dict) -> JsonResponse:
    if params.get("grant_type") != CIBA_GRANT:
        raise OAuthError("unsupported_grant_type", f"Only {CIBA_GRANT} is offered.")
    client = authenticate_client(params, issuer(request))
    issued = token_poll(client=client, request_id=params.get("auth_req_id", ""))
    expires_in = int((issued.token.expires_at - timezone.now()).total_seconds())
    return _json(
        {
            "access_token": issued.secret,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": " ".join(issued.token.roles),
            "tag": issued.token.tag,
            # The key that signs callbacks of calls made with this token; like
            # the token, it is shown this once.
            "callback_secret": issued.callback_secret,
        }
    )


def _caller(request: HttpRequest, params: dict) -> tuple[object, object]:
    """(client, token) that authenticated this call; either may be None."""
    if "client_assertion" in params:
        return authenticate_client(params, issuer(request)), None
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header.lower().startswith("bearer "):
        try:
            return None, token_authenticate(header[7:].strip())
        except NotAuthenticated:
            pass
    raise OAuthError(
        "invalid_client", "Authenticate with a client assertion or a bearer token.", 401
    )


def _owned(found: Token | None, client, caller_token) -> bool:
    if found is None:
        return False
    if client is not None:
        return found.client_id == client.pk
    # A bearer caller is fenced like everywhere else: same user, same tag.
    return found.user_id == caller_token.user_id and found.tag == caller_token.tag


@oauth_endpoint
def revoke(request: HttpRequest, params: dict) -> JsonResponse:
    client, caller_token = _caller(request, params)
    found = token_find(params.get("token", ""))
    if _owned(found, client, caller_token):
        token_revoke(token=found, request=request)
    # RFC 7009: the answer is the same whether or not there was such a token.
    return _json({})


@oauth_endpoint
def introspect(request: HttpRequest, params: dict) -> JsonResponse:
    client, caller_token = _caller(request, params)
    found = token_find(params.get("token", ""))
    now = timezone.now()
    if (
        not _owned(found, client, caller_token)
        or found.is_revoked
        or found.is_expired(now)
        or not found.user.is_active
    ):
        return _json({"active": False})
    return _json(
        {
            "active": True,
            "scope": " ".join(found.roles),
            "client_id": found.client.client_id if found.client_id else None,
            "username": found.user.get_username(),
            "token_type": "Bearer",
            "exp": int(found.expires_at.timestamp()),
            "iat": int(found.created_at.timestamp()),
            "tag": found.tag,
        }
    )


@require_GET
def metadata(request: HttpRequest) -> JsonResponse:
    base = issuer(request)
    return JsonResponse(
        {
            "issuer": base,
            "token_endpoint": base + "/oauth/token",
            "backchannel_authentication_endpoint": base + "/oauth/bc-authorize",
            "backchannel_token_delivery_modes_supported": ["poll"],
            "backchannel_user_code_parameter_supported": False,
            "grant_types_supported": [CIBA_GRANT],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
            "revocation_endpoint": base + "/oauth/revoke",
            "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
            "introspection_endpoint": base + "/oauth/introspect",
            "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
            "scopes_supported": list(roles.ALL_ROLES),
        }
    )
