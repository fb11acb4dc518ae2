"""The decoupled flow: a client asks, the user decides in the web UI, the client
polls and redeems the grant once. Closest standard: OpenID CIBA, poll mode."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from consent.keys import parse_public_key
from consent.models import AuthRequest, Client
from consent.oauth import OAuthError
from hpcsera.errors import BadInput
from hpcsera.notify import publish_on_commit
from tokens import roles as role_names
from tokens.audit import client_ip, security_event_record
from tokens.models import SecurityEvent, Token
from tokens.services import IssuedToken, lifetime_caps, token_issue

logger = logging.getLogger(__name__)

BINDING_MESSAGE = re.compile(r"[A-Za-z0-9 .,:;!?()/#@+_-]{1,64}")
SLOW_DOWN_STEP = 5


def _digest(request_id: str) -> str:
    return hashlib.sha256(request_id.encode()).hexdigest()


def inbox_channel(user_id: int) -> str:
    return f"inbox:{user_id}"


def client_register(*, user, name: str, public_key: str, request=None) -> Client:
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise BadInput("A client name is 1 to 100 characters.", code="invalid_name")
    pem, algorithm = parse_public_key(public_key)
    client = Client.objects.create(
        client_id="hpcsera-client-" + secrets.token_hex(8),
        user=user,
        name=name,
        public_key=pem,
        algorithm=algorithm,
    )
    security_event_record(
        user=user,
        kind=SecurityEvent.Kind.CLIENT_REGISTERED,
        request=request,
        client_id=client.client_id,
        name=name,
        algorithm=algorithm,
    )
    return client


def client_revoke(*, client: Client, request=None) -> None:
    """Revoke the client and every token it obtained: its key may have leaked."""
    now = timezone.now()
    with transaction.atomic():
        revoked = Client.objects.filter(pk=client.pk, revoked_at__isnull=True).update(
            revoked_at=now
        )
        Token.objects.filter(client=client, revoked_at__isnull=True).update(
            revoked_at=now
        )
    if revoked:
        security_event_record(
            user=client.user,
            kind=SecurityEvent.Kind.CLIENT_REVOKED,
            request=request,
            client_id=client.client_id,
        )


def auth_request_create(
    *, client: Client, params: dict, request
) -> tuple[str, AuthRequest]:
    """Validate a backchannel request; return the request id (shown once)."""
    limits = settings.HPCSERA
    user = (
        get_user_model()
        .objects.filter(username=params.get("login_hint", ""), is_active=True)
        .first()
    )
    # A client may only ask its own user: it cannot be used to spam others.
    if user is None or user.pk != client.user_id:
        raise OAuthError("unknown_user_id", "The client cannot ask this user.")
    wanted = _requested_roles(params.get("scope", ""))
    tag = params.get("tag", "default")
    if not role_names.valid_tag(tag):
        raise OAuthError("invalid_request", "The tag is not valid.")
    message = params.get("binding_message", "")
    if not BINDING_MESSAGE.fullmatch(message):
        raise OAuthError(
            "invalid_binding_message",
            "The binding message is 1 to 64 plain characters (letters, digits, "
            "spaces and simple punctuation).",
        )
    request_id = secrets.token_urlsafe(32)  # 256 bits
    lifetime = limits["AUTH_REQUEST_SECONDS"]
    with transaction.atomic():
        # Counting and inserting under the client's and the user's row locks:
        # requests sent at once cannot all pass the caps.
        Client.objects.select_for_update().filter(pk=client.pk).first()
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        now = timezone.now()
        _check_rate(client, user, now, limits)
        auth = AuthRequest.objects.create(
            digest=_digest(request_id),
            client=client,
            user=user,
            roles=sorted(wanted),
            tag=tag,
            binding_message=message,
            source_ip=client_ip(request),
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime),
            interval=limits["POLL_INTERVAL_SECONDS"],
        )
        publish_on_commit(inbox_channel(user.pk))
        transaction.on_commit(lambda: _notify_by_mail(auth))
    logger.info("%s token request from client %s", auth.id, client.client_id)
    return request_id, auth


def _requested_roles(scope: str) -> frozenset[str]:
    try:
        return role_names.parse_roles(scope.split())
    except ValueError as exc:
        raise OAuthError("invalid_scope", str(exc))


def _check_rate(client: Client, user, now, limits) -> None:
    pending = AuthRequest.objects.filter(
        client=client, state=AuthRequest.State.PENDING, expires_at__gt=now
    ).count()
    if pending >= limits["MAX_PENDING_PER_CLIENT"]:
        raise OAuthError(
            "slow_down",
            "This client has too many requests waiting for a decision.",
            status=429,
        )
    window = now - timedelta(hours=1)
    for field, value, cap in (
        ("user", user, limits["MAX_REQUESTS_PER_USER_HOUR"]),
        ("client", client, limits["MAX_REQUESTS_PER_CLIENT_HOUR"]),
    ):
        recent = AuthRequest.objects.filter(**{field: value}, created_at__gt=window)
        if recent.count() >= cap:
            raise OAuthError(
                "slow_down", "Too many token requests in the last hour.", status=429
            )


def _notify_by_mail(auth: AuthRequest) -> None:
    if not settings.EMAIL_HOST or not auth.user.email:
        return
    try:
        send_mail(
            "HPCSerA: a client asks for a token",
            f"{auth.client.name} asks for a token with the roles "
            f"{', '.join(auth.roles)} in tag {auth.tag}.\n"
            f"It shows the code: {auth.binding_message}\n"
            "Approve or deny it in the HPCSerA web UI, under Requests.",
            None,
            [auth.user.email],
        )
    except OSError as exc:
        logger.error("%s notification mail failed: %s", auth.id, exc)


def auth_request_decide(
    *,
    auth: AuthRequest,
    approve: bool,
    roles: list[str],
    request=None,
) -> AuthRequest:
    """The user approves (possibly narrowing the roles) or denies, once."""
    now = timezone.now()
    if auth.is_expired(now):
        raise BadInput("This request has expired.", code="expired")
    granted = sorted(set(roles) & set(auth.roles)) if approve else []
    if approve and not granted:
        raise BadInput("Approve at least one of the requested roles.", code="no_roles")
    state = AuthRequest.State.APPROVED if approve else AuthRequest.State.DENIED
    decided = AuthRequest.objects.filter(
        pk=auth.pk, state=AuthRequest.State.PENDING
    ).update(state=state, approved_roles=granted, decided_at=now)
    if not decided:
        raise BadInput("This request was already decided.", code="already_decided")
    security_event_record(
        user=auth.user,
        kind=SecurityEvent.Kind.GRANT_APPROVED
        if approve
        else SecurityEvent.Kind.GRANT_DENIED,
        request=request,
        client_id=auth.client.client_id,
        roles=granted,
        tag=auth.tag,
    )
    auth.refresh_from_db()
    return auth


def token_poll(*, client: Client, request_id: str) -> IssuedToken:
    """The client's poll: the token once approved, else the OAuth answer why not."""
    if not request_id:
        raise OAuthError("invalid_request", "auth_req_id is missing.")
    now = timezone.now()
    auth = AuthRequest.objects.filter(digest=_digest(request_id)).first()
    # Another client's request id answers exactly like an unknown one.
    if auth is None or auth.client_id != client.pk:
        raise OAuthError("invalid_grant", "Unknown auth_req_id.")
    if auth.is_expired(now) and auth.state != AuthRequest.State.REDEEMED:
        raise OAuthError("expired_token", "The request expired before it was redeemed.")
    if auth.state == AuthRequest.State.DENIED:
        raise OAuthError("access_denied", "The user denied the request.")
    if auth.state == AuthRequest.State.REDEEMED:
        raise OAuthError("invalid_grant", "This request was redeemed already.")
    if auth.state == AuthRequest.State.PENDING:
        _pace(auth, now)
        raise OAuthError("authorization_pending", "The user has not decided yet.")
    return _redeem(auth, client)


