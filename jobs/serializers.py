from __future__ import annotations

from rest_framework import serializers

from jobs.models import CallState


class Finish(serializers.Serializer):
    state = serializers.ChoiceField(choices=[CallState.SUCCEEDED, CallState.FAILED])
    message = serializers.CharField(
        max_length=4000, required=False, allow_blank=True, default=""
    )
