"""The agent's consent step: ask the user (through the server) before a run.

`obtain` asks for an approval of one exact run (executable bytes, arguments,
a fresh nonce), waits for the user's decision, and accepts only a statement
signed with the pinned key that repeats what was asked: the server's key
(approval.verify) or, with [consent] verify = "passkey", the user's passkey
(approval.verify_passkey).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcsera_agent.approval import NotApproved, file_sha256, verify, verify_passkey
from hpcsera_agent.client import Refused, ServerUnavailable, backoff
from hpcsera_agent.config import ConsentSettings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

logger = logging.getLogger(__name__)

LONG_POLL_SECONDS = 25  # the server holds an approval poll at most this long
# A pending answer that comes back sooner than this (a server not holding the
# poll) is followed by a pause, so the agent never polls in a tight loop.
MIN_POLL_SECONDS = 1.0
STOPPED = "the agent stopped before the user decided"


def needed(settings: ConsentSettings, functions_dir: Path, function: str) -> bool:
    """Whether running `function` waits for the user's approval."""
    if settings.mode == "all":
        return True
    if settings.mode != "uploaded":
        return False
    return installed_by_deployment(functions_dir, function)


def installed_by_deployment(functions_dir: Path, function: str) -> bool:
    """`<functions_dir>/<function>` is a symlink into .hpcsera/versions/."""
    entry = functions_dir / function
    if not entry.is_symlink():
        return False
    versions = os.path.realpath(functions_dir / ".hpcsera" / "versions")
    target = os.path.realpath(entry)
    return os.path.commonpath([versions, target]) == versions and target != versions


def obtain(
    client: Any,
    agent_id: str,
    site: str,
    public_key: Ed25519PublicKey | None,
    settings: ConsentSettings,
    *,
    purpose: str,
    subject_id: str,
    function: str,
    executable: Path,
    arguments_sha256: str,
    stop: threading.Event,
) -> None:
    """Return when the user approved this run; NotApproved(reason) otherwise."""
    asked = {
        "purpose": purpose,
        "subject_id": subject_id,
        "function": function,
        "executable_sha256": file_sha256(executable),
        "arguments_sha256": arguments_sha256,
        "nonce": secrets.token_hex(16),
    }
    deadline = time.monotonic() + settings.wait_seconds
    answer = _request(client, agent_id, asked, deadline, stop)
    approval_id = str(answer["id"])
    logger.info("%s waits for approval %s of %s", subject_id, approval_id, function)
    decided = _decision(client, agent_id, approval_id, settings, deadline, stop)
    expected = dict(asked, approval_id=approval_id, agent_id=agent_id, site=site)
    answer_approval = decided.get("approval") or {}
    if settings.verify == "passkey":
        if settings.passkey is None:
            raise NotApproved("no passkey is pinned (consent settings not loaded)")
        verify_passkey(answer_approval, expected, settings.passkey)
    elif public_key is None:
        raise NotApproved("no server key is pinned (consent settings not loaded)")
    else:
        verify(answer_approval, expected, public_key)
    # The wait may have been long: what runs now must still be what was
    # approved. Left: the instant between this check and the exec, and for a
    # batch job its time in the queue (the folder's owner is trusted).
    if file_sha256(executable) != asked["executable_sha256"]:
        raise NotApproved("the executable changed while waiting for approval")
    logger.info("%s approved by %s", subject_id, approval_id)


def _request(
    client: Any,
    agent_id: str,
    asked: dict[str, Any],
    deadline: float,
    stop: threading.Event,
) -> dict[str, Any]:
    attempt = 0
    while True:
        try:
            return client.approval_request(agent_id, asked)
        except Refused as exc:
            raise NotApproved(f"the server refused the request: {exc.detail}")
        except ServerUnavailable as exc:
            if time.monotonic() >= deadline:
                raise NotApproved(f"the server was unavailable: {exc}")
            attempt += 1
            logger.error("%s approval not requested yet: %s", asked["subject_id"], exc)
            _pause(backoff(attempt, cap=30.0), deadline, stop)


def _decision(
    client: Any,
    agent_id: str,
    approval_id: str,
    settings: ConsentSettings,
    deadline: float,
    stop: threading.Event,
) -> dict[str, Any]:
    """The server's answer once the approval left `pending`."""
    attempt = 0
    while True:
        if stop.is_set():
            raise NotApproved(STOPPED)
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotApproved(f"no decision within {settings.wait_seconds:g} s")
        wait = min(LONG_POLL_SECONDS, math.ceil(left))
        started = time.monotonic()
        try:
            answer = client.approval_get(agent_id, approval_id, wait)
        except Refused as exc:
            raise NotApproved(f"the server refused the approval: {exc.detail}")
        except ServerUnavailable as exc:
            attempt += 1
            logger.error("%s approval state unknown: %s", approval_id, exc)
            _pause(backoff(attempt, cap=30.0), deadline, stop)
            continue
        attempt = 0
        state = answer.get("state")
        if state != "pending":
            return _decided(answer)
        if time.monotonic() - started < MIN_POLL_SECONDS:
            _pause(MIN_POLL_SECONDS, deadline, stop)


def _decided(answer: dict[str, Any]) -> dict[str, Any]:
    state = answer.get("state")
    if state == "approved":
        return answer
    if state == "denied":
        raise NotApproved("denied by the user")
    if state == "expired":
        raise NotApproved("the user did not decide in time (expired)")
    raise NotApproved(f"the server answered the unknown state {state!r}")


def _pause(seconds: float, deadline: float, stop: threading.Event) -> None:
    """Wait, but never past the deadline, and not at all once stopping."""
    if stop.wait(max(min(seconds, deadline - time.monotonic()), 0)):
        raise NotApproved(STOPPED)
