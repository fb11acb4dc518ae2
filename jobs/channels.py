"""Names of the wake-up channels (hpcsera.notify) that jobs publish on."""

from __future__ import annotations

from typing import Any


def work_channel(user_id: int, tag: str) -> str:
    return f"work:{user_id}:{tag}"


def call_channel(call_id: Any) -> str:
    return f"call:{call_id}"
