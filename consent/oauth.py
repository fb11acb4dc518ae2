"""OAuth-style errors: the fields RFC 6749 clients read (`error`,
`error_description`) together with the project's problem-details fields."""

from __future__ import annotations

from django.http import JsonResponse

from hpcsera.errors import PROBLEM_JSON, problem


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400, **extra):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.extra = extra

    def response(self) -> JsonResponse:
        body = problem(
            self.status,
            self.error,
            _titles.get(self.status, "Error"),
            self.description,
            **self.extra,
        )
        body.update({"error": self.error, "error_description": self.description})
        response = JsonResponse(body, status=self.status, content_type=PROBLEM_JSON)
        response["Cache-Control"] = "no-store"
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="hpcsera"'
        return response


_titles = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    429: "Too many requests",
}
