"""GET /api/v1/capabilities: version, roles and limits, and who the token is."""

from __future__ import annotations

import pytest
from django.test import override_settings

from tokens import roles

pytestmark = pytest.mark.django_db


def test_any_valid_token_learns_the_server_its_roles_and_limits(
    alice, make_token, client_for
):
    secret = make_token(alice, role_list=[roles.GET_JOB_STATUS])
    answer = client_for(secret).get("/api/v1/capabilities")
    assert answer.status_code == 200
    body = answer.json()
    assert body["api_version"] == "v1" and body["version"]
    assert body["token"]["user"] == "alice" and body["token"]["tag"] == "proj-a"
    assert body["token"]["roles"] == [roles.GET_JOB_STATUS]
    assert [r["name"] for r in body["roles"]] == list(roles.ALL_ROLES)
    assert body["limits"]["max_body_bytes"] == 1024 * 1024
    assert body["features"]["sync_calls"] is True


def test_limits_follow_the_settings(alice, make_token, client_for, settings):
    with override_settings(HPCSERA={**settings.HPCSERA, "MAX_ARGS": 7}):
        body = client_for(make_token(alice)).get("/api/v1/capabilities").json()
    assert body["limits"]["max_args"] == 7


def test_it_tells_bob_about_bob_only(alice, bob, make_token, client_for):
    make_token(alice)
    body = client_for(make_token(bob, tag="proj-b")).get("/api/v1/capabilities")
    assert body.json()["token"]["user"] == "bob"
    assert "alice" not in body.content.decode()
    assert "proj-a" not in body.content.decode()


def test_without_a_token_it_is_401_with_the_problem_body(client):
    answer = client.get("/api/v1/capabilities")
    assert answer.status_code == 401
    assert answer.json()["code"] == "not_authenticated"


def test_a_malformed_authorization_header_is_401_invalid_token(client):
    answer = client.get("/api/v1/capabilities", HTTP_AUTHORIZATION="Bearer nope")
    assert answer.status_code == 401
    assert answer.json()["code"] == "invalid_token"


def test_writes_are_refused_with_405(alice, make_token, client_for):
    answer = client_for(make_token(alice)).post("/api/v1/capabilities", {})
    assert answer.status_code == 405
    assert answer.json()["code"] == "method_not_allowed"
