"""Chains handed to the batch system: leasing calls ahead of their dependencies.

When a claim leases batch calls, their pending dependents are leased too, to
the same agent, if every dependency they still wait for is a batch call that
agent holds. The agent submits such a call at once with a batch-system
dependency (`sbatch --dependency=afterok:<job ids>`), so the batch system
starts it the moment its predecessors end, without a round trip through the
server. The lease names those predecessors in `after`.

Resolution stays on the server (jobs.dag): a success counts the call down as
usual (it is already leased, so nothing readies it); any other end cancels it
at the agent, which cancels its batch job, since the batch system would keep
it waiting on a dependency that can never be met.

TODO: when only a predecessor's lease runs out and it is queued again (its
function is idempotent), a step leased ahead stays with the agent, its batch
job waiting on the old predecessor's job; it ends when that job's end is
reported or its own lease runs out. Releasing the steps ahead with their
predecessor needs the sweep to follow edges, which it does not do yet.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from jobs.models import HELD_STATES, Agent, CallEdge, CallState, Function, FunctionCall

# A claim follows chains this many steps deep; deeper steps are leased ahead
# by the claims that follow, once the steps before them are held.
CHAIN_DEPTH = 8


def _batch_functions(agent: Agent) -> QuerySet:
    return Function.objects.filter(agent=agent, runner=Function.Runner.SLURM).values(
        "name"
    )


def _in_chain(agent: Agent, functions: QuerySet) -> Q:
    """Calls whose batch jobs this agent holds: predecessors a chain may have."""
    return Q(
        agent=agent,
        state__in=HELD_STATES,
        mode=FunctionCall.Mode.ASYNC,
        function__in=functions,
    )


def calls_lease_ahead(
    *, agent: Agent, leased: list[FunctionCall], lease: dict[str, Any], limit: int
) -> list[FunctionCall]:
    """Lease the dependents of `leased` that can be handed to the batch system
    with them; at most `limit`, predecessors always before their dependents.

    Runs in the transaction of the claim, after `leased` were leased.
    """
    functions = _batch_functions(agent)
    chained = set(functions.values_list("name", flat=True))
    frontier = [
        c.id for c in leased if c.function in chained and c.mode == c.Mode.ASYNC
    ]
    ahead: list[FunctionCall] = []
    for _ in range(CHAIN_DEPTH):
        if not frontier or len(ahead) >= limit:
            break
        found = _lease_step(agent, functions, frontier, lease, limit - len(ahead))
        ahead += found
        frontier = [c.id for c in found]
    _attach_after(ahead)
    return ahead


def _lease_step(
    agent: Agent,
    functions: QuerySet,
    frontier: list[Any],
    lease: dict[str, Any],
    limit: int,
) -> list[FunctionCall]:
    outside = (
        CallEdge.objects.filter(downstream=OuterRef("pk"))
        .exclude(upstream__state=CallState.SUCCEEDED)
        .exclude(upstream__in=FunctionCall.objects.filter(_in_chain(agent, functions)))
    )
    candidates = (
        FunctionCall.objects.filter(
            id__in=CallEdge.objects.filter(upstream_id__in=frontier).values(
                "downstream_id"
            ),
            state=CallState.PENDING,
            held=False,
            virtual=False,
            mode=FunctionCall.Mode.ASYNC,
            user_id=agent.user_id,
            tag=agent.tag,
            function__in=functions,
        )
        .filter(Q(site="") | Q(site=agent.site))
        .exclude(Exists(outside))
        .order_by("created_at")
    )
    if connection.features.has_select_for_update_skip_locked:
        candidates = candidates.select_for_update(skip_locked=True)
    leased = []
    for call in candidates[:limit]:
        # Conditional: a cancellation or a hold that came first wins.
        if FunctionCall.objects.filter(id=call.id, state=CallState.PENDING).update(
            **lease
        ):
            call.state = CallState.LEASED
            call.attempt += 1
            leased.append(call)
    return leased


def _attach_after(calls: list[FunctionCall]) -> None:
    """Set `after` on each call: the predecessors it still waits for."""
    edges = CallEdge.objects.filter(downstream__in=[c.id for c in calls]).exclude(
        upstream__state=CallState.SUCCEEDED
    )
    after: dict[Any, list[str]] = {}
    for downstream, upstream in edges.values_list("downstream_id", "upstream_id"):
        after.setdefault(downstream, []).append(str(upstream))
    for call in calls:
        call.after = sorted(after.get(call.id, []))
