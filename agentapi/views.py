"""What agents call: register an inventory, long-poll for work, report states."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agentapi import serializers
from consent import approvals, code
from consent.models import Deployment, RunApproval
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
                # So that the agent can say what its configuration cannot do.
                "roles": sorted(request.auth.role_set),
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

        offered: list[Deployment] = []

        def claim_or_announce() -> tuple[list[FunctionCall], int] | None:
            announced = calls_announce_stop(agent_id=agent.id)
            calls = claim()
            if data.validated_data["deploy"]:
                offered.extend(
                    code.deployments_offer(
                        agent=agent,
                        token=request.auth,
                        session=data.validated_data["session"],
                    )
                )
            if calls or announced or offered:
                return calls, announced
            return None

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
                **({"deploy": [_offer(d) for d in offered]} if offered else {}),
            }
        )


def _offer(deployment: Deployment) -> dict:
    upload = deployment.upload
    return {
        "id": str(deployment.id),
        "upload_id": str(upload.id),
        "function": upload.function,
        "format": upload.format,
        "sha256": upload.sha256,
        "size": upload.size,
        "prepare": upload.prepare,
        "commit": upload.commit,
    }


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


class DeploymentArchiveView(APIView):
    """The approved bytes; the agent checks their SHA-256 before unpacking."""

    required_roles = {"GET": {roles.GET_CODE}}

    @extend_schema(
        responses={
            (200, "application/octet-stream"): bytes,
            **openapi.errors(404, 409),
        }
    )
    def get(self, request: Request, agent_id: str, deployment_id: str):
        agent = selectors.agent_get(token=request.auth, agent_id=agent_id)
        deployment = code.deployment_get(agent=agent, deployment_id=deployment_id)
        content = code.deployment_content(deployment=deployment)
        response = HttpResponse(content, content_type="application/octet-stream")
        response["X-HPCSerA-SHA256"] = deployment.upload.sha256
        return response


class DeploymentReportView(APIView):
    required_roles = {"POST": {roles.GET_CODE}}

    @extend_schema(
        request=serializers.DeploymentReport,
        responses={200: openapi.DeploymentReported, **openapi.errors(400, 404, 409)},
    )
    def post(self, request: Request, agent_id: str, deployment_id: str) -> Response:
        agent = selectors.agent_get(token=request.auth, agent_id=agent_id)
        deployment = code.deployment_get(agent=agent, deployment_id=deployment_id)
        data = serializers.DeploymentReport(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = code.deployment_report(
            deployment=deployment, **data.validated_data
        )
        return Response({"id": str(deployment.id), "state": deployment.state})


def _approval(approval: RunApproval) -> dict:
    answer = {
        "id": str(approval.id),
        "state": approval.state,
        "expires_at": approval.expires_at.isoformat(),
    }
    if approval.state == RunApproval.State.APPROVED:
        answer["approval"] = {
            "statement": approval.statement,
            "signature": approval.signature,
        }
        if approval.passkey:
            # The user's authenticator's own word over the same statement;
            # agents that pin the passkey check only this.
            answer["approval"]["passkey"] = approval.passkey
    return answer


class ApprovalRequestView(APIView):
    """The agent asks its owner before running something (agent-side consent)."""

    required_roles = {"POST": {roles.UPDATE_JOB_STATUS}}

    @extend_schema(
        request=serializers.ApprovalRequest,
        responses={201: openapi.ApprovalState, **openapi.errors(400, 404)},
    )
    def post(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agent_get(token=request.auth, agent_id=agent_id)
        data = serializers.ApprovalRequest(data=request.data)
        data.is_valid(raise_exception=True)
        approval = approvals.run_approval_request(agent=agent, **data.validated_data)
        return Response(_approval(approval), status=201)


class ApprovalView(APIView):
    """Long-poll: answers once the owner decided, or as it stands after `wait`."""

    required_roles = {"GET": {roles.UPDATE_JOB_STATUS}}

    @extend_schema(
        parameters=[serializers.ApprovalWait],
        responses={200: openapi.ApprovalState, **openapi.errors(400, 404)},
    )
    def get(self, request: Request, agent_id: str, approval_id: str) -> Response:
        agent = selectors.agent_get(token=request.auth, agent_id=agent_id)
        data = serializers.ApprovalWait(data=request.query_params)
        data.is_valid(raise_exception=True)
        approval = approvals.run_approval_get(agent=agent, approval_id=approval_id)

        def decided() -> RunApproval | None:
            token_still_live(request.auth)
            found = approvals.run_approval_get(agent=agent, approval_id=approval.id)
            return None if found.state == RunApproval.State.PENDING else found

        if approval.state == RunApproval.State.PENDING and data.validated_data["wait"]:
            approval = (
                wait_until(
                    approvals.approval_channel(approval.id),
                    decided,
                    data.validated_data["wait"],
                    on_long_wait=connection.close,
                    hold_seconds=0.0,
                )
                or approval
            )
        return Response(_approval(approval))
