"""Reads. Each takes the requesting token, so the project fence (same user and
same tag) cannot be forgotten: anything outside it is simply not found."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Count, Q, QuerySet

from hpcsera.errors import NotFound
from jobs.models import HELD_STATES, Agent, FunctionCall, Job
from tokens.models import Token


def parse_uuid(raw: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        return None


def jobs_visible(*, token: Token) -> QuerySet[Job]:
    return Job.objects.filter(user_id=token.user_id, tag=token.tag)


def job_get(*, token: Token, job_id: Any) -> Job:
    job = jobs_visible(token=token).filter(id=parse_uuid(job_id)).first()
    if job is None:
        raise NotFound("No such job.")
    return job


def call_get(*, token: Token, call_id: Any) -> FunctionCall:
    call = (
        FunctionCall.objects.filter(user_id=token.user_id, tag=token.tag)
        .select_related("agent")
        .filter(id=parse_uuid(call_id))
        .first()
    )
    if call is None:
        raise NotFound("No such call.")
    return call


def agents_visible(*, token: Token) -> QuerySet[Agent]:
    return Agent.objects.filter(user_id=token.user_id, tag=token.tag)


def agents_with_load(*, token: Token) -> QuerySet[Agent]:
    """The visible agents with their functions and how many calls each holds."""
    held = Count("calls", filter=Q(calls__state__in=HELD_STATES))
    return (
        agents_visible(token=token)
        .annotate(calls_held=held)
        .prefetch_related("functions")
        .order_by("site")
    )


def agent_get(*, token: Token, agent_id: Any) -> Agent:
    agent = agents_visible(token=token).filter(id=parse_uuid(agent_id)).first()
    if agent is None:
        raise NotFound("No such agent.")
    return agent
