from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Client(models.Model):
    """A headless client (CI runner, agent) a user registered with its public key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    client_id = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="clients"
    )
    name = models.CharField(max_length=100)
    public_key = models.TextField(help_text="PEM, SubjectPublicKeyInfo")
    algorithm = models.CharField(max_length=8)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.client_id})"


class AuthRequest(models.Model):
    """A client's request for a token, waiting for the user's decision."""

    class State(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        REDEEMED = "redeemed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Only a digest of the request id is kept: it is what the client polls with.
    digest = models.CharField(max_length=64, unique=True)
    client = models.ForeignKey(
        Client, on_delete=models.CASCADE, related_name="requests"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="auth_requests"
    )
    roles = models.JSONField(default=list)
    tag = models.CharField(max_length=63)
    binding_message = models.CharField(max_length=64)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING
    )
    approved_roles = models.JSONField(default=list)
    interval = models.PositiveIntegerField(default=5)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    last_polled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "state", "-created_at"]),
            models.Index(fields=["client", "state"]),
        ]

    def is_expired(self, now=None) -> bool:
        return (now or timezone.now()) >= self.expires_at


class UsedAssertion(models.Model):
    """A client assertion's `jti`, kept until the assertion expires, so that
    replaying it is refused by every server process (unique constraint)."""

    client = models.ForeignKey(Client, on_delete=models.CASCADE)
    jti = models.CharField(max_length=255)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "jti"], name="jti_once")
        ]
        indexes = [models.Index(fields=["expires_at"])]
