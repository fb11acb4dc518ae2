"""Code ingestion: uploads held for the owner's consent, then deployed by agents.

A token with POST_Code can only ever ask: nothing it sends reaches an agent
before the user approved exactly those bytes (their SHA-256) in the web UI,
with a recent login, before the request expired. Approved uploads are offered
to the user's agents of the same tag (and site, when one was named) whose
owners turned deployments on and whose tokens hold GET_Code.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Sum
from django.utils import timezone

from consent.archives import Listing, UnsafeEntry, archive_list, entry_name
from consent.models import CodeUpload, Deployment
from consent.services import inbox_channel
from hpcsera.errors import BadInput, Conflict, NotFound, TooMany
from hpcsera.notify import publish_on_commit
from jobs import validation
from jobs.models import Agent
from jobs.selectors import parse_uuid
from jobs.services import work_channel
from tokens import roles
from tokens.audit import client_ip, security_event_record
from tokens.models import SecurityEvent, Token

logger = logging.getLogger(__name__)

COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")
SCRIPT_STARTS = (b"#!", b"\x7fELF")
SHOWN_FILES = 200
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def upload_channel(upload_id) -> str:
    return f"upload:{upload_id}"


def _limits() -> dict:
    return settings.HPCSERA


def code_upload_create(
    *,
    token: Token,
    function: str,
    data: bytes,
    is_script: bool,
    prepare: str = "",
    commit: str = "",
    description: str = "",
    site: str = "",
    request=None,
) -> CodeUpload:
    function = validation.function_name(function)
    if function.startswith("."):
        # Agents never offer hidden names (their own state lives in one).
        raise BadInput(
            "A function to upload cannot start with '.': agents do not offer "
            "hidden names.",
            code="invalid_function_name",
        )
    if site:
        site = validation.site_name(site)
    commit, description = _commit(commit), _description(description)
    if not data:
        raise BadInput("The uploaded file is empty.", code="empty_upload")
    if is_script:
        if prepare:
            raise BadInput(
                "A single script has no preparation step; send an archive.",
                code="invalid_prepare",
            )
        if not data.startswith(SCRIPT_STARTS):
            raise BadInput(
                "A script must start with '#!' (or be an ELF executable).",
                code="invalid_script",
            )
        fmt, files, file_count = CodeUpload.Format.SCRIPT, ["run"], 1
    else:
        listing = archive_list(
            data,
            max_entries=_limits()["CODE_MAX_ENTRIES"],
            max_bytes=_limits()["CODE_MAX_UNPACKED_BYTES"],
        )
        prepare = _prepare(prepare, listing)
        if "run" in listing.links:
            raise BadInput(
                "run must be a regular file at the top of the archive, not a link.",
                code="invalid_run",
            )
        fmt, files, file_count = listing.format, listing.files, len(listing.files)

    with transaction.atomic():
        _check_pending(token, len(data))
        upload = CodeUpload.objects.create(
            user_id=token.user_id,
            tag=token.tag,
            function=function,
            site=site,
            format=fmt,
            prepare=prepare,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            files=files[:SHOWN_FILES],
            file_count=file_count,
            content=data,
            commit=commit,
            description=description,
            token_id=token.id,
            token_name=token.name,
            client_name=token.client.name if token.client_id else "",
            source_ip=client_ip(request),
            expires_at=timezone.now()
            + timedelta(seconds=_limits()["CODE_CONSENT_SECONDS"]),
        )
    security_event_record(
        user=token.user,
        kind=SecurityEvent.Kind.CODE_UPLOADED,
        request=request,
        upload_id=str(upload.id),
        function=function,
        sha256=upload.sha256,
    )
    logger.info("%s code for %s uploaded, waiting for consent", upload.id, function)
    # The inbox page of the owner shows it without a reload.
    publish_on_commit(inbox_channel(token.user_id))
    return upload


def _check_pending(token: Token, size: int) -> None:
    """Refuse beyond the pending count or bytes of the user; the user's row is
    locked so that concurrent uploads cannot all pass the same count."""
    get_user_model().objects.select_for_update().filter(pk=token.user_id).first()
    pending = CodeUpload.objects.filter(
        user_id=token.user_id,
        state=CodeUpload.State.PENDING,
        expires_at__gt=timezone.now(),
    ).aggregate(count=Count("id"), size=Sum("size"))
    limits = _limits()
    if (
        pending["count"] >= limits["CODE_MAX_PENDING"]
        or (pending["size"] or 0) + size > limits["CODE_MAX_PENDING_BYTES"]
    ):
        raise TooMany(
            f"{pending['count']} uploads already wait for your approval; decide "
            "those first, or wait until they expire.",
            code="too_many_pending_uploads",
        )


def _commit(raw: str) -> str:
    raw = raw.strip()
    if raw and not COMMIT.fullmatch(raw):
        raise BadInput("commit is 7 to 64 hexadecimal digits.", code="invalid_commit")
    return raw.lower()


def _description(raw: str) -> str:
    if len(raw) > 200 or not plain_text(raw):
        raise BadInput(
            "description is one line of at most 200 characters.",
            code="invalid_description",
        )
    return raw.strip()


def _prepare(raw: str, listing: Listing) -> str:
    if not raw:
        raise BadInput(
            "prepare (the path of the preparation executable inside the archive) "
            "is required with an archive.",
            code="invalid_prepare",
        )
    try:
        path = entry_name(raw)
    except UnsafeEntry:
        path = ""
    if not path or path not in listing.regular:
        raise BadInput(
            f"prepare {raw!r} is not a regular file in the archive.",
            code="invalid_prepare",
        )
    if path not in listing.executable:
        raise BadInput(
            f"prepare {raw!r} is not executable in the archive; set its execute "
            "bit (chmod +x) before packing.",
            code="invalid_prepare",
        )
    return path


def plain_text(text: str) -> bool:
    """No control, format (bidi overrides, zero-width) or line/paragraph
    separator characters: what the owner reads is what it is."""
    return not any(unicodedata.category(c) in HIDDEN_CATEGORIES for c in text)


# -- reads ---------------------------------------------------------------------


def uploads_visible(*, token: Token) -> QuerySet[CodeUpload]:
    return CodeUpload.objects.filter(user_id=token.user_id, tag=token.tag).defer(
        "content"
    )


def upload_get(*, token: Token, upload_id) -> CodeUpload:
    upload = uploads_visible(token=token).filter(id=parse_uuid(upload_id)).first()
    if upload is None:
        raise NotFound("No such upload.")
    # run_timers sweeps them all; a reader need not wait for it.
    if upload.state == CodeUpload.State.PENDING and upload.is_expired():
        uploads_expire_due(pk=upload.pk)
        upload.refresh_from_db()
    return upload


# -- the owner's decision ------------------------------------------------------


def code_upload_decide(
    *, upload: CodeUpload, user, approve: bool, sha256: str, request=None
) -> CodeUpload:
    """Approve or deny once. Approval names the digest the user was shown; it
    must be the digest of the stored bytes, or nothing is approved."""
    now = timezone.now()
    if upload.user_id != user.pk:
        raise NotFound("No such upload.")
    if upload.state != CodeUpload.State.PENDING:
        raise Conflict(f"This upload is already {upload.state}.", code="decided")
    if upload.is_expired(now):
        uploads_expire_due(pk=upload.pk)
        raise Conflict("This upload expired before it was approved.", code="expired")
    if approve:
        content = CodeUpload.objects.filter(pk=upload.pk).values_list(
            "content", flat=True
        )[0]
        actual = hashlib.sha256(bytes(content)).hexdigest()
        if sha256 != upload.sha256 or actual != upload.sha256:
            raise Conflict(
                "The approval names other bytes than the upload holds; nothing "
                "was approved.",
                code="digest_mismatch",
            )
    fields = {
        "state": CodeUpload.State.APPROVED if approve else CodeUpload.State.DENIED,
        "decided_at": now,
        "decided_by": user.get_username(),
    }
    if not approve:
        fields.update(content=b"", reason="denied by the user; the code was deleted")
    # Conditional on pending and unexpired: two decisions racing, or one racing
    # the expiry, cannot both win.
    changed = CodeUpload.objects.filter(
        pk=upload.pk, state=CodeUpload.State.PENDING, expires_at__gt=now
    ).update(**fields)
    if not changed:
        raise Conflict("This upload was decided or expired meanwhile.", code="decided")
    if approve:
        _supersede_older(upload, now)
    security_event_record(
        user=user,
        kind=SecurityEvent.Kind.CODE_APPROVED
        if approve
        else SecurityEvent.Kind.CODE_DENIED,
        request=request,
        upload_id=str(upload.id),
        function=upload.function,
        sha256=upload.sha256,
    )
    logger.info("%s code %s", upload.id, fields["state"])
    publish_on_commit(upload_channel(upload.id))
    if approve:
        publish_on_commit(work_channel(upload.user_id, upload.tag))
    upload.refresh_from_db()
    return upload


def _supersede_older(upload: CodeUpload, now) -> None:
    """An approval is no standing permission for earlier versions: agents
    that have not installed those yet never will, and their bytes go."""
    CodeUpload.objects.filter(
        user_id=upload.user_id,
        tag=upload.tag,
        function=upload.function,
        site=upload.site,
        state=CodeUpload.State.APPROVED,
        decided_at__lt=now,
    ).update(
        state=CodeUpload.State.SUPERSEDED,
        content=b"",
        reason=f"replaced by the approved upload {upload.id}; the code was deleted",
    )


def code_upload_withdraw(*, upload: CodeUpload, request=None) -> CodeUpload:
    """The sender takes a pending upload back (it sent the wrong bytes, or
    they arrived changed): nothing is left to approve, its bytes are gone."""
    changed = CodeUpload.objects.filter(
        pk=upload.pk, state=CodeUpload.State.PENDING
    ).update(
        state=CodeUpload.State.WITHDRAWN,
        content=b"",
        decided_at=timezone.now(),
        reason="withdrawn by its sender; the code was deleted",
    )
    upload.refresh_from_db()
    if not changed and upload.state != CodeUpload.State.WITHDRAWN:
        raise Conflict(
            f"This upload is already {upload.state}; only a pending one can be "
            "withdrawn.",
            code="decided",
        )
    if changed:
        logger.info("%s code withdrawn by its sender", upload.id)
        publish_on_commit(upload_channel(upload.id))
    return upload


def uploads_expire_due(pk=None) -> int:
    """Pending uploads past their time (all, or the one `pk`): deleted bytes,
    state expired."""
    now = timezone.now()
    due = CodeUpload.objects.filter(state=CodeUpload.State.PENDING, expires_at__lte=now)
    expired = (due.filter(pk=pk) if pk is not None else due).update(
        state=CodeUpload.State.EXPIRED,
        content=b"",
        decided_at=now,
        reason="not approved in time; the code was deleted",
    )
    if expired:
        logger.info("%d upload(s) expired unapproved", expired)
    return expired


# -- deployments -----------------------------------------------------------------


def deployments_offer(
    *, agent: Agent, token: Token, session: str = ""
) -> list[Deployment]:
    """Approved uploads this agent has not installed, as deployments to do now.

    An upload is offered again to a restarted agent (another session) while its
    deployment is still open: the killed process may never have finished it.
    Like calls (jobs.services.calls_claim), nothing goes to the claim of a
    session that is not the agent's current one: a long-poll left behind by a
    killed process would take the offer with it.
    """
    if roles.GET_CODE not in token.role_set:
        return []
    if session and not Agent.objects.filter(pk=agent.pk, session=session).exists():
        return []
    session = session or agent.session
    done_here = Deployment.objects.filter(upload=OuterRef("pk"), agent=agent).filter(
        ~Q(state=Deployment.State.OFFERED) | Q(session=session)
    )
    approved = (
        CodeUpload.objects.filter(
            user_id=agent.user_id, tag=agent.tag, state=CodeUpload.State.APPROVED
        )
        .filter(Q(site="") | Q(site=agent.site))
        .annotate(done=Exists(done_here))
        .defer("content")
        .order_by("decided_at")
    )
    # Only the newest approved version of each function is for this agent
    # (one for every site and one for its own site may both be approved).
    newest = {upload.function: upload for upload in approved}
    offers = []
    for upload in sorted(newest.values(), key=lambda u: u.decided_at)[:8]:
        if upload.done:
            continue
        deployment, _ = Deployment.objects.update_or_create(
            upload=upload,
            agent=agent,
            defaults={"session": session, "offered_at": timezone.now()},
        )
        deployment.upload = upload
        offers.append(deployment)
    return offers


def deployment_get(*, agent: Agent, deployment_id) -> Deployment:
    deployment = (
        Deployment.objects.filter(agent=agent, id=parse_uuid(deployment_id))
        .select_related("upload")
        .defer("upload__content")
        .first()
    )
    if deployment is None:
        raise NotFound("No such deployment.")
    return deployment


def deployment_content(*, deployment: Deployment) -> bytes:
    if deployment.upload.state != CodeUpload.State.APPROVED:
        raise NotFound("No such deployment.")
    if deployment.state != Deployment.State.OFFERED:
        raise Conflict(
            f"This deployment is already {deployment.state}.", code="deployment_ended"
        )
    content = CodeUpload.objects.filter(pk=deployment.upload_id).values_list(
        "content", flat=True
    )[0]
    return bytes(content)


def deployment_report(
    *, deployment: Deployment, state: str, reason: str, log_tail: str
) -> Deployment:
    tail = settings.HPCSERA["MAX_TAIL_CHARS"]
    changed = Deployment.objects.filter(
        pk=deployment.pk, state=Deployment.State.OFFERED
    ).update(
        state=state,
        reason=reason[:2000],
        log_tail=log_tail[-tail:],
        finished_at=timezone.now(),
    )
    deployment.refresh_from_db()
    if not changed and deployment.state != state:
        raise Conflict(
            f"This deployment already ended {deployment.state}.",
            code="deployment_ended",
        )
    if changed:
        logger.info(
            "%s deployment of %s on %s: %s",
            deployment.id,
            deployment.upload.function,
            deployment.agent.site,
            state,
        )
        publish_on_commit(upload_channel(deployment.upload_id))
    return deployment