def _pace(auth: AuthRequest, now) -> None:
    too_fast = auth.last_polled_at and now - auth.last_polled_at < timedelta(
        seconds=auth.interval
    )
    changes = {"last_polled_at": now}
    if too_fast:
        changes["interval"] = auth.interval + SLOW_DOWN_STEP
    AuthRequest.objects.filter(pk=auth.pk).update(**changes)
    if too_fast:
        raise OAuthError(
            "slow_down",
            "Polling too fast; wait longer between polls.",
            interval=auth.interval + SLOW_DOWN_STEP,
        )


def _redeem(auth: AuthRequest, client: Client) -> IssuedToken:
    with transaction.atomic():
        # Exactly one of two concurrent polls moves the request on.
        won = AuthRequest.objects.filter(
            pk=auth.pk, state=AuthRequest.State.APPROVED
        ).update(state=AuthRequest.State.REDEEMED)
        if not won:
            raise OAuthError("invalid_grant", "This request was redeemed already.")
        cap = min(lifetime_caps()[r] for r in auth.approved_roles)
        issued = token_issue(
            user=auth.user,
            tag=auth.tag,
            roles=auth.approved_roles,
            lifetime_seconds=cap,
            name=f"client {client.name}",
        )
        issued.token.client = client
        issued.token.save(update_fields=["client"])
    logger.info("%s redeemed by client %s", auth.id, client.client_id)
    return issued
