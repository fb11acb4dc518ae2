"""Agent-side consent: an agent asks its owner before it runs something.

The agent names exactly what it is about to run (hashes of the executable and
of the arguments, the call or deployment, its site) and a fresh nonce. The
owner decides in the web UI; an approval is a statement signed with the
server's approval key (consent.signing), which the agent checks against the
public key pinned in its own configuration.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.utils import timezone

from consent import signing
from consent.models import Deployment, RunApproval
from consent.services import inbox_channel
from hpcsera.errors import BadInput, Conflict, NotFound
from hpcsera.notify import publish_on_commit
from jobs.models import HELD_STATES, Agent, FunctionCall
from jobs.selectors import parse_uuid
from tokens.audit import security_event_record
from tokens.models import SecurityEvent

logger = logging.getLogger(__name__)

HEX64 = re.compile(r"[0-9a-f]{64}")
NONCE = re.compile(r"[0-9a-f]{32,64}")


def approval_channel(approval_id) -> str:
    return f"approval:{approval_id}"


def _iso(moment) -> str:
    return moment.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_approval_request(
    *,
    agent: Agent,
    purpose: str,
    subject_id,
    function: str,
    executable_sha256: str,
    arguments_sha256: str,
    nonce: str,
) -> RunApproval:
    if not HEX64.fullmatch(executable_sha256) or not HEX64.fullmatch(arguments_sha256):
        raise BadInput("Hashes are 64 lowercase hex digits.", code="invalid_hash")
    if not NONCE.fullmatch(nonce):
        raise BadInput("nonce is 32 to 64 lowercase hex digits.", code="invalid_nonce")
    call, deployment, expected = _subject(agent, purpose, subject_id, function)
    if arguments_sha256 != expected:
        raise BadInput(
            "The arguments' hash is not the one of what the server holds for this "
            f"{purpose}; nothing is asked.",
            code="arguments_mismatch",
        )
    seconds = settings.HPCSERA["APPROVAL_SECONDS"]
    approval = RunApproval.objects.create(
        user_id=agent.user_id,
        tag=agent.tag,
        agent=agent,
        purpose=purpose,
        call=call,
        deployment=deployment,
        function=function,
        executable_sha256=executable_sha256,
        arguments_sha256=arguments_sha256,
        nonce=nonce,
        expires_at=timezone.now() + timedelta(seconds=seconds),
    )
    logger.info("%s approval asked by %s for %s", approval.id, agent.site, function)
    publish_on_commit(inbox_channel(agent.user_id))
    return approval


def _subject(agent: Agent, purpose: str, subject_id, function: str):
    """The call or deployment asked about, held by this agent; its args' hash."""
    if purpose == RunApproval.Purpose.CALL:
        call = FunctionCall.objects.filter(
            id=parse_uuid(subject_id), agent=agent, state__in=HELD_STATES
        ).first()
        if call is None or call.function != function:
            raise NotFound("No such call held by this agent.")
        return call, None, signing.arguments_sha256_for_call(call.args, call.input)
    if purpose == RunApproval.Purpose.PREPARE:
        deployment = (
            Deployment.objects.filter(id=parse_uuid(subject_id), agent=agent)
            .select_related("upload")
            .defer("upload__content")
            .first()
        )
        if deployment is None or deployment.upload.function != function:
            raise NotFound("No such deployment of this agent.")
        upload = deployment.upload
        expected = signing.arguments_sha256_for_prepare(upload.sha256, upload.prepare)
        return None, deployment, expected
    raise BadInput("purpose is call or prepare.", code="invalid_purpose")


def run_approval_get(*, agent: Agent, approval_id) -> RunApproval:
    approval = RunApproval.objects.filter(
        agent=agent, id=parse_uuid(approval_id)
    ).first()
    if approval is None:
        raise NotFound("No such approval request.")
    if approval.state == RunApproval.State.PENDING and approval.is_expired():
        RunApproval.objects.filter(
            pk=approval.pk, state=RunApproval.State.PENDING
        ).update(state=RunApproval.State.EXPIRED, decided_at=timezone.now())
        approval.refresh_from_db()
    return approval


def run_approval_decide(
    *, approval: RunApproval, user, approve: bool, request=None
) -> RunApproval:
    now = timezone.now()
    if approval.user_id != user.pk:
        raise NotFound("No such approval request.")
    if approval.state != RunApproval.State.PENDING:
        raise Conflict(f"This request is already {approval.state}.", code="decided")
    if approval.is_expired(now):
        raise Conflict("This request expired before it was decided.", code="expired")
    fields = {"decided_at": now, "decided_by": user.get_username()}
    if approve:
        signed = signing.statement_sign(_statement(approval, user, now))
        fields.update(
            state=RunApproval.State.APPROVED,
            statement=signed["statement"],
            signature=signed["signature"],
        )
    else:
        fields["state"] = RunApproval.State.DENIED
    # Single use: only a pending, unexpired request changes.
    changed = RunApproval.objects.filter(
        pk=approval.pk, state=RunApproval.State.PENDING, expires_at__gt=now
    ).update(**fields)
    if not changed:
        raise Conflict("This request was decided or expired meanwhile.", code="decided")
    security_event_record(
        user=user,
        kind=SecurityEvent.Kind.RUN_APPROVED
        if approve
        else SecurityEvent.Kind.RUN_DENIED,
        request=request,
        approval_id=str(approval.id),
        function=approval.function,
        site=approval.agent.site,
    )
    publish_on_commit(approval_channel(approval.id))
    approval.refresh_from_db()
    return approval


def _statement(approval: RunApproval, user, now) -> dict:
    subject = approval.call_id or approval.deployment_id
    return {
        "v": 1,
        "approval_id": str(approval.id),
        "decision": "approved",
        "purpose": approval.purpose,
        "subject_id": str(subject),
        "agent_id": str(approval.agent_id),
        "site": approval.agent.site,
        "function": approval.function,
        "executable_sha256": approval.executable_sha256,
        "arguments_sha256": approval.arguments_sha256,
        "nonce": approval.nonce,
        "approved_by": user.get_username(),
        "approved_at": _iso(now),
        # The agent acts on it at once; it is no standing permission.
        "expires_at": _iso(
            now + timedelta(seconds=settings.HPCSERA["APPROVAL_SECONDS"])
        ),
    }
