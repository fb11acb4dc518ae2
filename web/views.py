"""The web UI: tokens, jobs and calls, agents, and the user's audit log.

A logged-in user sees all of their own objects in every tag; the tag fence is
what limits tokens, not the person who owns them.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from hpcsera.errors import BadInput
from jobs.models import TERMINAL_STATES, Agent, Job
from jobs.presenters import job_state
from jobs.selectors import parse_uuid
from tokens import roles
from tokens.auth import DEFAULT_TAG, SESSION_TAG_KEY
from tokens.models import SecurityEvent, Token
from tokens.services import lifetime_caps, token_issue, token_revoke
from web.forms import TagForm, TokenForm


@require_GET
def login_page(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("ui-tokens")
    return render(
        request,
        "web/login.html",
        {"sso": settings.OIDC_ENABLED, "next": request.GET.get("next", "/ui/")},
    )


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return redirect("ui-tokens")


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            issued = token_issue(
                user=request.user,
                tag=form.cleaned_data["tag"],
                roles=form.cleaned_data["roles"],
                lifetime_seconds=form.cleaned_data["lifetime"],
                name=form.cleaned_data["name"],
                request=request,
            )
        except BadInput as exc:
            form.add_error(None, exc.detail)
        else:
            # Rendered, not redirected: this page is the only time the secret
            # exists outside the user's hands.
            response = render(request, "web/token_created.html", {"issued": issued})
            response["Cache-Control"] = "no-store"
            return response
    listing = Token.objects.filter(user=request.user).order_by("-created_at")
    return render(
        request,
        "web/tokens.html",
        {
            "form": form,
            "tokens": listing,
            "caps": sorted(lifetime_caps().items(), key=lambda item: item[1]),
            "all_roles": roles.ALL_ROLES,
        },
        status=400 if request.method == "POST" else 200,
    )


@login_required
@require_POST
def token_revoke_view(request: HttpRequest, token_id: str) -> HttpResponse:
    token = Token.objects.filter(user=request.user, id=parse_uuid(token_id)).first()
    if token is None:
        raise Http404
    token_revoke(token=token, request=request)
    return redirect("ui-tokens")


@login_required
@require_GET
def jobs(request: HttpRequest) -> HttpResponse:
    listing = (
        Job.objects.filter(user=request.user)
        .order_by("-created_at")
        .prefetch_related("calls")[:100]
    )
    rows = [(job, job_state([c.state for c in job.calls.all()])) for job in listing]
    return render(request, "web/jobs.html", {"rows": rows})


@login_required
@require_GET
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    job = Job.objects.filter(user=request.user, id=parse_uuid(job_id)).first()
    if job is None:
        raise Http404
    calls = list(job.calls.select_related("agent").order_by("created_at"))
    running = any(c.state not in TERMINAL_STATES for c in calls)
    return render(
        request,
        "web/job_detail.html",
        {
            "job": job,
            "calls": calls,
            "state": job_state([c.state for c in calls]),
            "refresh": running,
        },
    )


@login_required
@require_GET
def agents(request: HttpRequest) -> HttpResponse:
    listing = (
        Agent.objects.filter(user=request.user)
        .order_by("tag", "site")
        .prefetch_related("functions")
    )
    alive_since = timezone.now() - timedelta(
        seconds=settings.HPCSERA["AGENT_ALIVE_SECONDS"]
    )
    rows = [(agent, agent.last_seen_at >= alive_since) for agent in listing]
    return render(request, "web/agents.html", {"rows": rows})


@login_required
@require_GET
def audit(request: HttpRequest) -> HttpResponse:
    events = SecurityEvent.objects.filter(user=request.user).order_by("-created_at")
    return render(request, "web/audit.html", {"events": events[:200]})


@login_required
@require_POST
def api_tag(request: HttpRequest) -> HttpResponse:
    """Pick the tag that the browsable API shows to this session."""
    form = TagForm(request.POST)
    request.session[SESSION_TAG_KEY] = (
        form.cleaned_data["tag"] if form.is_valid() else DEFAULT_TAG
    )
    return redirect("job-list")
