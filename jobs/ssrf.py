"""The guard on callback URLs: only public addresses, checked twice.

A callback URL is checked when it is submitted and again, after resolving its
name anew, right before every delivery. The delivery then connects to the very
address that was checked (the connection is pinned to it, with the name sent
as Host and as TLS server name), so a DNS answer that changes between the
check and the connection cannot reach an internal address. Redirects are
never followed: `http.client` does not follow them, and a 3xx is a failure.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

MAX_URL_CHARS = 2048
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata"})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class Refused(Exception):
    """The URL or one of its addresses may not be called back."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query
    address: str  # the vetted IP the connection is pinned to


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [info[4][0] for info in infos]


def address_refusal(address: Address) -> str | None:
    """Why `address` may not be called back, or None when it is public.

    IPv6 addresses that carry an IPv4 one (mapped, 6to4, Teredo) are judged by
    the IPv4 address too. NAT64 (64:ff9b::/96) counts as reserved, so it is
    refused whatever it embeds: strict, and safe.
    """
    if isinstance(address, ipaddress.IPv6Address):
        teredo = address.teredo[1] if address.teredo else None
        embedded = address.ipv4_mapped or address.sixtofour or teredo
        if address.ipv4_mapped:
            address = address.ipv4_mapped
        elif embedded is not None:
            reason = address_refusal(embedded)
            if reason:
                return reason
    if address in METADATA_ADDRESSES:
        return "metadata"
    if address.is_loopback:
        allowed = settings.HPCSERA["CALLBACK_ALLOW_LOOPBACK"]
        return None if allowed else "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        # Shared (100.64/10), documentation, benchmarking and the like.
        return "not_global"
    return None


def _parse(url: str) -> SplitResult:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise Refused("malformed", f"A callback URL is 1 to {MAX_URL_CHARS} chars.")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise Refused("malformed", "The callback URL contains blanks or controls.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise Refused("malformed", "The callback URL cannot be parsed.")
    if parts.scheme not in ("http", "https"):
        raise Refused("scheme", "A callback URL is http or https.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise Refused("userinfo", "A callback URL carries no user name or password.")
    if not parts.hostname:
        raise Refused("malformed", "The callback URL names no host.")
    return parts


def check(url: str, resolver: Resolver | None = None) -> Target:
    """The URL's target, pinned to a vetted address; Refused otherwise.

    Every address the name resolves to must be public: a name with one
    internal address among public ones is refused, since which one a client
    would use is not ours to know.
    """
    parts = _parse(url)
    host = parts.hostname.rstrip(".").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if host in METADATA_NAMES:
        raise Refused("metadata", "The callback URL names a cloud metadata service.")
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    found = [str(literal)] if literal else (resolver or system_resolver)(host, port)
    if not found:
        raise Refused("unresolvable", f"The callback host {host!r} does not resolve.")
    for raw in found:
        address = ipaddress.ip_address(raw.split("%")[0])
        reason = address_refusal(address)
        if reason:
            raise Refused(
                reason,
                f"The callback host {host!r} resolves to a {reason.replace('_', '-')} "
                "address, which is not called back.",
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, host, port, path, found[0])


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(
            target.host,
            target.port,
            timeout=timeout,
            context=ssl.create_default_context(),
        )
        self._address = target.address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        # The certificate is checked against the name, not the pinned address.
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes  # at most `body_limit` bytes of it


def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    body_limit: int = 64 * 1024,
) -> Response:
    """POST to the pinned address; no redirects; the answer's body capped.

    Raises OSError (and http.client.HTTPException) on network failures.
    """
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    connection = kind(target, timeout)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        answer = connection.getresponse()
        return Response(answer.status, answer.read(body_limit))
    finally:
        connection.close()
