"""Web UI pages of the decoupled flow: registered clients and the inbox of
token requests waiting for the user's decision."""

from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from consent.models import AuthRequest, Client
from consent.services import auth_request_decide, client_register, client_revoke
from hpcsera.errors import BadInput
from jobs.selectors import parse_uuid


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


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    decided = (
        AuthRequest.objects.filter(user=request.user)
        .exclude(state=AuthRequest.State.PENDING)
        .select_related("client")
        .order_by("-created_at")[:20]
    )
    return render(
        request, "web/inbox.html", {"pending": _pending(request), "decided": decided}
    )


@login_required
@require_GET
def inbox_count(request: HttpRequest) -> JsonResponse:
    """For the page's script: new requests show up without reloading."""
    pending = _pending(request)
    return JsonResponse(
        {"pending": pending.count(), "latest": str(pending[0].id) if pending else None}
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
        return render(
            request,
            "web/inbox.html",
            {"pending": _pending(request), "decided": [], "error": exc.detail},
            status=400,
        )
    return redirect("ui-inbox")
