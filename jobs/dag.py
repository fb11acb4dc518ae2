"""Jobs as graphs of calls: submitting them, resolving dependencies when a call
ends, finishing virtual calls, and their deadlines.

Resolution runs inside the transaction of each terminal transition and reads
only the ended call's outgoing edges, so its cost grows with the edges
touched, never with the number of calls in the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from hpcsera.errors import BadInput, Conflict
from hpcsera.notify import publish_on_commit
from jobs import callbacks, documents, selectors
from jobs.models import (
    ALLOWED_FROM,
    HELD_STATES,
    TERMINAL_STATES,
    VIRTUAL_FINISH_FROM,
    CallEdge,
    CallState,
    Function,
    FunctionCall,
    Job,
)
from jobs.services import call_channel, work_channel
from tokens.models import Token

logger = logging.getLogger(__name__)


def job_submit(*, token: Token, spec: documents.JobSpec) -> Job:
    """Create a job with all its calls and edges; committed on return."""
    _check_functions(token, spec.calls)
    with transaction.atomic():
        job = Job.objects.create(
            user_id=token.user_id,
            tag=token.tag,
            name=spec.name,
            callback_url=spec.callback_url,
            token_id=token.id,
        )
        _create_calls(job, spec.calls, existing={})
    logger.info("%s submitted with %d calls", job.id, len(spec.calls))
    return job


def job_add_calls(*, token: Token, job_id: Any, raw_calls: Any) -> list[FunctionCall]:
    """Add calls to a job; they may run after calls the job already has."""
    with transaction.atomic():
        job = selectors.job_get(token=token, job_id=job_id)
        # Locking the job serialises additions, so two cannot both pass the
        # name check; the upstream rows are locked below.
        Job.objects.select_for_update().filter(pk=job.pk).first()
        existing = {c.name: c for c in job.calls.exclude(name="")}
        specs = documents.call_specs(raw_calls, frozenset(existing))
        _check_functions(token, specs)
        created = _create_calls(job, specs, existing)
    logger.info("%s got %d more calls", job.id, len(created))
    return created


def _check_functions(token: Token, specs: Iterable[documents.CallSpec]) -> None:
    wanted = {s.function for s in specs if not s.virtual}
    offered = set(
        Function.objects.filter(
            agent__user_id=token.user_id, agent__tag=token.tag, name__in=wanted
        ).values_list("name", flat=True)
    )
    for spec in specs:
        if not spec.virtual and spec.function not in offered:
            raise BadInput(
                f"The call {spec.name!r} names the function {spec.function!r}, "
                "which no agent of yours offers.",
                code="unknown_function",
                call=spec.name,
            )


def _create_calls(
    job: Job, specs: list[documents.CallSpec], existing: dict[str, FunctionCall]
) -> list[FunctionCall]:
    now = timezone.now()
    # Existing upstream calls are locked, so none of them can end between
    # reading its state here and the edge to it being committed: its
    # resolution would otherwise miss the new edge.
    upstream_names = {n for s in specs for n in s.after if n in existing}
    upstream = {
        c.name: c
        for c in FunctionCall.objects.select_for_update().filter(
            job=job, name__in=upstream_names
        )
    }
    calls: dict[str, FunctionCall] = {}
    for index, spec in enumerate(specs):
        calls[spec.name] = FunctionCall(
            job=job,
            user_id=job.user_id,
            tag=job.tag,
            name=spec.name,
            function=spec.function,
            mode=FunctionCall.Mode.ASYNC,
            site=spec.site,
            args=spec.args,
            input=spec.input_text,
            time_limit_seconds=spec.time_limit_seconds,
            virtual=spec.virtual,
            deadline_at=(
                now + timedelta(seconds=spec.deadline_seconds) if spec.virtual else None
            ),
            state=CallState.PENDING,
            # A microsecond apart: listings and the claim queue keep the
            # document's order.
            created_at=now + timedelta(microseconds=index),
        )
    ended: list[FunctionCall] = []
    for spec in specs:
        call = calls[spec.name]
        old = [upstream[n] for n in spec.after if n in upstream]
        call.open_deps = len(spec.after) - sum(
            1 for u in old if u.state == CallState.SUCCEEDED
        )
        doomed = next((u for u in old if u.state in _UNSUCCESSFUL), None)
        if doomed is not None:
            call.state = CallState.CANCELLED
            call.reason = _dependency_reason(doomed.name, doomed.state)
            call.finished_at = now
            ended.append(call)
        elif call.open_deps == 0:
            call.state = CallState.READY
    FunctionCall.objects.bulk_create(calls.values())
    CallEdge.objects.bulk_create(
        CallEdge(
            upstream=calls.get(name) or upstream[name], downstream=calls[spec.name]
        )
        for spec in specs
        for name in spec.after
    )
    # A new call cancelled at birth passes that on to new calls after it.
    resolve([(c.id, c.state, c.name) for c in ended])
    if any(c.state == CallState.READY and not c.virtual for c in calls.values()):
        _publish_work(job.user_id, job.tag)
    return list(calls.values())


_UNSUCCESSFUL = TERMINAL_STATES - {CallState.SUCCEEDED}


def _dependency_reason(name: str, state: str) -> str:
    return f"dependency {name!r} ended {state}"


def resolve(ended: list[tuple[Any, str, str]]) -> None:
    """Settle the dependents of calls that just ended, given as (id, state, name).

    A success counts down each dependent's open dependencies and readies those
    at zero; any other end cancels the dependents, and theirs in turn. Callers
    run this in the transaction of the transition, after the conditional
    UPDATE won, so each end is resolved exactly once.
    """
    queue = list(ended)
    readied: set[tuple[int, str]] = set()
    settled = []
    while queue:
        call_id, state, name = queue.pop()
        settled.append(call_id)
        downstream = list(
            CallEdge.objects.filter(upstream_id=call_id).values_list(
                "downstream_id", flat=True
            )
        )
        if not downstream:
            continue
        if state == CallState.SUCCEEDED:
            readied |= _count_down(downstream)
        else:
            queue.extend(_cancel_dependents(downstream, name, state))
    for user_id, tag in readied:
        _publish_work(user_id, tag)
    # Every end, cascaded cancellations included, passes through here once.
    callbacks.deliveries_create(settled)


def _count_down(downstream: list[Any]) -> set[tuple[int, str]]:
    FunctionCall.objects.filter(id__in=downstream).update(open_deps=F("open_deps") - 1)
    ready = FunctionCall.objects.filter(
        id__in=downstream, state=CallState.PENDING, open_deps=0, held=False
    )
    owners = set(ready.filter(virtual=False).values_list("user_id", "tag"))
    ready.filter(state__in=ALLOWED_FROM[CallState.READY]).update(state=CallState.READY)
    return owners


def _cancel_dependents(
    downstream: list[Any], name: str, state: str
) -> list[tuple[Any, str, str]]:
    ended = []
    reason = _dependency_reason(name, state)
    for call_id, call_name, call_state in FunctionCall.objects.filter(
        id__in=downstream, state__in=_WAITING
    ).values_list("id", "name", "state"):
        if _cancel_dependent(call_id, call_state, reason):
            ended.append((call_id, CallState.CANCELLED, call_name))
            _publish_call(call_id)
    return ended


# A dependent of an unfinished call is pending, or held by an agent when it
# was leased ahead as part of a chain (jobs.chains).
_WAITING = {CallState.PENDING, CallState.LEASED, CallState.RUNNING}


def _cancel_dependent(call_id: Any, state: str, reason: str) -> bool:
    """Cancel one dependent; conditional on its state, so a concurrent
    cancellation is not counted twice.

    A claim leasing the call ahead may hold its row meanwhile: the update then
    waits, finds it leased, and is tried again for that state. A call an agent
    holds stays open (finished_at unset) until the agent stopped its batch job,
    which would otherwise wait forever on a dependency that cannot be met.
    """
    for _ in range(3):
        at_agent = state in HELD_STATES
        if FunctionCall.objects.filter(id=call_id, state=state).update(
            state=CallState.CANCELLED,
            reason=reason,
            finished_at=None if at_agent else timezone.now(),
            # Kept for calls at an agent: it marks them not yet announced.
            lease_expires_at=F("lease_expires_at") if at_agent else None,
        ):
            if at_agent:
                _publish_agent(call_id)
            return True
        state = (
            FunctionCall.objects.filter(id=call_id).values_list("state", flat=True)
        ).first()
        if state not in _WAITING:
            return False
    return False


def _publish_agent(call_id: Any) -> None:
    owner = FunctionCall.objects.filter(id=call_id).values_list("user_id", "tag")
    for user_id, tag in owner:
        _publish_work(user_id, tag)


def _publish_work(user_id: int, tag: str) -> None:
    publish_on_commit(work_channel(user_id, tag))


def _publish_call(call_id: Any) -> None:
    publish_on_commit(call_channel(call_id))


def call_finish(
    *, token: Token, call_id: Any, succeeded: bool, message: str
) -> FunctionCall:
    """End a virtual call from outside: the external event it waited for."""
    call = selectors.call_get(token=token, call_id=call_id)
    if not call.virtual:
        raise Conflict(
            "Only virtual calls are finished this way; agents report the others.",
            code="not_virtual",
        )
    state = CallState.SUCCEEDED if succeeded else CallState.FAILED
    changes = {"stdout": message} if succeeded else {"reason": message}
    if _end(call, state, VIRTUAL_FINISH_FROM, **changes):
        return FunctionCall.objects.get(pk=call.pk)
    call.refresh_from_db()
    if call.state == state:
        return call  # repeating the same finish is harmless
    raise Conflict(
        f"The call is {call.state}; it cannot become {state}.",
        code="invalid_transition",
        state=call.state,
    )


def _end(call: FunctionCall, state: str, allowed: set[str], **changes: Any) -> bool:
    """Move one call to a terminal state if it is in `allowed`; resolve it."""
    with transaction.atomic():
        moved = FunctionCall.objects.filter(id=call.id, state__in=allowed).update(
            state=state, finished_at=timezone.now(), **changes
        )
        if moved:
            resolve([(call.id, state, call.name)])
            _publish_call(call.id)
    return bool(moved)


def calls_expire_deadlines(*, now: datetime | None = None, batch: int = 500) -> int:
    """Fail virtual calls whose deadline passed; the number failed."""
    now = now or timezone.now()
    due = FunctionCall.objects.filter(
        virtual=True,
        state__in=[CallState.PENDING, CallState.READY],
        deadline_at__lte=now,
    ).order_by("deadline_at")[:batch]
    failed = 0
    for call in due:
        reason = (
            f"deadline passed: nobody finished this virtual call by "
            f"{call.deadline_at.isoformat()}"
        )
        if _end(
            call, CallState.FAILED, {CallState.PENDING, CallState.READY}, reason=reason
        ):
            failed += 1
            logger.info("%s failed at its deadline", call.id)
    return failed


def call_ended(call: FunctionCall) -> None:
    """Hook for every other terminal transition (agent reports, lease expiry):
    call it inside the transaction whose conditional UPDATE ended `call`."""
    if call.state in TERMINAL_STATES:
        resolve([(call.id, call.state, call.name)])


USER_CANCELLED = "cancelled by the user"


def job_cancel(*, token: Token, job_id: Any) -> Job:
    """Cancel every call of a job that has not ended.

    Calls an agent holds end cancelled at once but stay open (finished_at
    unset) until the agent confirms that it stopped them; the agent learns of
    them in its next claim answer.
    """
    job = selectors.job_get(token=token, job_id=job_id)
    now = timezone.now()
    held_by_agents = False
    with transaction.atomic():
        # Locked: without it, a call an agent moves on (ready -> leased ->
        # running) between this read and the conditional update below would
        # silently stay uncancelled.
        calls = job.calls.select_for_update().filter(
            state__in=ALLOWED_FROM[CallState.CANCELLED]
        )
        for call in calls.only("id", "name", "state"):
            at_agent = call.state in (CallState.LEASED, CallState.RUNNING)
            if FunctionCall.objects.filter(id=call.id, state=call.state).update(
                state=CallState.CANCELLED,
                reason=USER_CANCELLED,
                finished_at=None if at_agent else now,
                # Kept for calls at an agent: it marks them not yet announced.
                lease_expires_at=F("lease_expires_at") if at_agent else None,
            ):
                held_by_agents |= at_agent
                resolve([(call.id, CallState.CANCELLED, call.name)])
                _publish_call(call.id)
        if held_by_agents:
            _publish_work(job.user_id, job.tag)
    logger.info("%s cancelled", job.id)
    return job


def calls_to_stop(*, agent_id: Any) -> list[FunctionCall]:
    """Calls cancelled while this agent held them, not yet confirmed stopped."""
    return list(
        FunctionCall.objects.filter(
            agent_id=agent_id, state=CallState.CANCELLED, finished_at__isnull=True
        ).only("id", "batch_job_id")
    )


def calls_announce_stop(*, agent_id: Any) -> int:
    """Mark this agent's newly cancelled calls announced; how many there were.

    Only new cancellations end an agent's long-poll early. An agent that
    ignores the list is told again in every answer, but is not woken in a loop.
    """
    return FunctionCall.objects.filter(
        agent_id=agent_id,
        state=CallState.CANCELLED,
        finished_at__isnull=True,
        lease_expires_at__isnull=False,
    ).update(lease_expires_at=None)


def call_update(
    *, token: Token, call_id: Any, held: bool | None, args: dict[str, str] | None
) -> FunctionCall:
    """Hold, release or change the arguments of a call no agent has taken."""
    call = selectors.call_get(token=token, call_id=call_id)
    open_states = [CallState.PENDING, CallState.READY]
    with transaction.atomic():
        mine = FunctionCall.objects.filter(id=call.id, state__in=open_states)
        changed = 1
        if args is not None:
            changed = mine.update(args=args)
        if held is True and changed:
            # A ready call goes back to pending; the state condition keeps an
            # agent's claim and the hold from both winning.
            changed = mine.update(held=True, state=CallState.PENDING)
        if held is False and changed:
            changed = mine.update(held=False)
            if (
                mine.filter(open_deps=0, state=CallState.PENDING).update(
                    state=CallState.READY
                )
                and not call.virtual
            ):
                _publish_work(call.user_id, call.tag)
        if not changed:
            call.refresh_from_db()
            raise Conflict(
                f"The call is {call.state}; only pending or ready calls change.",
                code="invalid_transition",
                state=call.state,
            )
    return FunctionCall.objects.select_related("agent").get(pk=call.pk)
