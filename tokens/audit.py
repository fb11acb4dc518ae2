"""Recording security events. Details never hold a secret: ids and names only."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings

from tokens.models import SecurityEvent


def client_ip(request: Any) -> str | None:
    """The address the request came from, as the audit log and the consent
    page show it. Behind reverse proxies listed in HPCSERA_TRUSTED_PROXIES,
    the nearest X-Forwarded-For entry that is not one of them; anything
    further left in that header is whatever the client wrote, so never it."""
    if request is None:
        return None
    address = request.META.get("REMOTE_ADDR")
    trusted = settings.HPCSERA["TRUSTED_PROXIES"]
    if not trusted or not _within(address, trusted):
        return address
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if _parse(hop) is None:
            return address  # a garbled header: keep the proxy's own address
        if not _within(hop, trusted):
            return hop
    return address


def _parse(text: str | None):
    try:
        return ipaddress.ip_address(text or "")
    except ValueError:
        return None


def _within(text: str | None, networks) -> bool:
    address = _parse(text)
    return address is not None and any(address in network for network in networks)


def security_event_record(
    *, user: Any, kind: str, request: Any = None, **detail: Any
) -> SecurityEvent:
    return SecurityEvent.objects.create(
        user=user, kind=kind, detail=detail, source_ip=client_ip(request)
    )
