"""One error family and one error body (RFC 9457 problem details) for all of HPCSerA.

Every error leaves the server as::

    {"type": "/errors/<code>", "title": ..., "status": <int>, "code": <code>,
     "detail": ..., ...extra fields}

with content type application/problem+json. `code` is the stable part that
clients branch on; `detail` is for people and may change.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.extra = extra


class BadInput(ApiError):
    pass


class NotAuthenticated(ApiError):
    status = 401
    code = "not_authenticated"
    title = "Not authenticated"


class Forbidden(ApiError):
    status = 403
    code = "missing_role"
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(ApiError):
    status = 409
    code = "conflict"
    title = "Conflict"


class TooMany(ApiError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"


def problem(
    status: int, code: str, title: str, detail: str, **extra: Any
) -> dict[str, Any]:
    body = {
        "type": f"/errors/{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    body.update(extra)
    return body


def problem_response(error: ApiError) -> JsonResponse:
    body = problem(error.status, error.code, error.title, error.detail, **error.extra)
    response = JsonResponse(body, status=error.status, content_type=PROBLEM_JSON)
    for name, value in (_auth_challenge(error.status) or {}).items():
        response[name] = value
    return response


_DRF_CODES = {
    drf.NotAuthenticated: (401, "not_authenticated", "Not authenticated"),
    drf.AuthenticationFailed: (401, "invalid_token", "Not authenticated"),
    drf.PermissionDenied: (403, "missing_role", "Forbidden"),
    drf.NotFound: (404, "not_found", "Not found"),
    drf.MethodNotAllowed: (405, "method_not_allowed", "Method not allowed"),
    drf.NotAcceptable: (406, "not_acceptable", "Not acceptable"),
    drf.UnsupportedMediaType: (415, "unsupported_media_type", "Unsupported media type"),
    drf.ParseError: (400, "malformed_json", "Bad request"),
    drf.ValidationError: (400, "invalid_input", "Bad request"),
    drf.Throttled: (429, "rate_limited", "Too many requests"),
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's hook: map every exception a view raises to the one error body."""
    if isinstance(exc, Http404):
        exc = NotFound("No such object.")
    if isinstance(exc, ApiError):
        return Response(
            response_data(exc),
            status=exc.status,
            content_type=PROBLEM_JSON,
            headers=_auth_challenge(exc.status),
        )
    for kind, (status, code, title) in _DRF_CODES.items():
        if isinstance(exc, kind):
            detail = exc.detail if isinstance(exc, drf.APIException) else str(exc)
            extra: dict[str, Any] = {}
            if isinstance(exc, drf.ValidationError):
                extra["errors"] = detail
                detail = "The request has invalid fields."
            if isinstance(exc, drf.AuthenticationFailed) and isinstance(
                exc.detail, dict
            ):
                code = str(exc.detail.get("code", code))
                detail = str(exc.detail.get("detail", ""))
            return Response(
                problem(status, code, title, str(detail), **extra),
                status=status,
                content_type=PROBLEM_JSON,
                headers=_auth_challenge(status),
            )
    return None  # Django's handler500 answers with the generic body.


def response_data(error: ApiError) -> dict[str, Any]:
    return problem(error.status, error.code, error.title, error.detail, **error.extra)


def _auth_challenge(status: int) -> dict[str, str] | None:
    return {"WWW-Authenticate": 'Bearer realm="hpcsera"'} if status == 401 else None


def handler404(request, exception=None) -> JsonResponse:
    return problem_response(NotFound("No such resource."))


def handler500(request) -> JsonResponse:
    return JsonResponse(
        problem(
            500, "server_error", "Server error", "The server failed; it is logged."
        ),
        status=500,
        content_type=PROBLEM_JSON,
    )


def handler400(request, exception=None) -> JsonResponse:
    return problem_response(BadInput("The request could not be read."))


def handler403(request, exception=None) -> JsonResponse:
    return problem_response(Forbidden("Forbidden.", code="forbidden"))
