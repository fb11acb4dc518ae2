"""Shared fixtures. alice and bob are two users; each has tokens in two tags."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tokens import roles
from tokens.services import token_issue

ALL = list(roles.ALL_ROLES)


@pytest.fixture
def alice(db):
    return get_user_model().objects.create(username="alice")


@pytest.fixture
def bob(db):
    return get_user_model().objects.create(username="bob")


@pytest.fixture
def make_token(db) -> Callable[..., str]:
    def make(user, tag: str = "proj-a", role_list=None, lifetime: int = 3600) -> str:
        roles_ = list(role_list or ALL)
        return token_issue(
            user=user, tag=tag, roles=roles_, lifetime_seconds=lifetime
        ).secret

    return make


@pytest.fixture
def client_for() -> Callable[[str], APIClient]:
    def make(secret: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


def register_agent(
    client: APIClient,
    functions=("hello",),
    site: str = "site-a",
    runner: str = "local",
) -> str:
    answer = client.post(
        "/api/agent/v1/agents",
        {
            "site": site,
            "capabilities": ["local"],
            "functions": [{"name": f, "runner": runner} for f in functions],
        },
        format="json",
    )
    assert answer.status_code == 200, answer.content
    return answer.json()["agent_id"]
