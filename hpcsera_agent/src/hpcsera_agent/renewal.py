"""Asking again before the token runs out: a daemon thread that, when the token
from `hpcsera-agent login` nears its expiry, runs the decoupled login anew (the
user approves it in the web UI again) and hands the new token to the client.
The agent keeps serving with the old token meanwhile."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from hpcsera_agent.login import Login, LoginError, run_login, token_expires_at

logger = logging.getLogger(__name__)

# Start asking this long before the token expires: time for the user to see
# the request and approve it.
RENEW_AHEAD_SECONDS = 24 * 3600
RETRY_SECONDS = 600


def start_renewal(agent: Any, config: Any) -> threading.Thread | None:
    if config.login is None or config.token_file is None:
        return None
    thread = threading.Thread(
        target=_renew_forever, args=(agent, config), name="renewal", daemon=True
    )
    thread.start()
    return thread


def seconds_until_renewal(expires_at: float | None, now: float) -> float:
    if expires_at is None:
        return RETRY_SECONDS
    lifetime_left = expires_at - now
    # For short-lived tokens, ask when a tenth of the lifetime is left.
    ahead = min(RENEW_AHEAD_SECONDS, max(lifetime_left * 0.1, 60))
    return max(lifetime_left - ahead, 0)


def _renew_forever(agent: Any, config: Any) -> None:
    settings = config.login
    while not agent.stop.is_set():
        wait = seconds_until_renewal(token_expires_at(config.token_file), time.time())
        if agent.stop.wait(wait):
            return
        try:
            grant = run_login(
                Login(config.server, settings.client_id, settings.key_file),
                settings.user,
                settings.roles,
                settings.tag,
                config.token_file,
                agent.stop,
                logger.warning,
            )
        except LoginError as exc:
            logger.error("token renewal failed: %s; asking again later", exc)
            agent.stop.wait(RETRY_SECONDS)
            continue
        agent.client.set_token(grant.token)
        logger.info("token renewed; valid for %.0f s", grant.expires_at - time.time())
