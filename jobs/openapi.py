"""Shapes of API answers, for the OpenAPI schema (the views build plain dicts)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers


class Problem(serializers.Serializer):
    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    code = serializers.CharField(help_text="stable, for programs")
    detail = serializers.CharField(help_text="for people")


class Timings(serializers.Serializer):
    created_at = serializers.DateTimeField()
    leased_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.FloatField(allow_null=True)


class CallSummary(serializers.Serializer):
    job_id = serializers.UUIDField()
    call_id = serializers.UUIDField()
    function = serializers.CharField()
    state = serializers.CharField()
    status_url = serializers.CharField()
    job_url = serializers.CharField()


class DeliveryAttempt(serializers.Serializer):
    attempt = serializers.IntegerField()
    at = serializers.DateTimeField()
    status = serializers.IntegerField(
        allow_null=True, help_text="the receiver's HTTP status"
    )
    error = serializers.CharField(allow_null=True)


class Delivery(serializers.Serializer):
    delivery_id = serializers.UUIDField(help_text="the same in every attempt")
    event = serializers.ChoiceField(choices=["call.ended", "job.ended"])
    state = serializers.ChoiceField(choices=["pending", "delivered", "failed"])
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    history = DeliveryAttempt(many=True)


class CallDetail(serializers.Serializer):
    id = serializers.UUIDField()
    job_id = serializers.UUIDField()
    name = serializers.CharField(allow_null=True, help_text="unique in its job")
    function = serializers.CharField()
    mode = serializers.ChoiceField(choices=["sync", "async"])
    site = serializers.CharField(allow_null=True)
    agent_site = serializers.CharField(allow_null=True)
    args = serializers.DictField(child=serializers.CharField())
    has_input = serializers.BooleanField()
    time_limit_seconds = serializers.IntegerField(allow_null=True)
    after = serializers.ListField(
        child=serializers.CharField(), help_text="names of the calls it runs after"
    )
    virtual = serializers.BooleanField()
    deadline_at = serializers.DateTimeField(allow_null=True)
    held = serializers.BooleanField()
    state = serializers.CharField()
    terminal = serializers.BooleanField()
    reason = serializers.CharField()
    waiting_for = serializers.ChoiceField(
        choices=["approval"],
        allow_null=True,
        help_text="approval: the agent waits for its owner's consent to run it",
    )
    exit_code = serializers.IntegerField(allow_null=True)
    batch_job_id = serializers.CharField(allow_null=True)
    output = serializers.JSONField(
        allow_null=True, help_text="stdout, parsed as JSON when it is JSON"
    )
    stdout = serializers.CharField()
    stdout_truncated = serializers.BooleanField()
    stderr_tail = serializers.CharField()
    callback_url = serializers.CharField(allow_null=True)
    callback = Delivery(allow_null=True, help_text="the callback and its attempts")
    timings = Timings()
    status_url = serializers.CharField()
    job_url = serializers.CharField()


class JobDetail(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    tag = serializers.CharField()
    state = serializers.CharField()
    created_at = serializers.DateTimeField()
    callback_url = serializers.CharField(allow_null=True)
    callback = Delivery(allow_null=True, help_text="the job's callback")
    calls = CallDetail(many=True)
    url = serializers.CharField()


class JobList(serializers.Serializer):
    jobs = JobDetail(many=True)


class VirtualSpec(serializers.Serializer):
    deadline_seconds = serializers.IntegerField(min_value=1)


class CallSpec(serializers.Serializer):
    name = serializers.CharField(required=False, help_text="default: the function")
    function = serializers.CharField(required=False, help_text="not for virtual calls")
    after = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="default: the call listed before; [] starts at once",
    )
    args = serializers.DictField(child=serializers.CharField(), required=False)
    input = serializers.JSONField(required=False)
    site = serializers.CharField(required=False)
    time_limit = serializers.IntegerField(required=False, help_text="seconds")
    virtual = VirtualSpec(required=False)


class CallsDocument(serializers.Serializer):
    calls = CallSpec(many=True)


class JobDocument(CallsDocument):
    name = serializers.CharField(required=False)
    callback_url = serializers.URLField(
        required=False, help_text="POSTed the result when every call has ended"
    )


class Lease(serializers.Serializer):
    id = serializers.UUIDField()
    job_id = serializers.UUIDField()
    function = serializers.CharField()
    mode = serializers.CharField()
    args = serializers.DictField(child=serializers.CharField())
    input = serializers.CharField(allow_null=True)
    time_limit_seconds = serializers.IntegerField(allow_null=True)
    lease_expires_at = serializers.DateTimeField()
    after = serializers.ListField(
        child=serializers.UUIDField(),
        help_text="calls of this lease to run after: submit with a batch-system "
        "dependency on their batch jobs (only when the claim asked for `chain`)",
    )


class Stop(serializers.Serializer):
    id = serializers.UUIDField()
    batch_job_id = serializers.CharField(allow_null=True)


class DeployOffer(serializers.Serializer):
    id = serializers.UUIDField(help_text="the deployment")
    upload_id = serializers.UUIDField()
    function = serializers.CharField()
    format = serializers.ChoiceField(choices=["tar.gz", "zip", "script"])
    sha256 = serializers.CharField(help_text="what the owner approved")
    size = serializers.IntegerField()
    prepare = serializers.CharField()
    commit = serializers.CharField()


class Leases(serializers.Serializer):
    calls = Lease(many=True)
    cancel = Stop(many=True, help_text="calls to stop: they were cancelled")
    deploy = DeployOffer(
        many=True,
        required=False,
        help_text="approved code to install (only when the claim asked for it "
        "and the token holds GET_Code)",
    )


class DeploymentReported(serializers.Serializer):
    id = serializers.UUIDField()
    state = serializers.CharField()


class SignedApproval(serializers.Serializer):
    statement = serializers.DictField()
    signature = serializers.CharField(help_text="Ed25519, base64url without padding")


class ApprovalState(serializers.Serializer):
    id = serializers.UUIDField()
    state = serializers.ChoiceField(
        choices=["pending", "approved", "denied", "expired"]
    )
    expires_at = serializers.DateTimeField()
    approval = SignedApproval(required=False)


class Registered(serializers.Serializer):
    agent_id = serializers.UUIDField()
    site = serializers.CharField()
    functions = serializers.ListField(child=serializers.CharField())
    claim_wait_seconds = serializers.FloatField()
    lease_seconds = serializers.IntegerField()
    roles = serializers.ListField(
        child=serializers.CharField(), help_text="the roles of the agent's token"
    )


class Reported(serializers.Serializer):
    id = serializers.UUIDField()
    state = serializers.CharField()


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {status: OpenApiResponse(Problem) for status in (401, 403, *statuses)}


FAAS_HEADERS = [
    OpenApiParameter(
        "X-Hpcsera-Site", str, OpenApiParameter.HEADER, description="run on this site"
    ),
    OpenApiParameter(
        "X-Hpcsera-Time-Limit",
        int,
        OpenApiParameter.HEADER,
        description="wall-clock limit in seconds",
    ),
    OpenApiParameter(
        "X-Callback-Url",
        str,
        OpenApiParameter.HEADER,
        description="POSTed the result, signed, when the call ends",
    ),
]


class AgentFunction(serializers.Serializer):
    name = serializers.CharField()
    runner = serializers.CharField()
    idempotent = serializers.BooleanField()


class AgentDetail(serializers.Serializer):
    id = serializers.UUIDField()
    site = serializers.CharField()
    tag = serializers.CharField()
    capabilities = serializers.ListField(child=serializers.CharField())
    version = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField()
    seconds_since_seen = serializers.FloatField()
    alive = serializers.BooleanField()
    calls_held = serializers.IntegerField(allow_null=True)
    functions = AgentFunction(many=True)
    url = serializers.CharField()


class AgentList(serializers.Serializer):
    agents = AgentDetail(many=True)


class HeartbeatAnswer(serializers.Serializer):
    lease_expires_at = serializers.DateTimeField()
    lease_seconds = serializers.IntegerField()
    released = serializers.ListField(child=serializers.UUIDField())
