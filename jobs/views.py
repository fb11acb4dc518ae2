from __future__ import annotations

import re
import threading

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hpcsera.errors import PROBLEM_JSON, NotFound, problem
from hpcsera.notify import wait_until
from jobs import (
    callbacks,
    dag,
    documents,
    openapi,
    selectors,
    serializers,
    validation,
)
from jobs.leases import leases_expire
from jobs.models import HELD_STATES, CallState, FunctionCall
from jobs.presenters import (
    after_names,
    agent_detail,
    call_detail,
    call_summary,
    job_answer,
    job_calls,
    job_detail,
)
from jobs.services import call_channel, faas_submit
from tokens import roles
from tokens.services import token_still_live

SITE_HEADER = "HTTP_X_HPCSERA_SITE"
TIME_LIMIT_HEADER = "HTTP_X_HPCSERA_TIME_LIMIT"
CALLBACK_HEADER = "HTTP_X_CALLBACK_URL"
DISCARD_MAX = 64 * 1024 * 1024


def _read_body(request: Request) -> bytes:
    limit = settings.HPCSERA["MAX_BODY_BYTES"]
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        _discard(request, int(declared))
        raise validation.body_too_large()
    if not declared and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", ""):
        # Django reads nothing without a Content-Length; the server has
        # already undone the chunking, so the raw input stream is the body.
        return request.META["wsgi.input"].read(limit + 1)
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
    query = request.META.get("QUERY_STRING", "")
    return validation.arguments(validation.query_pairs(query))


class FaasView(APIView):
    """POST <user>/function/<name> (sync) and <user>/async-function/<name>."""

    mode = FunctionCall.Mode.SYNC
    required_roles = {"POST": {roles.POST_JOB}}

    @extend_schema(
        summary="Call a function",
        description=(
            "Query parameters are the function's arguments; an optional JSON body "
            "reaches it as a file. The sync endpoint answers with the function's "
            "stdout (200), 502 when it fails, or 202 when it is still running "
            "after the wait limit; the async endpoint answers 202 at once."
        ),
        request={"application/json": dict},
        parameters=openapi.FAAS_HEADERS,
        responses={
            200: OpenApiResponse(description="the function's stdout"),
            202: openapi.CallSummary,
            502: openapi.Problem,
            **openapi.errors(400, 404),
        },
    )
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
        callback_url = request.META.get(CALLBACK_HEADER, "")
        if callback_url:
            callbacks.callback_url_check(callback_url)
        input_text = validation.json_body(_read_body(request))

        call = faas_submit(
            token=token,
            function=function,
            mode=self.mode,
            args=args,
            input_text=input_text,
            site=site,
            time_limit_seconds=time_limit,
            callback_url=callback_url,
        )
        if self.mode == FunctionCall.Mode.ASYNC:
            return _accepted(call)
        return _sync_answer(call, token)


class AsyncFaasView(FaasView):
    mode = FunctionCall.Mode.ASYNC


def _accepted(call: FunctionCall) -> Response:
    body = call_summary(call)
    return Response(body, status=202, headers={"Location": body["status_url"]})


_sync_waiters = threading.BoundedSemaphore(max(settings.HPCSERA["MAX_SYNC_WAITERS"], 1))


def _sync_answer(call: FunctionCall, token: object) -> HttpResponse:
    def finished() -> FunctionCall | None:
        current = FunctionCall.objects.filter(pk=call.pk).first()
        return current if current is not None and current.is_terminal else None

    if settings.HPCSERA["MAX_SYNC_WAITERS"] == 0 or not _sync_waiters.acquire(
        blocking=False
    ):
        # Every waiting slot is taken: the call is queued all the same, and
        # the client polls its status URL instead of holding a thread.
        return _accepted(call)
    try:
        done = wait_until(
            call_channel(call.id),
            finished,
            settings.HPCSERA["SYNC_WAIT_SECONDS"],
            # An idle database connection per waiting request would exhaust
            # the server's connection limit; a waiter reconnects when it wakes.
            on_long_wait=connection.close,
        )
    finally:
        _sync_waiters.release()
    if done is None:
        return _accepted(call)
    token_still_live(token)
    headers = {"X-Hpcsera-Job": str(done.job_id), "X-Hpcsera-Call": str(done.id)}
    if done.state == CallState.SUCCEEDED and done.stdout_truncated:
        body = problem(
            502,
            "output_truncated",
            "The output is too large for the gateway",
            "The function succeeded, but its output was larger than the limit "
            "and only its beginning was kept; write large results to storage "
            "and print a reference to them.",
            **call_summary(done),
        )
        return Response(body, status=502, content_type=PROBLEM_JSON, headers=headers)
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


def _document(request: Request) -> object:
    """The request's body as a JSON or YAML document, size-capped."""
    content_type = request.META.get("CONTENT_TYPE", "")
    return documents.load(_read_body(request), content_type)


