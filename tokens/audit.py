"""Recording security events. Details never hold a secret: ids and names only."""

from __future__ import annotations

from typing import Any

from tokens.models import SecurityEvent


def client_ip(request: Any) -> str | None:
    # Behind a reverse proxy REMOTE_ADDR is the proxy; trusting forwarded
    # headers needs a configured proxy list.
    # TODO: honour X-Forwarded-For from configured trusted proxies only.
    return request.META.get("REMOTE_ADDR") if request is not None else None


def security_event_record(
    *, user: Any, kind: str, request: Any = None, **detail: Any
) -> SecurityEvent:
    return SecurityEvent.objects.create(
        user=user, kind=kind, detail=detail, source_ip=client_ip(request)
    )
