"""Writes on jobs and calls. Views parse and authorize; the rules live here."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, F, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from hpcsera.errors import Conflict, NotFound
from hpcsera.notify import hub, publish_on_commit
from jobs import leases
from jobs.chains import calls_lease_ahead
from jobs.channels import call_channel, work_channel
from jobs.models import (
    ALLOWED_FROM,
    TERMINAL_STATES,
    Agent,
    CallState,
    Function,
    FunctionCall,
    Job,
)
from tokens.models import Token

logger = logging.getLogger(__name__)

AGENT_SEEN_RESOLUTION = timedelta(seconds=10)


def function_is_offered(*, token: Token, name: str, site: str = "") -> bool:
    offers = Function.objects.filter(
        agent__user_id=token.user_id, agent__tag=token.tag, name=name
    )
    if site:
        offers = offers.filter(agent__site=site)
    return offers.exists()


def faas_submit(
    *,
    token: Token,
    function: str,
    mode: str,
    args: dict[str, str],
    input_text: str | None,
    site: str = "",
    time_limit_seconds: int | None = None,
    callback_url: str = "",
) -> FunctionCall:
    """Queue one call of `function` in a job of its own; committed on return.

    `callback_url` must have passed jobs.callbacks.callback_url_check."""
    if not function_is_offered(token=token, name=function, site=site):
        where = f" on site {site!r}" if site else ""
        raise NotFound(
            f"No agent of yours offers the function {function!r}{where}."
            + _upload_hint(token, function),
            code="unknown_function",
        )
    with transaction.atomic():
        job = Job.objects.create(
            user_id=token.user_id, tag=token.tag, name=function, token_id=token.id
        )
        call = FunctionCall.objects.create(
            job=job,
            user_id=token.user_id,
            tag=token.tag,
            function=function,
            mode=mode,
            site=site,
            args=args,
            input=input_text,
            time_limit_seconds=time_limit_seconds,
            callback_url=callback_url,
            state=CallState.READY,
        )
        publish_on_commit(work_channel(token.user_id, token.tag))
    logger.debug("%s queued %s (%s)", call.id, function, mode)
    return call


def agent_register(
    *,
    token: Token,
    site: str,
    capabilities: list[str],
    functions: list[dict[str, Any]],
    version: str,
    session: str = "",
) -> Agent:
    """Create or refresh the agent of this user, tag and site, with its inventory."""
    with transaction.atomic():
        agent, _ = Agent.objects.select_for_update().get_or_create(
            user_id=token.user_id,
            tag=token.tag,
            site=site,
            defaults={"capabilities": capabilities, "version": version},
        )
        agent.capabilities = capabilities
        agent.version = version
        agent.session = session
        agent.last_seen_at = timezone.now()
        agent.save(update_fields=["capabilities", "version", "session", "last_seen_at"])
        agent.functions.all().delete()
        Function.objects.bulk_create(
            Function(
                agent=agent,
                name=f["name"],
                runner=f["runner"],
                idempotent=f.get("idempotent", False),
            )
            for f in functions
        )
    logger.info("%s registered with %d functions", agent.id, len(functions))
    return agent


def _upload_hint(token: Token, function: str) -> str:
    """Why an uploaded function may not be callable yet (same user and tag)."""
    from consent.models import CodeUpload

    upload = (
        CodeUpload.objects.filter(
            user_id=token.user_id,
            tag=token.tag,
            function=function,
            state__in=(CodeUpload.State.PENDING, CodeUpload.State.APPROVED),
        )
        .only("id", "state")
        .order_by("-created_at")
        .first()
    )
    if upload is None:
        return ""
    if upload.state == CodeUpload.State.PENDING:
        return f" An upload of it ({upload.id}) waits for your approval."
    return (
        f" An approved upload of it ({upload.id}) is not deployed yet; its "
        "deployments show at /api/v1/code/" + str(upload.id) + "."
    )


def calls_claim(
    *,
    agent: Agent,
    max_calls: int,
    lease_seconds: int,
    session: str = "",
    chain: bool = False,
) -> list[FunctionCall]:
    """Lease up to `max_calls` ready calls to `agent`; each to exactly one agent.

    With `session`, only while it is the agent's current one: the long-poll of
    a killed agent process must not lease calls nobody will receive. With
    `chain`, up to `max_calls` more are leased ahead of their dependencies
    (jobs.chains), after the calls they wait for; each call gets `after`.
    """
    leases.leases_expire_due()
    now = timezone.now()
    queue = (
        FunctionCall.objects.filter(
            state=CallState.READY,
            virtual=False,
            user_id=agent.user_id,
            tag=agent.tag,
            function__in=Function.objects.filter(agent=agent).values("name"),
        )
        .filter(Q(site="") | Q(site=agent.site))
        .order_by("created_at")
    )
    if session:
        current = Agent.objects.filter(pk=agent.pk, session=session)
        queue = queue.filter(Exists(current))
    lease = {
        "state": CallState.LEASED,
        "agent_id": agent.id,
        "leased_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "attempt": F("attempt") + 1,
    }
    with transaction.atomic():
        calls = _lease_ready(queue, lease, max_calls)
        for call in calls:
            call.state = CallState.LEASED
            call.attempt += 1
            call.after = []
        if chain and calls:
            calls += calls_lease_ahead(
                agent=agent, leased=calls, lease=lease, limit=max_calls
            )
    for call in calls:
        for name, value in lease.items():
            if name not in ("attempt", "state"):
                setattr(call, name, value)
    _agent_seen(agent, now)
    return calls


def _lease_ready(
    queue: QuerySet, lease: dict[str, Any], max_calls: int
) -> list[FunctionCall]:
    if connection.features.has_select_for_update_skip_locked:
        # Rows another claimer has locked are skipped, not waited for.
        calls = list(queue.select_for_update(skip_locked=True)[:max_calls])
        FunctionCall.objects.filter(id__in=[c.id for c in calls]).update(**lease)
        return calls
    # SQLite: one writer at a time; the state condition keeps it exact.
    calls = []
    for call in queue[: max_calls * 2]:
        if queue.filter(id=call.id).update(**lease):
            calls.append(call)
        if len(calls) >= max_calls:
            break
    return calls


def _agent_seen(agent: Agent, now: datetime) -> None:
    # Writing on every long-poll would turn each idle agent into a writer.
    if now - agent.last_seen_at > AGENT_SEEN_RESOLUTION:
        Agent.objects.filter(pk=agent.pk).update(last_seen_at=now)


def call_report(
    *, agent: Agent, call_id: Any, state: str, fields: dict[str, Any]
) -> FunctionCall:
    """Apply an agent's report on a call it holds. Repeating a report is harmless."""
    now = timezone.now()
    changes = dict(fields)
    if state == CallState.RUNNING:
        changes["started_at"] = now
        # A report proves the agent alive, as a heartbeat does.
        changes["lease_expires_at"] = now + timedelta(seconds=leases.lease_seconds())
    if state in TERMINAL_STATES:
        changes["finished_at"] = now
        changes["lease_expires_at"] = None
        # A call that never reported running started when it was leased.
        changes["started_at"] = Coalesce(F("started_at"), F("leased_at"))
    with transaction.atomic():
        moved = FunctionCall.objects.filter(
            id=call_id, agent=agent, state__in=ALLOWED_FROM[state]
        ).update(state=state, **changes)
        call = FunctionCall.objects.filter(id=call_id, agent=agent).first()
        if moved and state in TERMINAL_STATES:
            # Imported here: the DAG module builds on this one.
            from jobs.dag import call_ended

            call_ended(call)
    if call is None:
        raise NotFound("No such call leased to this agent.")
    if moved:
        hub().publish(call_channel(call.id))
        logger.debug("%s %s by agent %s", call.id, state, agent.id)
    if not moved and state in TERMINAL_STATES and _confirm_cancel(call, fields):
        return call
    if not moved and call.state != state:
        raise Conflict(
            f"The call is {call.state}; it cannot become {state}.",
            code="invalid_transition",
            state=call.state,
        )
    return call


def _confirm_cancel(call: FunctionCall, fields: dict[str, Any]) -> bool:
    """Record how a call cancelled while an agent held it really ended.

    The agent's final report (what the process or the batch system said)
    lands on the cancelled call once; the call stays cancelled.
    """
    if call.state != CallState.CANCELLED or call.finished_at is not None:
        return False
    details = {k: v for k, v in fields.items() if k != "reason"}
    if fields.get("reason"):
        details["reason"] = f"{call.reason}; {fields['reason']}"
    FunctionCall.objects.filter(
        id=call.id, state=CallState.CANCELLED, finished_at__isnull=True
    ).update(finished_at=timezone.now(), **details)
    call.refresh_from_db()
    return True
