"""Every API endpoint in the URL configuration, walked with tokens that must not
get through: another user's, the same user's of another tag, one missing the
role, an expired one and a revoked one. Each is refused with the right status
and leaves alice's objects exactly as they were.

The endpoints are found by walking the URL configuration, so a new endpoint is
covered (or fails here, asking for its parameters) without anyone remembering.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.views import APIView

from consent import code
from consent.models import CodeUpload, Deployment, RunApproval
from consent.signing import arguments_sha256_for_call
from jobs.models import Agent, Delivery, Function, FunctionCall, Job
from tests.conftest import register_agent
from tokens import roles
from tokens.models import Token

pytestmark = pytest.mark.django_db

PARAM = re.compile(r"<(?:\w+:)?(\w+)>")
# Parameters that name one of alice's objects: a foreign token must get 404.
OBJECT_PARAMS = {
    "job_id",
    "call_id",
    "agent_id",
    "user",
    "upload_id",
    "deployment_id",
    "approval_id",
}
SCRIPT = b"#!/bin/sh\necho hello\n"
BODIES = {
    "agent-register": {"site": "s", "capabilities": ["local"], "functions": []},
    "agent-claim": {"max": 1, "wait": 0},
    "agent-report": {"state": "failed", "exit_code": 1},
    "job-list": {"calls": [{"name": "wait", "virtual": {"deadline_seconds": 60}}]},
    "job-calls": {"calls": [{"name": "wait", "virtual": {"deadline_seconds": 60}}]},
    "call-finish": {"state": "failed", "message": "no"},
    "agent-deployment-report": {"state": "failed", "reason": "no"},
    "agent-approvals": {
        "purpose": "call",
        "subject_id": "00000000-0000-0000-0000-000000000000",
        "function": "hello",
        "executable_sha256": "0" * 64,
        "arguments_sha256": "0" * 64,
        "nonce": "0" * 32,
    },
}
# Sent as multipart/form-data; built fresh for every request (files are read).
MULTIPART = {"code-list": lambda: {"function": "x", "script": script_file()}}


def script_file() -> SimpleUploadedFile:
    return SimpleUploadedFile("run.sh", SCRIPT)


def api_routes() -> list[tuple[str, str, type[APIView]]]:
    found = []

    def walk(patterns, prefix: str = "") -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                view = getattr(entry.callback, "cls", None)
                if view is not None and issubclass(view, APIView):
                    found.append((prefix + str(entry.pattern), entry.name, view))

    walk(get_resolver().url_patterns)
    return [r for r in found if getattr(r[2], "required_roles", None) is not None]


def test_the_walk_finds_every_kind_of_endpoint():
    names = {name for _, name, _ in api_routes()}
    assert {
        "faas-sync",
        "faas-async",
        "job-list",
        "job-detail",
        "call-detail",
        "job-calls",
        "call-finish",
        "agent-register",
        "agent-claim",
        "agent-report",
        "capabilities",
        "code-list",
        "code-detail",
        "agent-deployment-archive",
        "agent-deployment-report",
        "agent-approvals",
        "agent-approval",
    } <= names


def snapshot() -> list:
    """Every row of alice's in her tag proj-a, as it is now."""
    volatile = {"last_seen_at", "last_used_at"}
    mine = {"user__username": "alice", "tag": "proj-a"}
    owned_by = {
        Job: mine,
        FunctionCall: mine,
        Agent: mine,
        Function: {"agent__user__username": "alice", "agent__tag": "proj-a"},
        Token: mine,
        Delivery: mine,
        CodeUpload: mine,
        Deployment: {"agent__user__username": "alice", "agent__tag": "proj-a"},
        RunApproval: mine,
    }
    rows = []
    for model, owned in owned_by.items():
        for row in model.objects.filter(**owned).order_by("pk").values():
            rows.append({k: v for k, v in row.items() if k not in volatile})
    return rows


@pytest.fixture
def world(alice, bob, make_token, client_for):
    alice_client = client_for(make_token(alice))
    agent_id = register_agent(alice_client, functions=("hello",))
    # An ended call with a callback, so that alice has a delivery to guard.
    ended_id = alice_client.post(
        "/alice/async-function/hello",
        HTTP_X_CALLBACK_URL="https://93.184.215.14/alice",  # never sent here
    ).json()["call_id"]
    alice_client.post(
        f"/api/agent/v1/agents/{agent_id}/claim", {"max": 1}, format="json"
    )
    alice_client.post(
        f"/api/agent/v1/agents/{agent_id}/calls/{ended_id}/report",
        {"state": "failed", "exit_code": 1},
        format="json",
    )
    assert Delivery.objects.filter(call_id=ended_id).exists()
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    alice_client.post(
        f"/api/agent/v1/agents/{agent_id}/claim", {"max": 1}, format="json"
    )
    call = FunctionCall.objects.get(id=call_id)
    upload_id = alice_client.post(
        "/api/v1/code", {"function": "hello", "script": script_file()}
    ).json()["id"]
    code.code_upload_decide(
        upload=CodeUpload.objects.get(id=upload_id),
        user=alice,
        approve=True,
        sha256=hashlib.sha256(SCRIPT).hexdigest(),
    )
    offers = alice_client.post(
        f"/api/agent/v1/agents/{agent_id}/claim",
        {"max": 1, "deploy": True},
        format="json",
    ).json()["deploy"]
    approval_id = alice_client.post(
        f"/api/agent/v1/agents/{agent_id}/approvals",
        {
            "purpose": "call",
            "subject_id": call_id,
            "function": "hello",
            "executable_sha256": "1" * 64,
            "arguments_sha256": arguments_sha256_for_call(call.args, call.input),
            "nonce": "2" * 32,
        },
        format="json",
    ).json()["id"]
    return {
        "params": {
            "job_id": str(call.job_id),
            "call_id": call_id,
            "agent_id": agent_id,
            "user": "alice",
            "name": "hello",
            "upload_id": upload_id,
            "deployment_id": offers[0]["id"],
            "approval_id": approval_id,
        },
        "alice_ids": [
            str(call.job_id),
            call_id,
            agent_id,
            upload_id,
            offers[0]["id"],
            approval_id,
        ],
    }


