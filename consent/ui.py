"""Web UI pages of the decoupled flow: registered clients and the inbox of
token requests waiting for the user's decision."""

from __future__ import annotations

import json

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from consent import passkeys as passkey_services
from consent.approvals import run_approval_decide
from consent.code import code_upload_decide
from consent.models import AuthRequest, Client, CodeUpload, Passkey, RunApproval
from consent.services import auth_request_decide, client_register, client_revoke
from hpcsera.errors import ApiError, BadInput
from jobs.selectors import parse_uuid
from tokens.models import Token
from web.recent import login_is_recent, reauthenticate_url


class ClientForm(forms.Form):
    name = forms.CharField(max_length=100)
    public_key = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6, "cols": 70}),
        help_text="PEM or JWK: Ed25519, EC P-256 or RSA of 2048 bits or more",
    )


@login_required
@require_http_methods(["GET", "POST"])
def clients(request: HttpRequest) -> HttpResponse:
    form = ClientForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            created = client_register(
                user=request.user, request=request, **form.cleaned_data
            )
            form = ClientForm()
        except BadInput as exc:
            form.add_error("public_key", exc.detail)
    listing = Client.objects.filter(user=request.user).order_by("-created_at")
    status = 400 if request.method == "POST" and created is None else 200
    return render(
        request,
        "web/clients.html",
        {"form": form, "clients": listing, "created": created},
        status=status,
    )


@login_required
@require_POST
def client_revoke_view(request: HttpRequest, client_id: str) -> HttpResponse:
    client = Client.objects.filter(user=request.user, id=parse_uuid(client_id)).first()
    if client is None:
        raise Http404
    client_revoke(client=client, request=request)
    return redirect("ui-clients")


def _pending(request: HttpRequest):
    return (
        AuthRequest.objects.filter(
            user=request.user,
            state=AuthRequest.State.PENDING,
            expires_at__gt=timezone.now(),
        )
        .select_related("client")
        .order_by("-created_at")
    )


def _pending_uploads(request: HttpRequest):
    # Expired ones are left out here; run_timers deletes their bytes.
    return (
        CodeUpload.objects.filter(
            user=request.user,
            state=CodeUpload.State.PENDING,
            expires_at__gt=timezone.now(),
        )
        .defer("content")
        .order_by("-created_at")
    )


def _pending_runs(request: HttpRequest):
    return (
        RunApproval.objects.filter(
            user=request.user,
            state=RunApproval.State.PENDING,
            expires_at__gt=timezone.now(),
        )
        .select_related("agent", "call__job", "deployment__upload")
        .defer("deployment__upload__content")
        .order_by("-created_at")
    )


def _described(runs: list[RunApproval]) -> list[RunApproval]:
    """Arguments as JSON, and the token that submitted each call, for the page."""
    job_tokens = {r.call.job.token_id for r in runs if r.call_id and r.call.job}
    names = dict(Token.objects.filter(id__in=job_tokens).values_list("id", "name"))
    for run in runs:
        if run.call_id:
            run.args_json = json.dumps(run.call.args, ensure_ascii=False)
            run.submitted_by = names.get(run.call.job.token_id, "")
    return runs


def _inbox_context(request: HttpRequest, **extra) -> dict:
    decided = (
        AuthRequest.objects.filter(user=request.user)
        .exclude(state=AuthRequest.State.PENDING)
        .select_related("client")
        .order_by("-created_at")[:20]
    )
    decided_uploads = (
        CodeUpload.objects.filter(user=request.user)
        .exclude(state=CodeUpload.State.PENDING)
        .defer("content")
        .order_by("-created_at")[:20]
    )
    pending, uploads, runs = (
        _pending(request),
        _pending_uploads(request),
        _described(list(_pending_runs(request))),
    )
    return {
        "pending": pending,
        "decided": decided,
        "uploads": uploads,
        "decided_uploads": decided_uploads,
        "runs": runs,
        "waiting": len(pending) + len(uploads) + len(runs),
        "recent_login": login_is_recent(request),
        "reauth_url": reauthenticate_url(request.path),
        "has_passkey": Passkey.objects.filter(user=request.user).exists(),
        **extra,
    }


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    return render(request, "web/inbox.html", _inbox_context(request))


@login_required
@require_GET
def inbox_count(request: HttpRequest) -> JsonResponse:
    """For the page's script: new requests show up without reloading."""
    pending = (
        _pending(request).count()
        + _pending_uploads(request).count()
        + _pending_runs(request).count()
    )
    return JsonResponse({"pending": pending})


def _refuse(request: HttpRequest, message: str, status: int) -> HttpResponse:
    return render(
        request, "web/inbox.html", _inbox_context(request, error=message), status=status
    )


def _stale_login(request: HttpRequest) -> HttpResponse | None:
    if login_is_recent(request):
        return None
    return _refuse(
        request,
        "Approving code or a run needs a recent login: log in again, then decide.",
        403,
    )


def _decide(request: HttpRequest, found, act) -> HttpResponse:
    """The owner's decision on `found` (None: not theirs, 404): approving
    needs a recent login, denying never does."""
    if found is None:
        raise Http404
    decision = request.POST.get("decision")
    if decision not in ("approve", "deny"):
        # Denying deletes code: only an explicit choice does it.
        return _refuse(request, "Choose approve or deny.", 400)
    approve = decision == "approve"
    if approve and (refused := _stale_login(request)):
        return refused
    try:
        act(approve)
    except ApiError as exc:
        return _refuse(request, exc.detail, exc.status)
    return redirect("ui-inbox")


