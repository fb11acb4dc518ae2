"""The FaaS endpoints, through HTTP, with agents registered but not running."""

from __future__ import annotations

import pytest

from jobs.models import FunctionCall, Job
from tests.conftest import register_agent
from tokens import roles

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast_sync(settings):
    settings.HPCSERA = {**settings.HPCSERA, "SYNC_WAIT_SECONDS": 0.2}


@pytest.fixture
def alice_client(alice, make_token, client_for):
    client = client_for(make_token(alice))
    register_agent(client, functions=("hello", "sleepy"))
    return client


def test_async_call_answers_202_with_ids_and_a_status_url(alice_client):
    answer = alice_client.post("/alice/async-function/hello?name=Ada")

    assert answer.status_code == 202
    body = answer.json()
    call = FunctionCall.objects.get(id=body["call_id"])
    assert str(call.job_id) == body["job_id"]
    assert call.args == {"name": "Ada"}
    assert call.state == "ready" and call.mode == "async"
    assert answer["Location"] == body["status_url"] == f"/api/v1/calls/{call.id}"
    status = alice_client.get(body["status_url"]).json()
    assert status["state"] == "ready"
    assert status["function"] == "hello"


def test_json_body_is_stored_exactly_as_sent(alice_client):
    raw = '{"b": 1,   "a": [1, 2]}'
    answer = alice_client.post(
        "/alice/async-function/hello", raw, content_type="application/json"
    )
    assert FunctionCall.objects.get(id=answer.json()["call_id"]).input == raw


def test_sync_call_without_result_in_time_answers_202_with_status_url(
    alice_client, fast_sync
):
    answer = alice_client.post("/alice/function/sleepy")
    assert answer.status_code == 202
    assert FunctionCall.objects.get(id=answer.json()["call_id"]).mode == "sync"


def test_unknown_function_is_404_and_queues_nothing(alice_client):
    answer = alice_client.post("/alice/function/nothere")
    assert answer.status_code == 404
    assert answer.json()["code"] == "unknown_function"
    assert not FunctionCall.objects.exists()


def test_bobs_token_on_alices_function_is_404_and_queues_nothing(
    alice_client, bob, make_token, client_for
):
    bob_client = client_for(make_token(bob))
    register_agent(bob_client, functions=("hello",))
    for path in ("/alice/function/hello", "/alice/async-function/hello"):
        answer = bob_client.post(path)
        assert answer.status_code == 404
        assert answer.json()["code"] == "unknown_function"
    assert not FunctionCall.objects.exists() and not Job.objects.exists()


def test_alices_token_of_another_tag_does_not_see_functions_of_the_first(
    alice_client, alice, make_token, client_for
):
    other_tag = client_for(make_token(alice, tag="proj-b"))
    answer = other_tag.post("/alice/async-function/hello")
    assert answer.status_code == 404
    assert not FunctionCall.objects.exists()


def test_a_token_without_post_job_gets_403_and_queues_nothing(
    alice_client, alice, make_token, client_for
):
    reader = client_for(make_token(alice, role_list=[roles.GET_JOB_STATUS]))
    answer = reader.post("/alice/async-function/hello")
    assert answer.status_code == 403
    body = answer.json()
    assert body["code"] == "missing_role" and body["missing_roles"] == ["POST_Job"]
    assert not FunctionCall.objects.exists()


def test_get_on_a_function_is_405_with_the_error_body(alice_client):
    answer = alice_client.get("/alice/function/hello")
    assert answer.status_code == 405
    assert answer.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "path, body, code",
    [
        ("/alice/async-function/hello", "{not json", "malformed_json"),
        ("/alice/async-function/hello", b"\xff\xfe", "malformed_json"),
        ("/alice/async-function/hel%20lo", "", "invalid_function_name"),
        ("/alice/async-function/..", "", "invalid_function_name"),
        ("/alice/async-function/" + "a" * 65, "", "invalid_function_name"),
        ("/alice/async-function/hello?1abc=x", "", "invalid_argument"),
        ("/alice/async-function/hello?a-b=x", "", "invalid_argument"),
        ("/alice/async-function/hello?a=1&a=2", "", "invalid_argument"),
        ("/alice/async-function/hello?a=" + "x" * 4097, "", "argument_too_long"),
        ("/alice/async-function/hello?a=%00", "", "invalid_argument"),
    ],
)
def test_bad_input_is_400_with_a_stable_body_and_queues_nothing(
    alice_client, path, body, code
):
    answer = alice_client.post(path, body, content_type="application/json")
    assert answer.status_code == 400, answer.content
    data = answer.json()
    assert answer["Content-Type"] == "application/problem+json"
    assert data["code"] == code and data["status"] == 400 and data["detail"]
    assert not FunctionCall.objects.exists()


