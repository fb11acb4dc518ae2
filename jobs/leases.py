"""Leases: a claimed call belongs to one agent until its lease runs out.

An agent renews the leases of the calls it holds with heartbeats (and with a
`running` report). A lease that runs out means the agent is gone or cut off:
the call goes back to the queue when its function is declared idempotent, and
otherwise ends `lost` with a reason, since running it twice could do harm.

Nothing loops on the server to find expired leases. They are expired lazily
where the answer matters, which works in one process (`make run`) and in many:
- the claim path sweeps at most every LEASE_SWEEP_SECONDS per process, so
  requeued calls reach the agents that still poll;
- reading a call or a job expires its own overdue calls, so a client never
  sees a lease that ran out as still held, even when no agent polls any more;
- `manage.py expire_leases`, from cron or a systemd timer, for deployments that
  want `lost` to show up without anyone asking.
Every sweep is a conditional UPDATE (state held, lease still expired), so sweeps
in many processes, and a heartbeat racing a sweep, cannot both win.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from hpcsera.notify import hub
from jobs.channels import call_channel, work_channel
from jobs.models import ALLOWED_FROM, HELD_STATES, Agent, CallState, Function
from jobs.models import FunctionCall as Call

logger = logging.getLogger(__name__)

SWEEP_BATCH = 500
REQUEUED_REASON = (
    "The lease of agent {site} ran out; the call was queued again because its "
    "function is idempotent."
)
LOST_REASON = (
    "The lease of agent {site} ran out before it reported an end; the call "
    "was not run again because its function is not declared idempotent."
)

# A call leased ahead of its dependencies (jobs.chains) goes back to waiting
# for them, not to the queue.
_REQUEUED_STATE = Case(
    When(open_deps__gt=0, then=Value(CallState.PENDING)),
    default=Value(CallState.READY),
)

_last_sweep = 0.0
_sweep_lock = threading.Lock()


def lease_seconds() -> int:
    return settings.HPCSERA["LEASE_SECONDS"]


def leases_expire(
    *, now: datetime | None = None, call_ids: Iterable[Any] | None = None
) -> int:
    """Requeue or lose the held calls whose lease ran out; returns how many."""
    now = now or timezone.now()
    overdue = Call.objects.filter(state__in=HELD_STATES, lease_expires_at__lt=now)
    if call_ids is not None:
        overdue = overdue.filter(id__in=list(call_ids))
    rows = list(
        overdue.values_list("id", "user_id", "tag", "agent__site")[:SWEEP_BATCH]
    )
    if not rows:
        return 0
    ids = [row[0] for row in rows]
    requeued = _requeue_idempotent(ids, now)
    lost = _lose_the_rest(ids, now)
    _announce(rows, requeued, lost)
    return len(requeued) + len(lost)


def leases_expire_due() -> int:
    """`leases_expire`, at most once every LEASE_SWEEP_SECONDS in this process."""
    global _last_sweep
    interval = settings.HPCSERA["LEASE_SWEEP_SECONDS"]
    with _sweep_lock:
        if time.monotonic() - _last_sweep < interval:
            return 0
        _last_sweep = time.monotonic()
    return leases_expire()


def _still_overdue(ids: list[Any], now: datetime, target: str):
    # Re-checked inside the UPDATE: a heartbeat or report that came first wins.
    return Call.objects.filter(
        id__in=ids, state__in=ALLOWED_FROM[target] & HELD_STATES
    ).filter(lease_expires_at__lt=now)


def _requeue_idempotent(ids: list[Any], now: datetime) -> set[Any]:
    idempotent = Function.objects.filter(
        agent_id=OuterRef("agent_id"), name=OuterRef("function"), idempotent=True
    )
    candidates = _still_overdue(ids, now, CallState.READY).filter(Exists(idempotent))
    chosen = list(candidates.values_list("id", "agent__site"))
    moved = set()
    for call_id, site in chosen:
        if (
            _still_overdue([call_id], now, CallState.READY).update(
                state=_REQUEUED_STATE,
                agent=None,
                lease_expires_at=None,
                leased_at=None,
                started_at=None,
                batch_job_id="",
                reason=REQUEUED_REASON.format(site=site),
            )
            == 1
        ):
            moved.add(call_id)
    return moved


def _lose_the_rest(ids: list[Any], now: datetime) -> set[Any]:
    chosen = list(
        _still_overdue(ids, now, CallState.LOST).values_list("id", "agent__site")
    )
    moved = set()
    for call_id, site in chosen:
        with transaction.atomic():
            lost = _still_overdue([call_id], now, CallState.LOST).update(
                state=CallState.LOST,
                reason=LOST_REASON.format(site=site),
                finished_at=now,
                lease_expires_at=None,
                started_at=Coalesce(F("started_at"), F("leased_at")),
            )
            if lost == 1:
                # Dependents of a lost call can never run: they end cancelled.
                from jobs.dag import call_ended

                call_ended(Call.objects.get(id=call_id))
                moved.add(call_id)
    return moved


def _announce(rows: list[tuple], requeued: set[Any], lost: set[Any]) -> None:
    queues = set()
    for call_id, user_id, tag, site in rows:
        if call_id in requeued:
            logger.warning("%s lease of agent %s ran out: requeued", call_id, site)
            queues.add(work_channel(user_id, tag))
        elif call_id in lost:
            logger.warning("%s lease of agent %s ran out: lost", call_id, site)
        if call_id in requeued or call_id in lost:
            hub().publish(call_channel(call_id))
    for channel in queues:
        hub().publish(channel)


def leases_renew(
    *, agent: Agent, call_ids: list[Any], complete: bool = False
) -> tuple[datetime, set[str]]:
    """A heartbeat: extend the leases of the calls `agent` still holds.

    Only the calls the agent names are renewed, so a call the agent forgot (its
    journal lost) runs out instead of being kept alive forever. Returns the new
    expiry and the named calls the agent does not hold any more.

    `complete` says the names are all the agent holds. An agent journals every
    call it receives before it starts it, so a call still only `leased` to it
    and not named never reached it (the answer to a claim was lost when the
    agent was killed): it goes back to the queue at once, whatever its
    function, since it never ran.
    """
    if complete:
        _requeue_unreceived(agent, call_ids)
    now = timezone.now()
    expires = now + timedelta(seconds=lease_seconds())
    held = Call.objects.filter(agent=agent, state__in=HELD_STATES, id__in=call_ids)
    held.update(lease_expires_at=expires)
    kept = {str(i) for i in held.values_list("id", flat=True)}
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)
    released = {str(i) for i in call_ids} - kept
    if released:
        logger.info("%s no longer holds %d call(s)", agent.id, len(released))
    return expires, released


def _requeue_unreceived(agent: Agent, call_ids: list[Any]) -> None:
    unreceived = Call.objects.filter(agent=agent, state=CallState.LEASED).exclude(
        id__in=call_ids
    )
    rows = list(unreceived.values_list("id", "user_id", "tag"))
    moved = unreceived.filter(id__in=[r[0] for r in rows]).update(
        state=_REQUEUED_STATE,
        agent=None,
        lease_expires_at=None,
        leased_at=None,
        reason="The agent never received the call; it was queued again.",
    )
    if moved:
        logger.warning("%s never received %d call(s): requeued", agent.id, moved)
        for channel in {work_channel(user_id, tag) for _, user_id, tag in rows}:
            hub().publish(channel)