class JobListView(APIView):
    required_roles = {"GET": {roles.GET_JOB_STATUS}, "POST": {roles.POST_JOB}}

    @extend_schema(responses={200: openapi.JobList, **openapi.errors(400)})
    def get(self, request: Request) -> Response:
        limit = request.query_params.get("limit", "50")
        if not re.fullmatch(r"[0-9]{1,3}", limit) or not 1 <= int(limit) <= 200:
            raise validation.BadInput(
                "limit is a whole number from 1 to 200.", code="invalid_limit"
            )
        jobs = (
            selectors.jobs_visible(token=request.auth)
            .order_by("-created_at")
            .prefetch_related("calls__agent")[: int(limit)]
        )
        jobs = list(jobs)
        after = after_names(c.id for job in jobs for c in job.calls.all())
        return Response(
            {"jobs": [job_detail(job, list(job.calls.all()), after) for job in jobs]}
        )

    @extend_schema(
        operation_id="job_submit",
        summary="Submit a job document",
        description=(
            "A job and its calls in one request, as JSON or as YAML (Content-Type "
            "application/yaml). Calls run in the listed order unless they name "
            "the calls they run `after`; independent calls run concurrently."
        ),
        request={"application/json": openapi.JobDocument},
        responses={201: openapi.JobDetail, **openapi.errors(400)},
    )
    def post(self, request: Request) -> Response:
        spec = documents.job_spec(_document(request))
        job = dag.job_submit(token=request.auth, spec=spec)
        body = job_answer(job)
        return Response(body, status=201, headers={"Location": body["url"]})


class JobCallsView(APIView):
    required_roles = {"POST": {roles.UPDATE_JOB}}

    @extend_schema(
        summary="Add calls to a job",
        description=(
            "Calls as in a job document; `after` may name calls the job "
            "already has. Without `after`, the first added call starts at once "
            "and each further one runs after the one listed before it."
        ),
        request={"application/json": openapi.CallsDocument},
        responses={201: openapi.JobDetail, **openapi.errors(400, 404)},
    )
    def post(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(token=request.auth, job_id=job_id)
        doc = _document(request)
        if not isinstance(doc, dict) or set(doc) != {"calls"}:
            raise validation.BadInput(
                "The body is a mapping with only 'calls'.", code="invalid_job"
            )
        dag.job_add_calls(token=request.auth, job_id=job.id, raw_calls=doc["calls"])
        return Response(job_answer(job), status=201)


class CallFinishView(APIView):
    """The external event a virtual call waits for."""

    required_roles = {"POST": {roles.UPDATE_JOB_STATUS}}

    @extend_schema(
        summary="Finish a virtual call",
        request=serializers.Finish,
        responses={200: openapi.CallDetail, **openapi.errors(400, 404, 409)},
    )
    def post(self, request: Request, call_id: str) -> Response:
        call = selectors.call_get(token=request.auth, call_id=call_id)
        data = serializers.Finish(data=request.data)
        data.is_valid(raise_exception=True)
        call = dag.call_finish(
            token=request.auth,
            call_id=call.id,
            succeeded=data.validated_data["state"] == CallState.SUCCEEDED,
            message=data.validated_data["message"],
        )
        return Response(call_detail(call))


class JobDetailView(APIView):
    required_roles = {"GET": {roles.GET_JOB_STATUS}, "DELETE": {roles.DELETE_JOB}}

    @extend_schema(
        operation_id="job_detail",
        responses={200: openapi.JobDetail, **openapi.errors(404)},
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = selectors.job_get(token=request.auth, job_id=job_id)
        calls = job_calls(job)
        if _expire_overdue(calls):
            calls = job_calls(job)
        return Response(job_detail(job, calls))

    @extend_schema(
        operation_id="job_cancel",
        summary="Cancel a job",
        description=(
            "Calls not yet taken end cancelled; calls an agent holds end "
            "cancelled too, and the agent stops their processes or batch jobs "
            "and reports how they ended."
        ),
        responses={200: openapi.JobDetail, **openapi.errors(404)},
    )
    def delete(self, request: Request, job_id: str) -> Response:
        job = dag.job_cancel(token=request.auth, job_id=job_id)
        return Response(job_answer(job))


class CallDetailView(APIView):
    required_roles = {"GET": {roles.GET_JOB_STATUS}, "PATCH": {roles.UPDATE_JOB}}

    @extend_schema(responses={200: openapi.CallDetail, **openapi.errors(404)})
    def get(self, request: Request, call_id: str) -> Response:
        call = selectors.call_get(token=request.auth, call_id=call_id)
        if _expire_overdue([call]):
            call = selectors.call_get(token=request.auth, call_id=call_id)
        return Response(call_detail(call))

    @extend_schema(
        summary="Hold, release or change the arguments of a call",
        request=serializers.CallChange,
        responses={200: openapi.CallDetail, **openapi.errors(400, 404, 409)},
    )
    def patch(self, request: Request, call_id: str) -> Response:
        call = selectors.call_get(token=request.auth, call_id=call_id)
        data = serializers.CallChange(data=request.data)
        data.is_valid(raise_exception=True)
        call = dag.call_update(
            token=request.auth,
            call_id=call.id,
            held=data.validated_data.get("held"),
            args=data.validated_data.get("args"),
        )
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

    @extend_schema(operation_id="agent_list", responses={200: openapi.AgentList})
    def get(self, request: Request) -> Response:
        agents = selectors.agents_with_load(token=request.auth)
        now = timezone.now()
        alive = settings.HPCSERA["AGENT_ALIVE_SECONDS"]
        return Response({"agents": [agent_detail(a, now, alive) for a in agents]})


class AgentDetailView(APIView):
    required_roles = {"GET": {roles.GET_JOB_STATUS}}

    @extend_schema(
        operation_id="agent_detail",
        responses={200: openapi.AgentDetail, **openapi.errors(404)},
    )
    def get(self, request: Request, agent_id: str) -> Response:
        agent = selectors.agents_with_load(token=request.auth).filter(
            id=selectors.parse_uuid(agent_id)
        )
        found = agent.first()
        if found is None:
            raise NotFound("No such agent.")
        alive = settings.HPCSERA["AGENT_ALIVE_SECONDS"]
        return Response(agent_detail(found, timezone.now(), alive))
