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


class CodeUpload(models.Model):
    """New code sent with POST_Code, held until its owner approves it.

    Approval is bound to `sha256`, the digest of exactly the bytes received;
    the bytes themselves are deleted when the upload is denied or expires.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        EXPIRED = "expired"
        # A newer upload of the same function (and site) was approved.
        SUPERSEDED = "superseded"
        # Its sender took it back before the owner decided.
        WITHDRAWN = "withdrawn"

    class Format(models.TextChoices):
        TAR_GZ = "tar.gz"
        ZIP = "zip"
        SCRIPT = "script"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads"
    )
    tag = models.CharField(max_length=63)
    function = models.CharField(max_length=64)
    # Empty: every agent of the user and tag deploys it.
    site = models.CharField(max_length=64, blank=True)
    format = models.CharField(max_length=8, choices=Format.choices)
    prepare = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    files = models.JSONField(default=list)
    file_count = models.PositiveIntegerField(default=0)
    content = models.BinaryField(default=b"")
    commit = models.CharField(max_length=64, blank=True)
    description = models.CharField(max_length=200, blank=True)
    # Who sent it: the token (and its client, for a decoupled login's token).
    token_id = models.UUIDField(null=True, blank=True)
    token_name = models.CharField(max_length=100, blank=True)
    client_name = models.CharField(max_length=100, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING
    )
    reason = models.CharField(max_length=200, blank=True)
    decided_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "tag", "-created_at"]),
            models.Index(
                fields=["user", "tag", "function"],
                name="upload_approved",
                condition=models.Q(state="approved"),
            ),
            models.Index(
                fields=["expires_at"],
                name="upload_pending_expiry",
                condition=models.Q(state="pending"),
            ),
        ]

    def is_expired(self, now=None) -> bool:
        return (now or timezone.now()) >= self.expires_at

    def __str__(self) -> str:
        return f"{self.function} {self.sha256[:12]}"


class Deployment(models.Model):
    """One agent installing one approved upload."""

    class State(models.TextChoices):
        OFFERED = "offered"
        DEPLOYED = "deployed"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    upload = models.ForeignKey(
        CodeUpload, on_delete=models.CASCADE, related_name="deployments"
    )
    agent = models.ForeignKey(
        "jobs.Agent", on_delete=models.CASCADE, related_name="deployments"
    )
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.OFFERED
    )
    # The agent process it was offered to; a restarted agent is offered it again.
    session = models.CharField(max_length=64, blank=True)
    reason = models.TextField(blank=True)
    log_tail = models.TextField(blank=True)
    offered_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["upload", "agent"], name="deployment_once_per_agent"
            )
        ]


class Passkey(models.Model):
    """A WebAuthn credential (ES256) of a user, for approving runs.

    Only the public key is here; the private key never leaves the user's
    authenticator. Agents that verify with "passkey" pin `public_key` too.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="passkeys"
    )
    credential_id = models.CharField(max_length=1400, unique=True)  # base64url
    public_key = models.TextField(help_text="PEM, SubjectPublicKeyInfo, P-256")
    rp_id = models.CharField(max_length=253)
    name = models.CharField(max_length=100)
    sign_count = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.user_id})"


class RunApproval(models.Model):
    """An agent asking its owner before it runs something (agent-side consent).

    What the agent asked for is kept as it sent it; the approval the agent
    accepts is a statement signed with the server's approval key (signing.py)
    or, approved with a passkey, the user's WebAuthn assertion over it
    (passkeys.py), which the agent checks against the passkey it pins.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        EXPIRED = "expired"

    class Purpose(models.TextChoices):
        CALL = "call"
        PREPARE = "prepare"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="approvals"
    )
    tag = models.CharField(max_length=63)
    agent = models.ForeignKey(
        "jobs.Agent", on_delete=models.CASCADE, related_name="approvals"
    )
    purpose = models.CharField(max_length=8, choices=Purpose.choices)
    call = models.ForeignKey(
        "jobs.FunctionCall",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="approvals",
    )
    deployment = models.ForeignKey(
        Deployment,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="approvals",
    )
    function = models.CharField(max_length=64)
    executable_sha256 = models.CharField(max_length=64)
    arguments_sha256 = models.CharField(max_length=64)
    nonce = models.CharField(max_length=64)
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PENDING
    )
    decided_by = models.CharField(max_length=150, blank=True)
    statement = models.JSONField(null=True, blank=True)
    signature = models.CharField(max_length=128, blank=True)
    # Approving with a passkey: the statement offered for signing (its
    # challenge is what the passkey must sign; single use), and then the
    # passkey's assertion over it, which the agent checks itself.
    prepared = models.JSONField(null=True, blank=True)
    prepared_challenge = models.CharField(max_length=64, blank=True)
    passkey = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "state", "-created_at"])]

    def is_expired(self, now=None) -> bool:
        return (now or timezone.now()) >= self.expires_at
