from __future__ import annotations

from rest_framework import serializers

from hpcsera.errors import BadInput
from jobs import validation
from jobs.models import CallState


class Finish(serializers.Serializer):
    state = serializers.ChoiceField(choices=[CallState.SUCCEEDED, CallState.FAILED])
    message = serializers.CharField(
        max_length=4000, required=False, allow_blank=True, default=""
    )


class CallChange(serializers.Serializer):
    held = serializers.BooleanField(required=False)
    args = serializers.DictField(child=serializers.CharField(), required=False)

    def validate_args(self, value: dict[str, str]) -> dict[str, str]:
        try:
            return validation.arguments(value.items())
        except BadInput as exc:
            raise serializers.ValidationError(exc.detail)

    def validate(self, data: dict) -> dict:
        if not data:
            raise serializers.ValidationError("change 'held', 'args' or both")
        return data