@login_required
@require_POST
def decide_upload(request: HttpRequest, upload_id: str) -> HttpResponse:
    upload = (
        CodeUpload.objects.filter(user=request.user, id=parse_uuid(upload_id))
        .defer("content")
        .first()
    )
    return _decide(
        request,
        upload,
        lambda approve: code_upload_decide(
            upload=upload,
            user=request.user,
            approve=approve,
            sha256=request.POST.get("sha256", ""),
            request=request,
        ),
    )


@login_required
@require_POST
def decide_run(request: HttpRequest, approval_id: str) -> HttpResponse:
    approval = (
        RunApproval.objects.filter(user=request.user, id=parse_uuid(approval_id))
        .select_related("agent")
        .first()
    )
    return _decide(
        request,
        approval,
        lambda approve: run_approval_decide(
            approval=approval, user=request.user, approve=approve, request=request
        ),
    )


@login_required
@require_POST
def decide(request: HttpRequest, request_id: str) -> HttpResponse:
    # Another user's request is simply not found.
    auth = (
        AuthRequest.objects.filter(user=request.user, id=parse_uuid(request_id))
        .select_related("client", "user")
        .first()
    )
    if auth is None:
        raise Http404
    approve = request.POST.get("decision") == "approve"
    try:
        auth_request_decide(
            auth=auth,
            approve=approve,
            roles=request.POST.getlist("roles"),
            request=request,
        )
    except BadInput as exc:
        return _refuse(request, exc.detail, 400)
    return redirect("ui-inbox")


# Passkeys: the page, and the JSON endpoints its script and the inbox's call.


def _json_body(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except (UnicodeDecodeError, ValueError):
        raise BadInput("The body is not JSON.", code="invalid_json")
    if not isinstance(body, dict):
        raise BadInput("The body is not a JSON object.", code="invalid_json")
    return body


def _json_error(exc: ApiError) -> JsonResponse:
    return JsonResponse({"detail": exc.detail, "code": exc.code}, status=exc.status)


@login_required
@require_GET
def passkeys(request: HttpRequest) -> HttpResponse:
    listing = Passkey.objects.filter(user=request.user).order_by("-created_at")
    rp_id, origin = passkey_services.relying_party(request)
    context = {
        "passkeys": listing,
        "rp_id": rp_id,
        "origin": origin,
        "recent_login": login_is_recent(request),
        "reauth_url": reauthenticate_url(request.path),
    }
    return render(request, "web/passkeys.html", context)


@login_required
@require_POST
def passkey_options(request: HttpRequest) -> JsonResponse:
    # Adding a key that can approve runs is as consequential as approving one.
    if not login_is_recent(request):
        return JsonResponse(
            {"detail": "Adding a passkey needs a recent login.", "code": "stale"},
            status=403,
        )
    options = passkey_services.passkey_register_begin(
        user=request.user, request=request
    )
    return JsonResponse(options)


@login_required
@require_POST
def passkey_add(request: HttpRequest) -> JsonResponse:
    if not login_is_recent(request):
        return JsonResponse(
            {"detail": "Adding a passkey needs a recent login.", "code": "stale"},
            status=403,
        )
    try:
        body = _json_body(request)
        passkey = passkey_services.passkey_register_complete(
            user=request.user,
            request=request,
            response=body.get("credential") or {},
            name=str(body.get("name") or ""),
        )
    except ApiError as exc:
        return _json_error(exc)
    return JsonResponse(
        {"id": str(passkey.id), "public_key": passkey.public_key}, status=201
    )


@login_required
@require_POST
def passkey_remove_view(request: HttpRequest, passkey_id: str) -> HttpResponse:
    passkey = Passkey.objects.filter(
        user=request.user, id=parse_uuid(passkey_id)
    ).first()
    if passkey is None:
        raise Http404
    passkey_services.passkey_remove(passkey=passkey, request=request)
    return redirect("ui-passkeys")


def _own_approval(request: HttpRequest, approval_id: str) -> RunApproval:
    approval = (
        RunApproval.objects.filter(user=request.user, id=parse_uuid(approval_id))
        .select_related("agent")
        .first()
    )
    if approval is None:
        raise Http404
    return approval


@login_required
@require_POST
def run_passkey_prepare(request: HttpRequest, approval_id: str) -> JsonResponse:
    approval = _own_approval(request, approval_id)
    try:
        prepared = passkey_services.run_approval_prepare(
            approval=approval, user=request.user, request=request
        )
    except ApiError as exc:
        return _json_error(exc)
    return JsonResponse(prepared)


@login_required
@require_POST
def run_passkey_decide(request: HttpRequest, approval_id: str) -> JsonResponse:
    # No recent login needed for the passkey's own approval: the assertion
    # carries a fresh user verification by the authenticator. The server's
    # signature beside it still needs one (see run_approval_passkey_decide).
    approval = _own_approval(request, approval_id)
    try:
        approval = passkey_services.run_approval_passkey_decide(
            approval=approval,
            user=request.user,
            assertion=_json_body(request),
            request=request,
            recent_login=login_is_recent(request),
        )
    except ApiError as exc:
        return _json_error(exc)
    return JsonResponse({"id": str(approval.id), "state": approval.state})
