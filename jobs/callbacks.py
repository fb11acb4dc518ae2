"""Callbacks: POSTing a call's or a job's result to the URL its submitter named.

- A Delivery row is created in the transaction of the terminal transition
  (jobs.dag.resolve calls `deliveries_create`), so an ended call with a
  callback never lacks its delivery. A job's callback is due when its last
  call ends; two last calls ending at once in two transactions can each miss
  the other's end, so `jobs_callbacks_sweep` (run_timers) catches those, and a
  unique constraint keeps it to one delivery per job.
- The rows are the schedule. A sender claims due rows (SELECT ... FOR UPDATE
  SKIP LOCKED) by moving `next_attempt_at` past the time an attempt can take,
  sends outside any transaction, then records the outcome with a conditional
  UPDATE. A sender that dies mid-attempt leaves the row due again once its
  claim runs out: delivery is at least once, and the stable delivery id lets
  a receiver drop repeats.
- With a Celery broker, `deliveries_dispatch` (run_timers) and a hook after
  each commit queue one task per claimed row; the task only sends. Without a
  broker, run_timers sends in its own process.
- Signing: each token has a callback secret derived from SECRET_KEY and the
  token's id (nothing to store, nothing to leak from the database); it is
  shown once, with the token.

TODO: a job whose callback was made and which is then given more calls
(POST /jobs/<id>/calls) gets no second job callback when those end: one
delivery per job keeps "once" simple, and a second event kind was not asked
for yet.

Tokens from the decoupled login get their secret in the token endpoint's
answer (`callback_secret`), once, beside the token.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import random
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils import timezone

from hpcsera.errors import BadInput
from jobs import ssrf
from jobs.models import TERMINAL_STATES, CallState, Delivery, FunctionCall, Job

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hpcsera-Signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a readable kind prefix
DISPATCH_BATCH = 100
RESPONSE_BODY_LIMIT = 64 * 1024


def _setting(name: str) -> Any:
    return settings.HPCSERA[name]


# Submission


def callback_url_check(url: str) -> str:
    """`url` when it may be called back; a 400 naming the reason otherwise."""
    try:
        ssrf.check(url)
    except ssrf.Refused as exc:
        raise BadInput(exc.detail, code="invalid_callback_url", reason=exc.reason)
    return url


# Signing


def callback_secret(token_id: Any) -> str:
    """The secret callbacks of `token_id`'s submissions are signed with."""
    key = settings.SECRET_KEY.encode("utf-8")
    message = f"hpcsera-callback-secret:{token_id}".encode()
    return SECRET_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `t=<unix time>,v1=<hex HMAC-SHA256>`.

    The MAC covers "<t>." followed by the body, so a receiver can refuse old
    timestamps to stop replays.
    """
    signed = f"{timestamp}.".encode() + body
    mac = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


# Creating deliveries


def deliveries_create(call_ids: Iterable[Any]) -> None:
    """Record the callbacks due because the calls `call_ids` just ended.

    Run in the transaction of the transitions. Costs one query when none of
    the calls or their jobs has a callback.
    """
    ids = list(call_ids)
    if not ids:
        return
    calls = list(
        FunctionCall.objects.filter(id__in=ids)
        .select_related("job")
        .only(
            "id",
            "callback_url",
            "user_id",
            "tag",
            "job__id",
            "job__callback_url",
            "job__callback_done",
            "job__token_id",
        )
    )
    rows = [
        _delivery(c.job, c, Delivery.Event.CALL_ENDED, c.callback_url)
        for c in calls
        if c.callback_url
    ]
    jobs = {c.job_id: c.job for c in calls if c.job.callback_url}
    rows += [
        _delivery(job, None, Delivery.Event.JOB_ENDED, job.callback_url)
        for job in jobs.values()
        if not job.callback_done and _job_ended(job.id)
    ]
    _store(rows)


def _job_ended(job_id: Any) -> bool:
    open_calls = FunctionCall.objects.filter(job_id=job_id).exclude(
        state__in=TERMINAL_STATES
    )
    return not open_calls.exists()


def _delivery(job: Job, call: FunctionCall | None, event: str, url: str) -> Delivery:
    return Delivery(
        job_id=job.id,
        call=call,
        user_id=call.user_id if call else job.user_id,
        tag=call.tag if call else job.tag,
        event=event,
        url=url,
        token_id=job.token_id,
        next_attempt_at=timezone.now(),
    )


def _store(rows: list[Delivery]) -> None:
    if not rows:
        return
    # ON CONFLICT DO NOTHING: a job's delivery made by a racing end or the
    # sweep stays the only one, without aborting this transaction.
    Delivery.objects.bulk_create(rows, ignore_conflicts=True)
    job_ids = [r.job_id for r in rows if r.call_id is None]
    if job_ids:
        Job.objects.filter(id__in=job_ids).update(callback_done=True)
    ids = [r.id for r in rows]
    if _via_celery():
        transaction.on_commit(lambda: _queue(deliveries_claim_due(ids=ids)))


def jobs_callbacks_sweep(*, batch: int = 500) -> int:
    """Create the job callbacks that racing ends missed; how many were made."""
    open_calls = FunctionCall.objects.filter(job_id=OuterRef("id")).exclude(
        state__in=TERMINAL_STATES
    )
    any_call = FunctionCall.objects.filter(job_id=OuterRef("id"))
    ended = (
        Job.objects.exclude(callback_url="")
        .filter(callback_done=False)
        .filter(Exists(any_call))
        .exclude(Exists(open_calls))[:batch]
    )
    rows = [
        _delivery(job, None, Delivery.Event.JOB_ENDED, job.callback_url)
        for job in ended
    ]
    try:
        with transaction.atomic():
            _store(rows)
    except IntegrityError:  # pragma: no cover - ignore_conflicts prevents it
        return 0
    return len(rows)


# Sending


def _via_celery() -> bool:
    return bool(settings.CELERY_BROKER_URL) and not getattr(
        settings, "CELERY_TASK_ALWAYS_EAGER", False
    )


def _claim_seconds() -> float:
    # Longer than one attempt can take, so a live sender keeps its claim.
    return _setting("CALLBACK_TIMEOUT_SECONDS") * 3 + 30


def deliveries_claim_due(
    *, now: datetime | None = None, ids: list[Any] | None = None
) -> list[tuple[Any, datetime]]:
    """Claim due deliveries for sending: (id, claim) pairs for delivery_attempt."""
    now = now or timezone.now()
    until = now + timedelta(seconds=_claim_seconds())
    due = Delivery.objects.filter(
        state=Delivery.State.PENDING, next_attempt_at__lte=now
    )
    if ids is not None:
        due = due.filter(id__in=ids)
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            # Rows another dispatcher is claiming are skipped, not waited for.
            due = due.select_for_update(skip_locked=True)
        chosen = list(
            due.order_by("next_attempt_at").values_list("id", flat=True)[
                :DISPATCH_BATCH
            ]
        )
        Delivery.objects.filter(id__in=chosen, state=Delivery.State.PENDING).update(
            next_attempt_at=until
        )
    return [(delivery_id, until) for delivery_id in chosen]


def deliveries_dispatch(
    *, now: datetime | None = None, resolver: ssrf.Resolver | None = None
) -> int:
    """Send the due deliveries (or queue them for Celery); how many were due."""
    claimed = deliveries_claim_due(now=now)
    if _via_celery():
        _queue(claimed)
    else:
        for delivery_id, until in claimed:
            delivery_attempt(
                delivery_id=delivery_id, claim=until, now=now, resolver=resolver
            )
    return len(claimed)


def _queue(claimed: list[tuple[Any, datetime]]) -> None:
    from kombu.exceptions import OperationalError

    from jobs.tasks import deliver

    for delivery_id, until in claimed:
        try:
            deliver.delay(str(delivery_id), until.isoformat())
        except (OperationalError, OSError) as exc:
            # The claim runs out and the next dispatch queues it again.
            logger.error("%s not queued: %s", delivery_id, exc)


def delivery_attempt(
    *,
    delivery_id: Any,
    claim: datetime,
    now: datetime | None = None,
    resolver: ssrf.Resolver | None = None,
) -> str | None:
    """Make one attempt at a delivery this sender claimed; its new state.

    None when the claim is not this sender's any more (another took over
    after it ran out), so nothing was sent.
    """
    delivery = Delivery.objects.filter(
        id=delivery_id, state=Delivery.State.PENDING, next_attempt_at=claim
    ).first()
    if delivery is None:
        return None
    attempt = delivery.attempts + 1
    body = json.dumps(payload(delivery), separators=(",", ":")).encode()
    status, error, final = _send(delivery, body, attempt, resolver)
    return _record(delivery, attempt, status, error, final, now or timezone.now())


def _send(
    delivery: Delivery, body: bytes, attempt: int, resolver: ssrf.Resolver | None
) -> tuple[int | None, str, bool]:
    """(status, error, final): final means no retry can help."""
    try:
        target = ssrf.check(delivery.url, resolver)
    except ssrf.Refused as exc:
        return None, f"refused: {exc.detail}", True
    secret = callback_secret(delivery.token_id)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "HPCSerA-callback/1",
        "X-Hpcsera-Event": delivery.event,
        "X-Hpcsera-Delivery": str(delivery.id),
        "X-Hpcsera-Attempt": str(attempt),
        SIGNATURE_HEADER: signature(secret, int(time.time()), body),
    }
    try:
        answer = ssrf.post(
            target,
            body,
            headers,
            timeout=_setting("CALLBACK_TIMEOUT_SECONDS"),
            body_limit=RESPONSE_BODY_LIMIT,
        )
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500], False
    if 200 <= answer.status < 300:
        return answer.status, "", False
    if 300 <= answer.status < 400:
        return answer.status, "redirect not followed", False
    return answer.status, f"HTTP {answer.status}", False


def backoff_seconds(attempts: int) -> float:
    """Wait before the attempt after `attempts` failed ones: doubling, capped,
    with jitter so that receivers coming back are not hit all at once."""
    base = _setting("CALLBACK_BACKOFF_SECONDS") * 2 ** min(attempts - 1, 30)
    capped = min(base, _setting("CALLBACK_BACKOFF_MAX_SECONDS"))
    return capped * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto


def _record(
    delivery: Delivery,
    attempt: int,
    status: int | None,
    error: str,
    final: bool,
    now: datetime,
) -> str:
    entry = {"attempt": attempt, "at": now.isoformat(), "status": status}
    entry["error"] = error or None
    if not error:
        state, next_at = Delivery.State.DELIVERED, None
    elif final or attempt >= _setting("CALLBACK_MAX_ATTEMPTS"):
        state, next_at = Delivery.State.FAILED, None
    else:
        state = Delivery.State.PENDING
        next_at = now + timedelta(seconds=backoff_seconds(attempt))
    # Conditional on the attempt count: a sender whose claim ran out and was
    # taken over cannot record over the newer attempt.
    Delivery.objects.filter(
        id=delivery.id, attempts=delivery.attempts, state=Delivery.State.PENDING
    ).update(
        attempts=attempt,
        state=state,
        next_attempt_at=next_at,
        last_status=status,
        last_error=error,
        history=[*delivery.history, entry],
    )
    if error:
        logger.warning("%s callback attempt %d failed: %s", delivery.id, attempt, error)
    else:
        logger.info("%s callback delivered on attempt %d", delivery.id, attempt)
    return state


# What is sent and shown


def payload(delivery: Delivery) -> dict[str, Any]:
    """The POSTed body, read from the call or job as it is when sending."""
    if delivery.call_id:
        call = FunctionCall.objects.get(id=delivery.call_id)
        return {
            "event": delivery.event,
            "delivery_id": str(delivery.id),
            **_call_result(call),
            "status_url": reverse("call-detail", args=[call.id]),
        }
    from jobs.presenters import job_state

    calls = list(
        FunctionCall.objects.filter(job_id=delivery.job_id).order_by("created_at", "id")
    )
    job = Job.objects.get(id=delivery.job_id)
    return {
        "event": delivery.event,
        "delivery_id": str(delivery.id),
        "job_id": str(job.id),
        "name": job.name,
        "state": job_state([c.state for c in calls]),
        "calls": [_call_result(c) for c in calls],
        "job_url": reverse("job-detail", args=[job.id]),
    }


def _call_result(call: FunctionCall) -> dict[str, Any]:
    from jobs.presenters import call_result

    succeeded = call.state == CallState.SUCCEEDED
    return {
        "job_id": str(call.job_id),
        "call_id": str(call.id),
        "name": call.name or None,
        "function": call.function,
        "state": call.state,
        "exit_code": call.exit_code,
        "reason": call.reason,
        "output": call_result(call) if succeeded else None,
        "stdout_truncated": call.stdout_truncated,
        "finished_at": call.finished_at.isoformat() if call.finished_at else None,
    }


def delivery_detail(delivery: Delivery | None) -> dict[str, Any] | None:
    if delivery is None:
        return None
    at = delivery.next_attempt_at
    return {
        "delivery_id": str(delivery.id),
        "event": delivery.event,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": at.isoformat()
        if at and delivery.state == Delivery.State.PENDING
        else None,
        "history": delivery.history,
    }
