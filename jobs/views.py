from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hpcsera.errors import PROBLEM_JSON, NotFound, problem
from hpcsera.notify import wait_until
from jobs import selectors, validation
from jobs.leases import leases_expire
from jobs.models import HELD_STATES, CallState, FunctionCall
from jobs.presenters import agent_detail, call_detail, call_summary, job_detail
from jobs.services import call_channel, faas_submit
from tokens import roles

SITE_HEADER = "HTTP_X_HPCSERA_SITE"
TIME_LIMIT_HEADER = "HTTP_X_HPCSERA_TIME_LIMIT"
DISCARD_MAX = 64 * 1024 * 1024


def _read_body(request: Request) -> bytes:
    limit = settings.HPCSERA["MAX_BODY_BYTES"]
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > limit:
        _discard(request, int(declared))
        raise validation.body_too_large()
    # Read at most one byte past the limit, whatever the header claimed.
    return request._request.read(limit + 1)


def _discard(request: Request, size: int) -> None:
    """Read and drop a refused body, so the client gets to read our answer.

    A server that answers before the client has finished sending makes many
    clients report a broken connection instead of the 400. Bodies beyond
    DISCARD_MAX are not worth the bandwidth: the connection is simply closed.
    """
    if size > DISCARD_MAX:
        return
    stream = request._request
    while stream.read(64 * 1024):
        pass


def _query_args(request: Request) -> dict[str, str]:
    pairs = []
    for key, values in request.query_params.lists():
        pairs.extend((key, value) for value in values)
    return validation.arguments(pairs)


class FaasView(APIView):
    """POST <user>/function/<name> (sync) and <user>/async-function/<name>."""

    mode = FunctionCall.Mode.SYNC
    required_roles = {"POST": {roles.POST_JOB}}

    def post(self, request: Request, user: str, name: str) -> HttpResponse:
        token = request.auth
        if user != token.user.get_username():
            # Another user's namespace answers exactly like an unknown function.
            raise NotFound(
                "No agent of yours offers this function.", code="unknown_function"
            )
        function = validation.function_name(name)
        args = _query_args(request)
        site = request.META.get(SITE_HEADER, "")
        if site:
            validation.site_name(site)
        time_limit = validation.time_limit(request.META.get(TIME_LIMIT_HEADER))
        input_text = validation.json_body(_read_body(request))

        call = faas_submit(
            token=token,
            function=function,
            mode=self.mode,
            args=args,
            input_text=input_text,
            site=site,
            time_limit_seconds=time_limit,
        )
        if self.mode == FunctionCall.Mode.ASYNC:
            return _accepted(call)
        return _sync_answer(call)


class AsyncFaasView(FaasView):
    mode = FunctionCall.Mode.ASYNC


def _accepted(call: FunctionCall) -> Response:
    body = call_summary(call)
    return Response(body, status=202, headers={"Location": body["status_url"]})


def _sync_answer(call: FunctionCall) -> HttpResponse:
    def finished() -> FunctionCall | None:
        current = FunctionCall.objects.filter(pk=call.pk).first()
        return current if current is not None and current.is_terminal else None

    done = wait_until(
        call_channel(call.id),
        finished,
        settings.HPCSERA["SYNC_WAIT_SECONDS"],
        # An idle database connection per waiting request would exhaust the
        # server's connection limit; a waiter reconnects when it wakes.
        on_long_wait=connection.close,
    )
    if done is None:
        return _accepted(call)
    headers = {"X-Hpcsera-Job": str(done.job_id), "X-Hpcsera-Call": str(done.id)}
    if done.state == CallState.SUCCEEDED:
        content_type = "text/plain; charset=utf-8"
        if validation.is_json(done.stdout):
            content_type = "application/json"
        return HttpResponse(done.stdout, content_type=content_type, headers=headers)
    body = problem(
        502,
        "function_failed",
        "The function did not succeed",
        done.reason or f"The call ended {done.state}.",
        exit_code=done.exit_code,
        stderr_tail=done.stderr_tail,
        **call_summary(done),
    )
    return Response(body, status=502, content_type=PROBLEM_JSON, headers=headers)


class JobListView(APIView):
    required_roles = {"GET": {roles.GET_JOB_STATUS}}

    def get(self, request: Request) -> Response:
        limit = request.query_params.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 200:
            raise validation.BadInput("limit is a whole number from 1 to 200.")
        jobs = (
            selectors.jobs_visible(token=request.auth)
            .order_by("-created_at")
            .prefetch_related("calls__agent")[: int(limit)]
        )
        return Response(
            {"jobs": [job_detail(job, list(job.calls.all())) for job in jobs]}
        )


class JobDetailView(APIView):
    required_roles = {"GET": {roles.GET_JOB_STATUS}}

    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(token=request.auth, job_id=job_id)
        calls = list(job.calls.select_related("agent").order_by("created_at"))
        if _expire_overdue(calls):
            calls = list(job.calls.select_related("agent").order_by("created_at"))
        return Response(job_detail(job, calls))


class CallDetailView(APIView):
    required_roles = {"GET": {roles.GET_JOB_STATUS}}

    def get(self, request: Request, call_id: str) -> Response:
        call = selectors.call_get(token=request.auth, call_id=call_id)
        if _expire_overdue([call]):
            call = selectors.call_get(token=request.auth, call_id=call_id)
        return Response(call_detail(call))


def _expire_overdue(calls: list[FunctionCall]) -> bool:
    """Expire the leases among `calls` that ran out; True when one did."""
    now = timezone.now()
    overdue = [
        c.id
        for c in calls
        if c.state in HELD_STATES and c.lease_expires_at and c.lease_expires_at < now
    ]
    return bool(overdue) and leases_expire(now=now, call_ids=overdue) > 0


class AgentListView(APIView):
    """The user's agents of this tag with their liveness (the UI shows these)."""

    required_roles = {"GET": {roles.GET_JOB_STATUS}}

    def get(self, request: Request) -> Response:
        agents = selectors.agents_with_load(token=request.auth)
        now = timezone.now()
        alive = settings.HPCSERA["AGENT_ALIVE_SECONDS"]
        return Response({"agents": [agent_detail(a, now, alive) for a in agents]})


class AgentDetailView(APIView):
    required_roles = {"GET": {roles.GET_JOB_STATUS}}

    def get(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agents_with_load(token=request.auth).filter(
            id=selectors.parse_uuid(agent_id)
        )
        found = agent.first()
        if found is None:
            raise NotFound("No such agent.")
        alive = settings.HPCSERA["AGENT_ALIVE_SECONDS"]
        return Response(agent_detail(found, timezone.now(), alive))
