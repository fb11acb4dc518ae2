"""Wake-ups between requests without polling the database.

A request that waits (a sync FaaS call for its result, an agent's long-poll for
work) registers interest in a channel *before* it checks the database, then
sleeps on an event. Whoever changes the state publishes the channel after the
commit. With REDIS_URL set, publications go through Redis pub/sub and one
listener thread per server process wakes the local waiters, so any number of
server processes can share a deployment. Without it they stay in this process,
which is right only for the single-process embedded default.

Waiters still re-check the database every `recheck` seconds: a publication lost
while Redis reconnects costs latency, never a result.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

PREFIX = "hpcsera:"


def _prefix() -> str:
    # Deployments (and test runs) sharing one Redis must not wake each other:
    # channels carry the database's name.
    return f"{PREFIX}{settings.DATABASES['default']['NAME']}:"


class Waiter:
    def __init__(self) -> None:
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """True when woken; clears the wake-up for the next wait."""
        woken = self._event.wait(max(timeout, 0.0))
        self._event.clear()
        return woken


class Hub:
    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._prefix = _prefix()
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = defaultdict(set)
        self._pid = 0
        self._client = None
        self._listener: threading.Thread | None = None
        self.closing = False

    @contextmanager
    def listen(self, channel: str) -> Iterator[Waiter]:
        waiter = Waiter()
        self._ensure_listener()
        with self._lock:
            self._waiters[channel].add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(channel)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[channel]

    def publish(self, channel: str) -> None:
        if not self._redis_url:
            self._wake(channel)
            return
        try:
            self._redis().publish(self._prefix + channel, b"")
        # A broker outage must not fail a commit: waiters re-check anyway.
        except Exception as exc:  # noqa: BLE001
            logger.error("%s publish failed: %s", channel, exc)
            self._wake(channel)

    def close(self) -> None:
        """Release every waiter now: the server process is shutting down."""
        with self._lock:
            self.closing = True
            for waiters in self._waiters.values():
                for waiter in waiters:
                    waiter.wake()

    def _wake(self, channel: str) -> None:
        with self._lock:
            for waiter in self._waiters.get(channel, ()):
                waiter.wake()

    def _redis(self):
        self._check_fork()
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self._redis_url)
        return self._client

    def _check_fork(self) -> None:
        # Clients and threads do not survive fork(); a forked server worker
        # starts its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._client = None
            self._listener = None

    def _ensure_listener(self) -> None:
        if not self._redis_url:
            return
        self._check_fork()
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen_forever, name="hpcsera-notify", daemon=True
                )
                self._listener.start()

    def _listen_forever(self) -> None:
        import redis

        delay = 0.1
        while True:
            try:
                client = redis.Redis.from_url(self._redis_url)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(self._prefix + "*")
                delay = 0.1
                for message in pubsub.listen():
                    channel = message["channel"].decode()[len(self._prefix) :]
                    self._wake(channel)
            except Exception as exc:  # noqa: BLE001 - keep listening whatever happens
                logger.error("notify listener lost Redis: %s; retrying", exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


_hub: Hub | None = None
_hub_lock = threading.Lock()


def hub() -> Hub:
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = Hub(settings.REDIS_URL)
        return _hub


def publish_on_commit(channel: str) -> None:
    """Wake the waiters of `channel` once the current transaction commits: a
    woken waiter must find the change in the database."""
    transaction.on_commit(lambda: hub().publish(channel))


def wait_until(
    channel: str,
    check,
    timeout: float,
    *,
    recheck: float | None = None,
    on_long_wait=None,
    hold_seconds: float = 1.0,
):
    """Call `check()` until it returns something truthy or `timeout` passes.

    `check` runs once at once, then after every wake-up on `channel` (and every
    `recheck` seconds as a safety net). Once the wait has lasted `hold_seconds`,
    `on_long_wait` runs after every check, for example to hand the database
    connection back to the pool: a waiting request must not hold one.
    """
    recheck = recheck or settings.HPCSERA["NOTIFY_RECHECK_SECONDS"]
    started = time.monotonic()
    deadline = started + timeout
    release_at = started + hold_seconds
    with hub().listen(channel) as waiter:
        while True:
            result = check()
            now = time.monotonic()
            if result or now >= deadline or hub().closing:
                return result
            if on_long_wait is not None and now >= release_at:
                on_long_wait()
            step = min(deadline - now, recheck)
            if on_long_wait is not None and now < release_at:
                step = min(step, release_at - now)
            waiter.wait(step)
