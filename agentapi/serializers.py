from __future__ import annotations

from django.conf import settings
from django.core.validators import ProhibitNullCharactersValidator
from rest_framework import serializers

from hpcsera.errors import BadInput
from jobs import validation
from jobs.models import CallState, Function


class FunctionOffer(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    runner = serializers.ChoiceField(choices=Function.Runner.choices)
    idempotent = serializers.BooleanField(default=False)

    def validate_name(self, value: str) -> str:
        try:
            return validation.function_name(value)
        except BadInput as exc:
            raise serializers.ValidationError(exc.detail)


class Registration(serializers.Serializer):
    site = serializers.CharField(max_length=64)
    capabilities = serializers.ListField(
        child=serializers.ChoiceField(choices=Function.Runner.choices), max_length=8
    )
    functions = FunctionOffer(many=True, max_length=1000)
    version = serializers.CharField(max_length=32, allow_blank=True, default="")
    session = serializers.CharField(max_length=64, allow_blank=True, default="")

    def validate_site(self, value: str) -> str:
        try:
            return validation.site_name(value)
        except BadInput as exc:
            raise serializers.ValidationError(exc.detail)

    def validate_functions(self, value: list[dict]) -> list[dict]:
        names = [f["name"] for f in value]
        if len(names) != len(set(names)):
            raise serializers.ValidationError("function names must be unique")
        return value


class Claim(serializers.Serializer):
    max = serializers.IntegerField(min_value=1, default=1)
    wait = serializers.FloatField(min_value=0, default=0)
    session = serializers.CharField(max_length=64, allow_blank=True, default="")
    # The agent hands chains of batch calls to its batch system (jobs.chains);
    # off by default, so an agent that ignores `after` never gets such leases.
    chain = serializers.BooleanField(default=False)
    # The agent's owner turned deployments of uploaded code on; only then, and
    # only for a token with GET_Code, does the answer carry `deploy`.
    deploy = serializers.BooleanField(default=False)

    def validate_max(self, value: int) -> int:
        return min(value, settings.HPCSERA["CLAIM_MAX_CALLS"])

    def validate_wait(self, value: float) -> float:
        return min(value, settings.HPCSERA["CLAIM_WAIT_SECONDS"])


class OutputField(serializers.CharField):
    """A program's output: any text, a NUL in it kept as U+FFFD, since
    databases store no NUL in text and a refused report would strand the call."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(
            allow_blank=True, trim_whitespace=False, required=False, **kwargs
        )
        self.validators = [
            v
            for v in self.validators
            if not isinstance(v, ProhibitNullCharactersValidator)
        ]

    def to_internal_value(self, data: object) -> str:
        return super().to_internal_value(data).replace("\x00", "\ufffd")


class Heartbeat(serializers.Serializer):
    # The calls the agent still holds; only these leases are renewed.
    calls = serializers.ListField(
        child=serializers.UUIDField(), max_length=10000, default=list
    )
    # True: `calls` is everything the agent holds (it says so once at start).
    # Leased calls it does not name never reached it and go back to the queue.
    complete = serializers.BooleanField(default=False)


# `lost`: the agent cannot tell how the call ended, e.g. its batch job vanished
# from the scheduler's accounting.
REPORTABLE = [CallState.RUNNING, CallState.SUCCEEDED, CallState.FAILED, CallState.LOST]


class Report(serializers.Serializer):
    state = serializers.ChoiceField(choices=REPORTABLE)
    exit_code = serializers.IntegerField(
        required=False, allow_null=True, min_value=-(2**31), max_value=2**31 - 1
    )
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    batch_job_id = serializers.CharField(
        max_length=64, required=False, allow_blank=True
    )
    stdout = OutputField()
    stdout_truncated = serializers.BooleanField(required=False)
    stderr_tail = OutputField()

    def validate_stdout(self, value: str) -> str:
        if (
            len(value.encode("utf-8", errors="replace"))
            > settings.HPCSERA["MAX_OUTPUT_BYTES"]
        ):
            raise serializers.ValidationError("stdout is larger than the output limit")
        return value

    def validate_stderr_tail(self, value: str) -> str:
        return value[-settings.HPCSERA["MAX_TAIL_CHARS"] :]

    def validate(self, data: dict) -> dict:
        if data["state"] == CallState.SUCCEEDED and data.get("exit_code") not in (
            None,
            0,
        ):
            raise serializers.ValidationError(
                {"exit_code": "a call that succeeded exited with 0"}
            )
        return data


class DeploymentReport(serializers.Serializer):
    state = serializers.ChoiceField(choices=["deployed", "failed"])
    # The agent sends an empty reason with a successful deployment.
    reason = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, default=""
    )
    log_tail = OutputField(default="")

    def validate_log_tail(self, value: str) -> str:
        return value[-settings.HPCSERA["MAX_TAIL_CHARS"] :]


class ApprovalRequest(serializers.Serializer):
    purpose = serializers.ChoiceField(choices=["call", "prepare"])
    subject_id = serializers.UUIDField()
    function = serializers.CharField(max_length=64)
    executable_sha256 = serializers.CharField(max_length=64)
    arguments_sha256 = serializers.CharField(max_length=64)
    nonce = serializers.CharField(max_length=64)


class ApprovalWait(serializers.Serializer):
    wait = serializers.FloatField(min_value=0, default=0)

    def validate_wait(self, value: float) -> float:
        return min(value, settings.HPCSERA["CLAIM_WAIT_SECONDS"])
