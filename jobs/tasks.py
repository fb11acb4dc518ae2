"""Celery tasks. Each takes ids only and calls one service."""

from __future__ import annotations

from datetime import datetime

from hpcsera.celery import app
from jobs.callbacks import delivery_attempt


# Bound to this project's app, not shared_task: a server process that never
# imported the app would otherwise queue on Celery's default one.
@app.task(name="jobs.deliver", ignore_result=True)
def deliver(delivery_id: str, claim: str) -> str | None:
    """One attempt at a delivery the dispatcher claimed; retries are rows."""
    return delivery_attempt(
        delivery_id=delivery_id, claim=datetime.fromisoformat(claim)
    )
