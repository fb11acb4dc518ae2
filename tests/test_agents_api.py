"""GET /api/v1/agents: the user's agents with their liveness."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Agent
from tests.conftest import register_agent
from tokens import roles

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_client(alice, make_token, client_for):
    return client_for(make_token(alice))


def test_the_list_shows_each_agent_alive_with_its_functions_and_load(alice_client):
    agent_id = register_agent(alice_client, functions=("hello", "bye"), site="hpc1")
    alice_client.post("/alice/async-function/hello")
    alice_client.post(
        f"/api/agent/v1/agents/{agent_id}/claim", {"max": 5}, format="json"
    )

    agents = alice_client.get("/api/v1/agents").json()["agents"]

    assert [a["id"] for a in agents] == [agent_id]
    assert agents[0]["site"] == "hpc1" and agents[0]["alive"] is True
    assert [f["name"] for f in agents[0]["functions"]] == ["bye", "hello"]
    assert agents[0]["calls_held"] == 1
    assert agents[0]["url"] == f"/api/v1/agents/{agent_id}"


def test_an_agent_not_heard_from_shows_as_not_alive(alice_client, settings):
    agent_id = register_agent(alice_client)
    silent_since = timezone.now() - timedelta(seconds=600)
    Agent.objects.filter(id=agent_id).update(last_seen_at=silent_since)

    detail = alice_client.get(f"/api/v1/agents/{agent_id}").json()

    assert detail["alive"] is False and detail["seconds_since_seen"] >= 600


def test_a_heartbeat_brings_an_agent_back_to_life(alice_client):
    agent_id = register_agent(alice_client)
    Agent.objects.filter(id=agent_id).update(
        last_seen_at=timezone.now() - timedelta(seconds=600)
    )
    alice_client.post(
        f"/api/agent/v1/agents/{agent_id}/heartbeat", {"calls": []}, format="json"
    )
    assert alice_client.get(f"/api/v1/agents/{agent_id}").json()["alive"] is True


def test_other_users_and_tags_do_not_see_an_agent(
    alice_client, alice, bob, make_token, client_for
):
    agent_id = register_agent(alice_client)
    for outsider in (
        client_for(make_token(bob)),
        client_for(make_token(alice, tag="proj-b")),
    ):
        assert outsider.get("/api/v1/agents").json() == {"agents": []}
        answer = outsider.get(f"/api/v1/agents/{agent_id}")
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"


def test_reading_agents_needs_the_status_role(alice, make_token, client_for):
    no_read = client_for(make_token(alice, role_list=[roles.POST_JOB]))
    answer = no_read.get("/api/v1/agents")
    assert answer.status_code == 403 and answer.json()["code"] == "missing_role"
    assert no_read.get("/api/v1/agents/whatever").status_code == 403