def test_a_body_over_the_limit_is_400_and_queues_nothing(alice_client, settings):
    settings.HPCSERA = {**settings.HPCSERA, "MAX_BODY_BYTES": 1000}
    body = '{"a": "' + "x" * 1000 + '"}'
    answer = alice_client.post(
        "/alice/async-function/hello", body, content_type="application/json"
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "body_too_large"
    assert not FunctionCall.objects.exists()


def test_a_site_header_routes_the_call_and_an_unknown_site_is_404(alice_client):
    answer = alice_client.post(
        "/alice/async-function/hello", HTTP_X_HPCSERA_SITE="site-a"
    )
    assert answer.status_code == 202
    assert FunctionCall.objects.get().site == "site-a"
    answer = alice_client.post(
        "/alice/async-function/hello", HTTP_X_HPCSERA_SITE="elsewhere"
    )
    assert answer.status_code == 404


def test_status_endpoints_fence_by_user_and_tag(
    alice_client, alice, bob, make_token, client_for
):
    call_id = alice_client.post("/alice/async-function/hello").json()["call_id"]
    job_id = FunctionCall.objects.get(id=call_id).job_id
    outsiders = [
        client_for(make_token(bob)),
        client_for(make_token(alice, tag="proj-b")),
    ]
    for outsider in outsiders:
        for path in (f"/api/v1/calls/{call_id}", f"/api/v1/jobs/{job_id}"):
            answer = outsider.get(path)
            assert answer.status_code == 404
            assert answer.json()["code"] == "not_found"
        assert outsider.get("/api/v1/jobs").json() == {"jobs": []}
    assert (
        alice_client.get(f"/api/v1/jobs/{job_id}").json()["calls"][0]["id"] == call_id
    )


def test_malformed_ids_are_404(alice_client):
    assert alice_client.get("/api/v1/calls/not-a-uuid").status_code == 404
    assert alice_client.get("/api/v1/jobs/123").status_code == 404


def test_unknown_urls_answer_with_the_error_body(alice_client):
    answer = alice_client.get("/no/such/thing")
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "body",
    ["[" * 5000 + "]" * 5000, '{"a": NaN}', '{"a": Infinity}'],
    ids=["deep", "nan", "infinity"],
)
def test_json_that_is_not_strict_json_is_400(alice_client, body):
    answer = alice_client.post(
        "/alice/async-function/hello", body, content_type="application/json"
    )
    assert answer.status_code == 400 and answer.json()["code"] == "malformed_json"
    assert not FunctionCall.objects.exists()


def test_a_query_string_that_is_not_utf8_is_400(alice_client):
    answer = alice_client.post("/alice/async-function/hello?name=%ff%fe")
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_argument"
    assert not FunctionCall.objects.exists()


@pytest.mark.parametrize("limit", ["0", "201", "\u0663", "-1", "1e2"])
def test_a_bad_list_limit_is_400(alice_client, limit):
    answer = alice_client.get("/api/v1/jobs", {"limit": limit})
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_limit"


def test_when_every_wait_slot_is_taken_a_sync_call_answers_202_at_once(
    alice_client, settings
):
    settings.HPCSERA = {**settings.HPCSERA, "MAX_SYNC_WAITERS": 0}
    answer = alice_client.post("/alice/function/hello")
    assert answer.status_code == 202
    assert FunctionCall.objects.get().state == "ready"
