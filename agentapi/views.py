"""What agents call: register an inventory, long-poll for work, report states."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentapi import serializers
from hpcsera.notify import wait_until
from jobs import openapi, selectors
from jobs.dag import calls_announce_stop, calls_to_stop
from jobs.leases import leases_renew
from jobs.models import FunctionCall
from jobs.services import agent_register, call_report, calls_claim, work_channel
from tokens import roles
from tokens.services import token_still_live


def _lease(call: FunctionCall) -> dict:
    return {
        "id": str(call.id),
        "job_id": str(call.job_id),
        "function": call.function,
        "mode": call.mode,
        "args": call.args,
        "input": call.input,
        "time_limit_seconds": call.time_limit_seconds,
        "lease_expires_at": call.lease_expires_at.isoformat(),
        # Calls to submit after, with a batch-system dependency (jobs.chains).
        "after": getattr(call, "after", []),
    }


class AgentRegisterView(APIView):
    required_roles = {"POST": {roles.GET_JOB}}

    @extend_schema(
        request=serializers.Registration,
        responses={200: openapi.Registered, **openapi.errors(400)},
    )
    def post(self, request: Request) -> Response:
        data = serializers.Registration(data=request.data)
        data.is_valid(raise_exception=True)
        agent = agent_register(token=request.auth, **data.validated_data)
        return Response(
            {
                "agent_id": str(agent.id),
                "site": agent.site,
                "functions": sorted(
                    f["name"] for f in data.validated_data["functions"]
                ),
                "claim_wait_seconds": settings.HPCSERA["CLAIM_WAIT_SECONDS"],
                "lease_seconds": settings.HPCSERA["LEASE_SECONDS"],
            },
            status=200,
        )


class AgentClaimView(APIView):
    """Long-poll: answers as soon as work is leased, or empty after `wait`."""

    required_roles = {"POST": {roles.GET_JOB}}

    @extend_schema(
        request=serializers.Claim,
        responses={200: openapi.Leases, **openapi.errors(400, 404)},
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_get(token=request.auth, agent_id=agent_id)
        data = serializers.Claim(data=request.data)
        data.is_valid(raise_exception=True)
        lease_seconds = settings.HPCSERA["LEASE_SECONDS"]

        looked = []

        def claim() -> list[FunctionCall]:
            # A long-poll outlives many checks: the token may be revoked
            # meanwhile, and then no work may go to it. The first look comes
            # right after authentication and needs no second check.
            if looked:
                token_still_live(request.auth)
            looked.append(True)
            return calls_claim(
                agent=agent,
                max_calls=data.validated_data["max"],
                lease_seconds=lease_seconds,
                session=data.validated_data["session"],
                chain=data.validated_data["chain"],
            )

        def claim_or_announce() -> tuple[list[FunctionCall], int] | None:
            announced = calls_announce_stop(agent_id=agent.id)
            calls = claim()
            return (calls, announced) if calls or announced else None

        found = wait_until(
            work_channel(agent.user_id, agent.tag),
            claim_or_announce,
            data.validated_data["wait"],
            on_long_wait=connection.close,
            # A long-poll gives its connection back at once: agents may be many.
            hold_seconds=0.0,
        )
        calls = found[0] if found else []
        stop = calls_to_stop(agent_id=agent.id)
        return Response(
            {
                "calls": [_lease(c) for c in calls],
                # Calls cancelled while this agent holds them: stop them and
                # report how they ended.
                "cancel": [
                    {"id": str(c.id), "batch_job_id": c.batch_job_id or None}
                    for c in stop
                ],
            }
        )


class AgentHeartbeatView(APIView):
    """Renews the leases of the calls the agent names; says which it lost."""

    required_roles = {"POST": {roles.UPDATE_JOB_STATUS}}

    @extend_schema(
        request=serializers.Heartbeat,
        responses={200: openapi.HeartbeatAnswer, **openapi.errors(400, 404)},
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_get(token=request.auth, agent_id=agent_id)
        data = serializers.Heartbeat(data=request.data)
        data.is_valid(raise_exception=True)
        expires, released = leases_renew(
            agent=agent,
            call_ids=data.validated_data["calls"],
            complete=data.validated_data["complete"],
        )
        return Response(
            {
                "lease_expires_at": expires.isoformat(),
                "lease_seconds": settings.HPCSERA["LEASE_SECONDS"],
                "released": sorted(released),
            }
        )


class AgentReportView(APIView):
    required_roles = {"POST": {roles.UPDATE_JOB_STATUS}}

    @extend_schema(
        request=serializers.Report,
        responses={200: openapi.Reported, **openapi.errors(400, 404, 409)},
    )
    def post(self, request: Request, agent_id: str, call_id: str) -> Response:
        agent = selectors.agent_get(token=request.auth, agent_id=agent_id)
        data = serializers.Report(data=request.data)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        state = fields.pop("state")
        call = call_report(
            agent=agent,
            call_id=selectors.parse_uuid(call_id),
            state=state,
            fields=fields,
        )
        return Response({"id": str(call.id), "state": call.state})
