"""HTTP with the retry rules of the SDK.

- 429 is retried for every method: the server refused the request before doing
  anything, and says when to come back (Retry-After, honoured up to a cap).
- Connection failures and 502/503/504 without a problem body (a proxy or a
  restarting server) are retried with exponential back-off and full jitter,
  but only for idempotent methods. A POST is never resent: it may have been
  committed before the connection broke, and resending would run the function
  twice.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

from hpcsera_client import __version__
from hpcsera_client.errors import TransportError, error_for, parse_retry_after

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRIED_STATUSES = frozenset({502, 503, 504})


@dataclass
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff_base: float = 0.25
    backoff_cap: float = 8.0
    max_retry_after: float = 120.0  # a longer Retry-After is raised, not slept
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
        return self.rng.uniform(0, min(self.backoff_cap, self.backoff_base * 2**retry))


class Transport:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["User-Agent"] = f"hpcsera-client/{__version__}"

    def request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> requests.Response:
        """The first answer that is not retried; error statuses become ApiError.

        A 502 carrying a problem body (e.g. `function_failed`) is an answer, not
        a failure of the transport, and is raised as such.
        """
        method = method.upper()
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = self.session.request(
                    method, self.url + path, timeout=timeout or self.timeout, **kwargs
                )
            except requests.RequestException as exc:
                if last or method not in IDEMPOTENT:
                    raise TransportError(f"{method} {path}: {_describe(exc)}") from exc
                self.sleep(self.retry.backoff(attempt))
                continue
            pause = None if last else self._pause(method, response, attempt)
            if pause is None:
                return _checked(response)
            self.sleep(pause)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    def _pause(
        self, method: str, response: requests.Response, attempt: int
    ) -> float | None:
        """How long to wait before trying again, or None: do not retry."""
        status = response.status_code
        if status == 429:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            if wait is None:
                return self.retry.backoff(attempt)
            return wait if wait <= self.retry.max_retry_after else None
        if (
            status in RETRIED_STATUSES
            and method in IDEMPOTENT
            and not _is_problem(response)
        ):
            return self.retry.backoff(attempt)
        return None


def _is_problem(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").startswith(
        "application/problem+json"
    )


def _checked(response: requests.Response) -> requests.Response:
    if response.status_code < 400:
        return response
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip().splitlines()
        body = {"detail": text[0][:200] if text else response.reason or ""}
    raise error_for(response.status_code, body, dict(response.headers))


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "could not connect to the server"
    return type(exc).__name__
