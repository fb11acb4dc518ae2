"""The exceptions of the SDK.

Every error the server answers is an RFC 9457 problem body with a stable
`code`; `ApiError` keeps that body whole (`error.body`) and exposes its common
fields. Branch on the class or on `error.code`, never on `detail` (it is for
people and may change).
"""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any


class HpcseraError(Exception):
    """Everything the SDK raises derives from this."""


class TransportError(HpcseraError):
    """The server could not be reached, or the connection broke."""


class CallTimeout(HpcseraError):
    """A call did not finish within the time the caller was willing to wait.

    The call goes on running on the cluster; `call_id` tells where to look.
    """

    def __init__(self, message: str, call_id: str):
        super().__init__(message)
        self.call_id = call_id


class ApiError(HpcseraError):
    """The server answered with an error status and (usually) a problem body."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.code = str(body.get("code") or f"http_{status}")
        self.detail = str(body.get("detail") or body.get("title") or "")
        super().__init__(f"{status} {self.code}: {self.detail}")


class BadRequest(ApiError):
    """400: the request itself is wrong (argument, body, limit)."""


class AuthenticationFailed(ApiError):
    """401: no token, or an invalid, expired or revoked one."""


class PermissionDenied(ApiError):
    """403: the token lacks a role; `required_roles` says which."""

    def __init__(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status, body, headers)
        missing = self.body.get("missing_roles") or self.required_roles
        if missing:
            # The one thing a user needs to know: which role to add.
            self.detail = f"{self.detail} Missing: {', '.join(map(str, missing))}."
            self.args = (f"{status} {self.code}: {self.detail}",)

    @property
    def required_roles(self) -> list[str]:
        return list(self.body.get("required_roles") or [])


class NotFound(ApiError):
    """404: no such object for this token (or no agent offers the function)."""


class Conflict(ApiError):
    """409: the object is not in a state that allows the change."""


class RateLimited(ApiError):
    """429 that outlasted the client's retries or its longest acceptable wait."""

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


class ServerError(ApiError):
    """5xx other than a failed function: the server or a proxy failed."""


class FunctionFailed(ApiError):
    """The function ran and did not succeed (or was lost or cancelled)."""

    @property
    def state(self) -> str:
        return str(self.body.get("state") or "failed")

    @property
    def exit_code(self) -> int | None:
        return self.body.get("exit_code")

    @property
    def stderr_tail(self) -> str:
        return str(self.body.get("stderr_tail") or "")

    @property
    def call_id(self) -> str | None:
        return self.body.get("call_id") or self.body.get("id")


_BY_STATUS = {
    400: BadRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}


def error_for(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> ApiError:
    """The most specific exception for an error answer."""
    if body.get("code") == "function_failed":
        return FunctionFailed(status, body, headers)
    kind = _BY_STATUS.get(status)
    if kind is None:
        kind = ServerError if status >= 500 else ApiError
    return kind(status, body, headers)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class UploadRejected(HpcseraError):
    """The code upload was denied by the user or expired before approval; the
    server deleted its bytes. `state` is "denied" or "expired", `reason` the
    server's words."""

    def __init__(self, upload_id: str, state: str, reason: str):
        self.upload_id = upload_id
        self.state = state
        self.reason = reason
        super().__init__(f"upload {upload_id} {state}: {reason or 'no reason given'}")


class DeploymentFailed(HpcseraError):
    """An agent could not install an approved upload (unpacking or the
    preparation step failed); `reason` and `log_tail` are the agent's report."""

    def __init__(self, upload_id: str, site: str, reason: str, log_tail: str = ""):
        self.upload_id = upload_id
        self.site = site
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(
            f"upload {upload_id}: deployment on {site or 'a site'} failed: "
            f"{reason or 'no reason given'}"
        )


class DigestMismatch(HpcseraError):
    """The server names another SHA-256 than the bytes this client sent:
    something on the way changed them. Do not approve that upload."""

    def __init__(
        self, upload_id: str, sent: str, received: str, withdrawn: bool = False
    ):
        self.upload_id = upload_id
        self.sent = sent
        self.received = received
        self.withdrawn = withdrawn
        fate = "it was withdrawn" if withdrawn else "it expires unapproved"
        super().__init__(
            f"upload {upload_id}: the server holds SHA-256 {received}, but "
            f"{sent} was sent; do not approve it ({fate})"
        )


class UploadTimeout(HpcseraError):
    """The upload was not approved (or deployed) within the time the caller was
    willing to wait; it may still be approved later."""

    def __init__(self, message: str, upload_id: str):
        super().__init__(message)
        self.upload_id = upload_id
