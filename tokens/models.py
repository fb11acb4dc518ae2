from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Token(models.Model):
    """An API token. Only a lookup prefix and a SHA-256 digest are stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tokens"
    )
    tag = models.CharField(max_length=63)
    roles = models.JSONField(default=list)
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Set when a registered client obtained the token by the user's approval.
    client = models.ForeignKey(
        "consent.Client",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tokens",
    )

    def __str__(self) -> str:
        return f"{self.prefix} ({self.user}, {self.tag})"

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(self.roles)

    def is_expired(self, now=None) -> bool:
        return (now or timezone.now()) >= self.expires_at

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class SecurityEvent(models.Model):
    """What the audit log page shows a user: logins, tokens made and revoked, ..."""

    class Kind(models.TextChoices):
        LOGIN = "login", "Login"
        LOGIN_FAILED = "login_failed", "Failed login"
        LOGOUT = "logout", "Logout"
        TOKEN_CREATED = "token_created", "Token created"
        TOKEN_REVOKED = "token_revoked", "Token revoked"
        AGENT_REGISTERED = "agent_registered", "Agent registered"
        CLIENT_REGISTERED = "client_registered", "Client registered"
        CLIENT_REVOKED = "client_revoked", "Client revoked"
        GRANT_APPROVED = "grant_approved", "Token request approved"
        GRANT_DENIED = "grant_denied", "Token request denied"
        CODE_UPLOADED = "code_uploaded", "Code uploaded"
        CODE_APPROVED = "code_approved", "Code approved"
        CODE_DENIED = "code_denied", "Code denied"
        RUN_APPROVED = "run_approved", "Run approved"
        RUN_DENIED = "run_denied", "Run denied"
        PASSKEY_ADDED = "passkey_added", "Passkey added"
        PASSKEY_REMOVED = "passkey_removed", "Passkey removed"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="security_events",
    )
    kind = models.CharField(max_length=32, choices=Kind.choices)
    detail = models.JSONField(default=dict)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["user", "-created_at"])]
