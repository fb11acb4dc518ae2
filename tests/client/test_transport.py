"""The SDK's retry rules and typed errors, against a scripted loopback server."""

from __future__ import annotations

import pytest
from hpcsera_client.errors import parse_retry_after

from hpcsera_client import (
    AuthenticationFailed,
    Client,
    FunctionFailed,
    NotFound,
    PermissionDenied,
    RateLimited,
    RetryPolicy,
    ServerError,
    TransportError,
)
from tests import harness
from tests.client.scripted import Answer

PROBLEM = "application/problem+json"
STATUS = {
    "id": "c1",
    "job_id": "j1",
    "function": "f",
    "state": "succeeded",
    "exit_code": 0,
    "output": {"ok": True},
    "stdout": '{"ok": true}',
    "stderr_tail": "",
    "reason": "",
    "batch_job_id": None,
}


def problem(status: int, code: str, **extra) -> Answer:
    body = {"status": status, "code": code, "detail": f"{code} said", **extra}
    return Answer(status, body, content_type=PROBLEM)


def test_a_429_is_retried_after_the_seconds_the_server_asked_for(
    client, scripted, sleeps
):
    scripted.then(
        Answer(429, {"code": "rate_limited"}, {"Retry-After": "3"}),
        Answer(200, STATUS),
    )
    assert client.call_status("c1").output == {"ok": True}
    assert sleeps == [3.0]
    assert len(scripted.seen) == 2


def test_a_429_on_a_post_is_retried_too_since_nothing_was_done(
    client, scripted, sleeps
):
    scripted.then(
        Answer(429, {"code": "rate_limited"}, {"Retry-After": "1"}),
        Answer(200, {"ok": 1}),
    )
    assert client.call("f") == {"ok": 1}
    assert [s.method for s in scripted.seen] == ["POST", "POST"]
    assert sleeps == [1.0]


def test_a_retry_after_beyond_the_cap_is_raised_not_slept(scripted, sleeps):
    client = Client(
        scripted.url,
        "t",
        user="alice",
        sleep=sleeps,
        retry=RetryPolicy(max_retry_after=10),
    )
    scripted.then(Answer(429, {"code": "rate_limited"}, {"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as raised:
        client.jobs()
    assert raised.value.retry_after == 3600 and sleeps == []


def test_a_proxy_503_on_a_get_is_retried_with_growing_back_off(
    client, scripted, sleeps
):
    scripted.then(
        Answer(503, "<html>busy</html>", content_type="text/html"),
        Answer(503, "<html>busy</html>", content_type="text/html"),
        Answer(200, STATUS),
    )
    assert client.call_status("c1").state == "succeeded"
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.25 and 0 <= sleeps[1] <= 0.5


def test_a_post_is_never_resent_after_a_5xx(client, scripted, sleeps):
    scripted.then(Answer(503, "<html>busy</html>", content_type="text/html"))
    with pytest.raises(ServerError) as raised:
        client.submit("f")
    assert raised.value.status == 503 and raised.value.detail == "<html>busy</html>"
    assert len(scripted.seen) == 1 and sleeps == []


def test_gets_give_up_after_the_attempts_and_say_so(client, scripted, sleeps):
    scripted.then(*[Answer(502, "bad gateway", content_type="text/plain")] * 4)
    with pytest.raises(ServerError):
        client.jobs()
    assert len(scripted.seen) == 4 and len(sleeps) == 3


def test_a_refused_connection_is_retried_for_gets_only(sleeps):
    url = f"http://127.0.0.1:{harness.free_port()}"
    client = Client(url, "t", user="alice", sleep=sleeps, retry=RetryPolicy(attempts=3))
    with pytest.raises(TransportError, match="could not connect"):
        client.jobs()
    assert len(sleeps) == 2
    sleeps.clear()
    with pytest.raises(TransportError):
        client.submit("f")
    assert sleeps == []


def test_a_failed_function_is_an_answer_not_a_gateway_error(client, scripted, sleeps):
    scripted.then(
        problem(
            502,
            "function_failed",
            exit_code=3,
            stderr_tail="boom\n",
            call_id="c9",
            state="failed",
        )
    )
    with pytest.raises(FunctionFailed) as raised:
        client.call("f")
    error = raised.value
    assert (error.exit_code, error.stderr_tail, error.call_id) == (3, "boom\n", "c9")
    assert error.body["code"] == "function_failed" and sleeps == []


@pytest.mark.parametrize(
    "status, code, kind",
    [
        (401, "token_expired", AuthenticationFailed),
        (403, "missing_role", PermissionDenied),
        (404, "unknown_function", NotFound),
    ],
)
def test_error_answers_become_typed_exceptions_with_the_body(
    client, scripted, status, code, kind
):
    scripted.then(problem(status, code, required_roles=["POST_Job"]))
    with pytest.raises(kind) as raised:
        client.call("f")
    assert raised.value.code == code and raised.value.status == status
    assert raised.value.body["required_roles"] == ["POST_Job"]


def test_a_sync_call_still_running_at_the_wait_limit_is_polled_to_its_result(
    client, scripted, sleeps
):
    running = {**STATUS, "state": "running", "output": None}
    scripted.then(
        Answer(202, {"call_id": "c1", "job_id": "j1", "status_url": "/x"}),
        Answer(200, running),
        Answer(200, running),
        Answer(200, STATUS),
    )
    assert client.call("f", {"n": 1, "dry": True}) == {"ok": True}
    assert scripted.seen[0].path == "/alice/function/f?n=1&dry=true"
    assert [s.path for s in scripted.seen[1:]] == ["/api/v1/calls/c1"] * 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0]


def test_the_token_travels_in_the_header_only(client, scripted):
    scripted.then(Answer(200, {"jobs": []}))
    client.jobs()
    seen = scripted.seen[0]
    assert seen.headers["Authorization"] == "Bearer hpcsera_test_secret"
    assert "secret" not in seen.path


def test_the_input_is_sent_as_a_json_body(client, scripted):
    scripted.then(Answer(202, {"call_id": "c1", "job_id": "j1"}))
    handle = client.submit("f", input={"x": [1, 2]}, site="hpc1", time_limit=60)
    seen = scripted.seen[0]
    assert handle.id == "c1" and seen.body == b'{"x": [1, 2]}'
    assert seen.headers["X-Hpcsera-Site"] == "hpc1"
    assert seen.headers["X-Hpcsera-Time-Limit"] == "60"


@pytest.mark.parametrize(
    "header, seconds",
    [("7", 7.0), (None, None), ("soon", None), ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0)],
)
def test_retry_after_is_read_as_seconds_or_a_date(header, seconds):
    assert parse_retry_after(header) == seconds


def test_back_off_is_jittered_below_a_doubling_cap():
    policy = RetryPolicy(backoff_base=1, backoff_cap=5)
    for retry, ceiling in [(0, 1), (1, 2), (2, 4), (3, 5), (10, 5)]:
        assert all(0 <= policy.backoff(retry) <= ceiling for _ in range(50))
