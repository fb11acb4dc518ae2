from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Agent(models.Model):
    """An agent of one user and tag, on one site (cluster)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agents"
    )
    tag = models.CharField(max_length=63)
    site = models.CharField(max_length=64)
    capabilities = models.JSONField(default=list)
    version = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    # A fresh random value from every start of the agent process. Claims of an
    # older process (a long-poll still held after it was killed) lease nothing.
    session = models.CharField(max_length=64, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "tag", "site"], name="agent_unique_site"
            )
        ]

    def __str__(self) -> str:
        return f"{self.site} ({self.user}, {self.tag})"


class Function(models.Model):
    """A function an agent advertises in its inventory."""

    class Runner(models.TextChoices):
        LOCAL = "local"
        SLURM = "slurm"
        PBS = "pbs"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="functions")
    name = models.CharField(max_length=64)
    runner = models.CharField(max_length=8, choices=Runner.choices)
    idempotent = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "name"], name="function_unique")
        ]


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs"
    )
    tag = models.CharField(max_length=63)
    name = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # POSTed when every call of the job has ended (jobs.callbacks).
    callback_url = models.CharField(max_length=2048, blank=True)
    # The token that submitted the job: callbacks of the job and of its calls
    # are signed with that token's callback secret. Not a foreign key, so the
    # secret can still be derived after the token row is gone.
    token_id = models.UUIDField(null=True, blank=True)
    # Set once the job's callback delivery exists; the unique constraint on
    # Delivery keeps it to one even if two ends race.
    callback_done = models.BooleanField(default=False)

    class Meta:
        indexes = [
            models.Index(fields=["user", "tag", "-created_at"]),
            # The sweep for jobs that ended without their callback recorded.
            models.Index(
                fields=["created_at"],
                name="job_callback_open",
                condition=~models.Q(callback_url="") & models.Q(callback_done=False),
            ),
        ]


class CallState(models.TextChoices):
    PENDING = "pending"
    READY = "ready"
    LEASED = "leased"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


TERMINAL_STATES = frozenset(
    {CallState.SUCCEEDED, CallState.FAILED, CallState.CANCELLED, CallState.LOST}
)
# The states in which a call is leased to an agent and its lease can run out.
HELD_STATES = frozenset({CallState.LEASED, CallState.RUNNING})

# The states a call may move to each state from. Every state change is a
# conditional UPDATE on this set, so two writers racing (an agent's report and
# a cancellation, two agents claiming) cannot both win. Virtual calls, which no
# agent holds, end from ready by VIRTUAL_FINISH_FROM instead.
ALLOWED_FROM = {
    # Held before an agent took it; from LEASED or RUNNING when the lease of a
    # call leased ahead of its dependencies runs out (jobs.leases).
    CallState.PENDING: {CallState.READY},
    # LEASED and RUNNING go back to READY only when a lease of an idempotent
    # function ran out (jobs.leases).
    CallState.READY: {CallState.PENDING, CallState.LEASED, CallState.RUNNING},
    # From PENDING only when a claim leases a call ahead of its dependencies,
    # as part of a chain handed to the batch system (jobs.chains).
    CallState.LEASED: {CallState.READY, CallState.PENDING},
    CallState.RUNNING: {CallState.LEASED},
    CallState.SUCCEEDED: {CallState.LEASED, CallState.RUNNING},
    CallState.FAILED: {
        CallState.PENDING,
        CallState.READY,
        CallState.LEASED,
        CallState.RUNNING,
    },
    CallState.CANCELLED: {
        CallState.PENDING,
        CallState.READY,
        CallState.LEASED,
        CallState.RUNNING,
    },
    CallState.LOST: {CallState.LEASED, CallState.RUNNING},
}
VIRTUAL_FINISH_FROM = {CallState.READY}


class FunctionCall(models.Model):
    class Mode(models.TextChoices):
        SYNC = "sync"
        ASYNC = "async"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="calls")
    # Copied from the job so that claiming work needs no join.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    tag = models.CharField(max_length=63)
    # Unique inside its job when set; job documents name their calls.
    name = models.CharField(max_length=64, blank=True)
    function = models.CharField(max_length=64)
    mode = models.CharField(max_length=5, choices=Mode.choices)
    site = models.CharField(max_length=64, blank=True)
    args = models.JSONField(default=dict)
    # The JSON body exactly as received; neither server nor agent interprets it.
    input = models.TextField(null=True, blank=True)
    time_limit_seconds = models.PositiveIntegerField(null=True, blank=True)
    # POSTed when the call ends (X-Callback-Url of an async FaaS call).
    callback_url = models.CharField(max_length=2048, blank=True)
    # A virtual call is never claimed: a REST call finishes it, or its deadline.
    virtual = models.BooleanField(default=False)
    deadline_at = models.DateTimeField(null=True, blank=True)
    # A held call stays pending when its dependencies are done.
    held = models.BooleanField(default=False)
    # Dependencies not yet succeeded; a pending call at 0 and not held is ready.
    open_deps = models.PositiveIntegerField(default=0)

    state = models.CharField(
        max_length=10, choices=CallState.choices, default=CallState.READY
    )
    reason = models.TextField(blank=True)
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="calls"
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # How many times the call was leased; above 1 it was requeued after a lease
    # ran out.
    attempt = models.PositiveIntegerField(default=0)
    batch_job_id = models.CharField(max_length=64, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    stdout_truncated = models.BooleanField(default=False)
    stderr_tail = models.TextField(blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    leased_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # Claiming looks only at ready calls of one user and tag; the partial
            # index stays as small as the queue however many calls finished.
            models.Index(
                fields=["user", "tag", "function", "created_at"],
                name="call_ready_queue",
                condition=models.Q(state="ready"),
            ),
            models.Index(
                fields=["deadline_at"],
                name="call_virtual_deadline",
                condition=models.Q(virtual=True, state__in=["pending", "ready"]),
            ),
            # The lease sweep looks only at held calls, by expiry.
            models.Index(
                fields=["lease_expires_at"],
                name="call_lease_expiry",
                condition=models.Q(state__in=["leased", "running"]),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "name"],
                name="call_unique_name",
                condition=~models.Q(name=""),
            )
        ]

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class CallEdge(models.Model):
    """`downstream` runs only after `upstream` succeeded; both in one job."""

    upstream = models.ForeignKey(
        FunctionCall, on_delete=models.CASCADE, related_name="downstream_edges"
    )
    downstream = models.ForeignKey(
        FunctionCall, on_delete=models.CASCADE, related_name="upstream_edges"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["upstream", "downstream"], name="edge_unique"
            )
        ]


class Delivery(models.Model):
    """One callback POST to make, with every attempt at it.

    Its id is the delivery id the receiver sees on every attempt, so a
    receiver can drop repeats. Rows are the schedule: `next_attempt_at` says
    when the next attempt is due, and whoever sends claims the row first by
    moving it forward (jobs.callbacks).
    """

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    class Event(models.TextChoices):
        CALL_ENDED = "call.ended"
        JOB_ENDED = "job.ended"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="deliveries")
    # Set for a call's callback; empty for the job's own.
    call = models.ForeignKey(
        FunctionCall,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="deliveries",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    tag = models.CharField(max_length=63)
    event = models.CharField(max_length=16, choices=Event.choices)
    url = models.CharField(max_length=2048)
    token_id = models.UUIDField(null=True, blank=True)
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.IntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # [{"attempt", "at", "status", "error"}, ...], oldest first.
    history = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due",
                condition=models.Q(state="pending"),
            )
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["call"],
                name="delivery_one_per_call",
                condition=models.Q(call__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["job"],
                name="delivery_one_per_job",
                condition=models.Q(call__isnull=True),
            ),
        ]