def fill(route: str, params: dict) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in params:
            pytest.fail(f"the matrix does not know how to fill <{name}> in {route}")
        return params[name]

    return "/" + PARAM.sub(value, route)


def outsiders(alice, bob, make_token):
    return {
        "bob": make_token(bob),
        "alice-other-tag": make_token(alice, tag="proj-b"),
    }


def every_request(world):
    for route, name, view in api_routes():
        path = fill(route, world["params"])
        for method, needed in view.required_roles.items():
            is_object = bool(set(PARAM.findall(route)) & OBJECT_PARAMS)
            yield path, name, method, frozenset(needed), is_object


def send(client, method: str, path: str, name: str):
    if name in MULTIPART and method == "POST":
        return client.post(path, MULTIPART[name](), format="multipart")
    body = BODIES.get(name)
    return getattr(client, method.lower())(path, body, format="json")


def test_foreign_tokens_see_404_or_nothing_and_change_nothing(
    world, alice, bob, make_token, client_for
):
    for label, secret in outsiders(alice, bob, make_token).items():
        client = client_for(secret)
        for path, name, method, _, is_object in every_request(world):
            before = snapshot()
            answer = send(client, method, path, name)
            where = f"{label} {method} {path}"
            if is_object:
                assert answer.status_code == 404, where
                assert answer.json()["code"] in ("not_found", "unknown_function"), where
            else:
                assert answer.status_code < 300, where
                for alice_id in world["alice_ids"]:
                    assert alice_id not in answer.content.decode(), where
            assert snapshot() == before, where


def test_a_token_missing_the_role_gets_403_and_changes_nothing(
    world, alice, make_token, client_for
):
    for path, name, method, needed, _ in every_request(world):
        if not needed:
            continue  # open to every valid token; the 401 tests still cover it
        others = [r for r in roles.ALL_ROLES if r not in needed]
        client = client_for(make_token(alice, role_list=others))
        before = snapshot()
        answer = send(client, method, path, name)
        assert answer.status_code == 403, f"{method} {path}"
        assert answer.json()["code"] == "missing_role"
        assert snapshot() == before


@pytest.mark.parametrize(
    "how, code", [("expired", "token_expired"), ("revoked", "token_revoked")]
)
def test_expired_and_revoked_tokens_get_401_and_change_nothing(
    world, alice, make_token, client_for, how, code
):
    secret = make_token(alice)
    token = Token.objects.get(prefix=secret.split("_")[1])
    if how == "expired":
        token.expires_at = timezone.now() - timedelta(seconds=1)
    else:
        token.revoked_at = timezone.now()
    token.save()
    client = client_for(secret)
    for path, name, method, _, _ in every_request(world):
        before = snapshot()
        answer = send(client, method, path, name)
        assert answer.status_code == 401, f"{method} {path}"
        assert answer.json()["code"] == code
        assert snapshot() == before


# Endpoints that do not take API tokens, each with the reason; anything else in
# the URL configuration must be an API view with declared roles.
NOT_TOKEN_ENDPOINTS = {
    "": "redirect to the web UI",
    "admin/": "Django admin: operators' password login",
    "healthz": "liveness probe, reveals nothing",
    "ui/": "web UI: session login through OIDC",
    "oidc/": "the OIDC login itself",
    "oauth/": "decoupled login: client assertions (tests/test_consent.py)",
    ".well-known/oauth-authorization-server": "public metadata",
    "api/schema": "public API description",
    "api/docs/": "public API viewer",
}


def test_every_endpoint_either_declares_roles_or_is_a_known_exception():
    covered = {route for route, _, _ in api_routes()}
    stray = []

    def walk(patterns, prefix: str = "") -> None:
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if (
                any(route.startswith(p) for p in NOT_TOKEN_ENDPOINTS if p)
                or route == ""
            ):
                continue
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif route not in covered:
                stray.append(route)

    walk(get_resolver().url_patterns)
    assert stray == [], f"endpoints neither in the matrix nor excused: {stray}"
