"""How jobs and calls look in API answers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.urls import reverse

from hpcsera.parsers import strict_loads
from jobs.callbacks import delivery_detail
from jobs.models import (
    HELD_STATES,
    TERMINAL_STATES,
    Agent,
    CallEdge,
    CallState,
    Delivery,
    FunctionCall,
    Job,
)


def call_result(call: FunctionCall) -> Any:
    """The function's result: its stdout as JSON when it is JSON, else as text."""
    try:
        return strict_loads(call.stdout)
    except ValueError:
        return call.stdout


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def call_urls(call: FunctionCall) -> dict[str, str]:
    return {
        "status_url": reverse("call-detail", args=[call.id]),
        "job_url": reverse("job-detail", args=[call.job_id]),
    }


def call_summary(call: FunctionCall) -> dict[str, Any]:
    return {
        "job_id": str(call.job_id),
        "call_id": str(call.id),
        "function": call.function,
        "state": call.state,
        **call_urls(call),
    }


def after_names(call_ids: Iterable[Any]) -> dict[Any, list[str]]:
    """The names of the calls each of `call_ids` runs after, in one query."""
    found: dict[Any, list[str]] = defaultdict(list)
    edges = CallEdge.objects.filter(downstream_id__in=list(call_ids))
    for downstream, name in edges.values_list("downstream_id", "upstream__name"):
        found[downstream].append(name)
    return found


def call_deliveries(call_ids: Iterable[Any]) -> dict[Any, Delivery]:
    """The callback delivery of each of `call_ids` that has one, in one query."""
    found = Delivery.objects.filter(call_id__in=list(call_ids))
    return {d.call_id: d for d in found}


def calls_awaiting_approval(calls: Iterable[FunctionCall]) -> set[Any]:
    """The held calls whose agent waits for its owner's approval to run them."""
    from consent.models import RunApproval

    held = [c.id for c in calls if c.state in HELD_STATES]
    if not held:
        return set()
    return set(
        RunApproval.objects.filter(
            call_id__in=held, state=RunApproval.State.PENDING
        ).values_list("call_id", flat=True)
    )


def call_detail(
    call: FunctionCall,
    after: dict[Any, list[str]] | None = None,
    deliveries: dict[Any, Delivery] | None = None,
    awaiting: set[Any] | None = None,
) -> dict[str, Any]:
    if after is None:
        after = after_names([call.id])
    if deliveries is None:
        deliveries = call_deliveries([call.id]) if call.callback_url else {}
    if awaiting is None:
        awaiting = calls_awaiting_approval([call])
    output = call_result(call) if call.state == CallState.SUCCEEDED else None
    duration = None
    if call.started_at and call.finished_at:
        duration = (call.finished_at - call.started_at).total_seconds()
    return {
        "id": str(call.id),
        "job_id": str(call.job_id),
        "name": call.name or None,
        "function": call.function,
        "mode": call.mode,
        "site": call.site or None,
        "agent_site": call.agent.site if call.agent_id and call.agent else None,
        "args": call.args,
        "has_input": call.input is not None,
        "time_limit_seconds": call.time_limit_seconds,
        "after": sorted(after.get(call.id, [])),
        "virtual": call.virtual,
        "deadline_at": _iso(call.deadline_at),
        "held": call.held,
        "state": call.state,
        "terminal": call.state in TERMINAL_STATES,
        "reason": call.reason,
        # The agent's owner must approve this run first (agent-side consent),
        # under Requests in the web UI.
        "waiting_for": "approval" if call.id in awaiting else None,
        "attempt": call.attempt,
        "lease_expires_at": _iso(call.lease_expires_at),
        "exit_code": call.exit_code,
        "batch_job_id": call.batch_job_id or None,
        "output": output,
        "stdout": call.stdout,
        "stdout_truncated": call.stdout_truncated,
        "stderr_tail": call.stderr_tail,
        "callback_url": call.callback_url or None,
        "callback": delivery_detail(deliveries.get(call.id)),
        "timings": {
            "created_at": _iso(call.created_at),
            "leased_at": _iso(call.leased_at),
            "started_at": _iso(call.started_at),
            "finished_at": _iso(call.finished_at),
            "duration_seconds": duration,
        },
        **call_urls(call),
    }


def job_state(states: list[str]) -> str:
    """One word for a job: the worst finished state, or how far it has come."""
    if not states:
        return "empty"
    for state in (CallState.FAILED, CallState.LOST, CallState.CANCELLED):
        if state in states and all(s in TERMINAL_STATES for s in states):
            return state
    if all(s == CallState.SUCCEEDED for s in states):
        return CallState.SUCCEEDED
    if any(s in (CallState.RUNNING, CallState.LEASED) for s in states):
        return CallState.RUNNING
    if any(s in TERMINAL_STATES for s in states):
        return CallState.RUNNING
    return CallState.PENDING


def job_detail(
    job: Job,
    calls: list[FunctionCall],
    after: dict[Any, list[str]] | None = None,
) -> dict[str, Any]:
    if after is None:
        after = after_names(c.id for c in calls)
    deliveries = call_deliveries(c.id for c in calls if c.callback_url)
    awaiting = calls_awaiting_approval(calls)
    own = job.deliveries.filter(call=None).first() if job.callback_done else None
    return {
        "id": str(job.id),
        "name": job.name,
        "tag": job.tag,
        "state": job_state([c.state for c in calls]),
        "created_at": _iso(job.created_at),
        "callback_url": job.callback_url or None,
        "callback": delivery_detail(own),
        "calls": [call_detail(c, after, deliveries, awaiting) for c in calls],
        "url": reverse("job-detail", args=[job.id]),
    }


def job_calls(job: Job) -> list[FunctionCall]:
    return list(job.calls.select_related("agent").order_by("created_at", "id"))


def job_answer(job: Job) -> dict[str, Any]:
    return job_detail(job, job_calls(job))


def agent_detail(agent: Agent, now: datetime, alive_seconds: int) -> dict[str, Any]:
    """An agent with its liveness: alive when heard from within `alive_seconds`."""
    silent = (now - agent.last_seen_at).total_seconds()
    return {
        "id": str(agent.id),
        "site": agent.site,
        "tag": agent.tag,
        "capabilities": agent.capabilities,
        "version": agent.version,
        "created_at": _iso(agent.created_at),
        "last_seen_at": _iso(agent.last_seen_at),
        "seconds_since_seen": round(max(silent, 0.0), 1),
        "alive": silent <= alive_seconds,
        "calls_held": getattr(agent, "calls_held", None),
        "functions": [
            {"name": f.name, "runner": f.runner, "idempotent": f.idempotent}
            for f in sorted(agent.functions.all(), key=lambda f: f.name)
        ],
        "url": reverse("agent-detail", args=[agent.id]),
    }
