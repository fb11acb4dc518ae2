"""Callbacks of async calls and of jobs: submission, signing, delivery to a
receiver on 127.0.0.1 started here, retries with back-off, the history shown.

Deliveries are sent in this process (no broker), with time passed in; nothing
sleeps. The only traffic goes to the receiver this module starts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs import callbacks, tasks
from jobs.models import Delivery, FunctionCall, Job
from tests.conftest import ALL, register_agent
from tokens import roles
from tokens.services import token_issue

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers `statuses`
    in turn (the last one repeated)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses = [200]
        self.extra_headers: dict[str, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                index = min(len(receiver.requests), len(receiver.statuses)) - 1
                self.send_response(receiver.statuses[index])
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.HPCSERA = {
        **settings.HPCSERA,
        "CALLBACK_ALLOW_LOOPBACK": True,
        "CALLBACK_MAX_ATTEMPTS": 3,
        "CALLBACK_BACKOFF_SECONDS": 10.0,
        "CALLBACK_BACKOFF_MAX_SECONDS": 60.0,
        "CALLBACK_TIMEOUT_SECONDS": 5.0,
    }
    # No broker in these tests: run_timers' in-process sending is under test.
    settings.CELERY_BROKER_URL = ""
    found = Receiver()
    yield found
    found.stop()


@pytest.fixture
def issued(alice):
    return token_issue(
        user=alice, tag="proj-a", roles=[r for r in ALL if r != roles.POST_CODE]
    )


@pytest.fixture
def alice_client(issued, client_for):
    return client_for(issued.secret)


@pytest.fixture
def agent(alice_client) -> str:
    return register_agent(alice_client, functions=("hello", "build", "test"))


def claim_and_report(client, agent_id, state="succeeded", stdout='{"x": 1}'):
    calls = client.post(
        f"/api/agent/v1/agents/{agent_id}/claim", {"max": 10}, format="json"
    ).json()["calls"]
    for call in calls:
        answer = client.post(
            f"/api/agent/v1/agents/{agent_id}/calls/{call['id']}/report",
            {"state": state, "exit_code": 0 if state == "succeeded" else 1}
            | ({"stdout": stdout} if state == "succeeded" else {}),
            format="json",
        )
        assert answer.status_code == 200, answer.content
    return [c["id"] for c in calls]


def async_call(client, url: str) -> str:
    answer = client.post("/alice/async-function/hello", HTTP_X_CALLBACK_URL=url)
    assert answer.status_code == 202, answer.content
    return answer.json()["call_id"]


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does; the README shows the same steps."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    signed = fields["t"].encode() + b"." + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


def test_an_async_calls_result_is_posted_signed_to_its_callback(
    receiver, issued, alice_client, agent
):
    call_id = async_call(alice_client, receiver.url + "/hook?k=1")
    claim_and_report(alice_client, agent)

    assert callbacks.deliveries_dispatch() == 1

    [sent] = receiver.requests
    assert sent["path"] == "/hook?k=1"
    headers = sent["headers"]
    assert verify(issued.callback_secret, headers["X-Hpcsera-Signature"], sent["body"])
    assert not verify("whsec_wrong", headers["X-Hpcsera-Signature"], sent["body"])
    body = json.loads(sent["body"])
    assert body["call_id"] == call_id and body["state"] == "succeeded"
    assert body["output"] == {"x": 1} and body["event"] == "call.ended"
    assert headers["X-Hpcsera-Delivery"] == body["delivery_id"]
    assert headers["X-Hpcsera-Attempt"] == "1"
    assert headers["Host"] == receiver.url.removeprefix("http://")

    detail = alice_client.get(f"/api/v1/calls/{call_id}").json()
    assert detail["callback_url"] == receiver.url + "/hook?k=1"
    assert detail["callback"]["state"] == "delivered"
    assert [(h["attempt"], h["status"]) for h in detail["callback"]["history"]] == [
        (1, 200)
    ]


def test_failed_deliveries_are_retried_with_backoff_up_to_the_limit(
    receiver, alice_client, agent
):
    receiver.statuses = [500]
    call_id = async_call(alice_client, receiver.url + "/hook")
    claim_and_report(alice_client, agent, state="failed")
    now = timezone.now()

    assert callbacks.deliveries_dispatch(now=now) == 1
    delivery = Delivery.objects.get(call_id=call_id)
    first_wait = (delivery.next_attempt_at - now).total_seconds()
    assert 5 <= first_wait <= 10  # 10 s with jitter of up to half
    assert callbacks.deliveries_dispatch(now=now + timedelta(seconds=4)) == 0

    later = now + timedelta(seconds=11)
    assert callbacks.deliveries_dispatch(now=later) == 1
    delivery.refresh_from_db()
    second_wait = (delivery.next_attempt_at - later).total_seconds()
    assert 10 <= second_wait <= 20
    assert callbacks.deliveries_dispatch(now=later + timedelta(seconds=21)) == 1
    assert callbacks.deliveries_dispatch(now=later + timedelta(days=1)) == 0

    delivery.refresh_from_db()
    assert delivery.state == "failed" and delivery.attempts == 3
    attempts = [r["headers"]["X-Hpcsera-Attempt"] for r in receiver.requests]
    assert attempts == ["1", "2", "3"]
    ids = {r["headers"]["X-Hpcsera-Delivery"] for r in receiver.requests}
    assert ids == {str(delivery.id)}
    history = alice_client.get(f"/api/v1/calls/{call_id}").json()["callback"]
    assert [(h["status"], h["error"]) for h in history["history"]] == [
        (500, "HTTP 500")
    ] * 3


def test_after_the_first_2xx_nothing_more_is_sent(receiver, alice_client, agent):
    receiver.statuses = [503, 204, 500]
    call_id = async_call(alice_client, receiver.url + "/hook")
    claim_and_report(alice_client, agent)
    now = timezone.now()

    callbacks.deliveries_dispatch(now=now)
    callbacks.deliveries_dispatch(now=now + timedelta(minutes=1))
    assert callbacks.deliveries_dispatch(now=now + timedelta(days=1)) == 0

    assert len(receiver.requests) == 2
    delivery = Delivery.objects.get(call_id=call_id)
    assert delivery.state == "delivered" and delivery.last_status == 204


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    receiver, alice_client, agent
):
    receiver.statuses = [302]
    receiver.extra_headers = {"Location": receiver.url + "/elsewhere"}
    call_id = async_call(alice_client, receiver.url + "/hook")
    claim_and_report(alice_client, agent)

    callbacks.deliveries_dispatch()

    assert [r["path"] for r in receiver.requests] == ["/hook"]
    delivery = Delivery.objects.get(call_id=call_id)
    assert delivery.state == "pending" and delivery.last_status == 302
    assert delivery.last_error == "redirect not followed"


def test_an_address_refused_at_delivery_fails_at_once_without_retry(
    receiver, settings, alice_client, agent
):
    call_id = async_call(alice_client, receiver.url + "/hook")
    # Loopback was allowed when it was submitted and is not any more: the
    # same happens when a name's DNS answer changes to an internal address.
    settings.HPCSERA = {**settings.HPCSERA, "CALLBACK_ALLOW_LOOPBACK": False}
    claim_and_report(alice_client, agent)

    callbacks.deliveries_dispatch()

    assert receiver.requests == []
    delivery = Delivery.objects.get(call_id=call_id)
    assert delivery.state == "failed" and delivery.attempts == 1
    assert delivery.last_error.startswith("refused: ")
    assert "loopback" in delivery.last_error


def test_a_name_resolving_to_an_internal_address_at_delivery_is_refused(
    receiver, alice_client, agent
):
    call_id = async_call(alice_client, receiver.url + "/hook")
    claim_and_report(alice_client, agent)
    Delivery.objects.filter(call_id=call_id).update(url="http://hooks.test/hook")

    callbacks.deliveries_dispatch(resolver=lambda host, port: ["10.0.0.5"])

    delivery = Delivery.objects.get(call_id=call_id)
    assert delivery.state == "failed" and "private" in delivery.last_error
    assert receiver.requests == []


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://192.168.0.1/", "private"),
        ("http://[fe80::1]/", "link_local"),
        ("http://239.1.1.1/", "multicast"),
        ("gopher://example.org/", "scheme"),
        ("https://u:p@example.org/", "userinfo"),
    ],
)
def test_a_refused_callback_url_is_a_400_at_submission_and_queues_nothing(
    settings, alice_client, agent, url, reason
):
    settings.HPCSERA = {**settings.HPCSERA, "CALLBACK_ALLOW_LOOPBACK": False}

    faas = alice_client.post("/alice/async-function/hello", HTTP_X_CALLBACK_URL=url)
    job = alice_client.post(
        "/api/v1/jobs",
        {"callback_url": url, "calls": [{"function": "build"}]},
        format="json",
    )

    for answer in (faas, job):
        assert answer.status_code == 400
        assert answer.json()["code"] == "invalid_callback_url"
        assert answer.json()["reason"] == reason
    assert not FunctionCall.objects.exists() and not Job.objects.exists()


def test_a_job_callback_is_posted_once_when_its_last_call_ends(
    receiver, issued, alice_client, agent
):
    answer = alice_client.post(
        "/api/v1/jobs",
        {
            "name": "pipeline",
            "callback_url": receiver.url + "/job",
            "calls": [{"function": "build"}, {"function": "test"}],
        },
        format="json",
    )
    job_id = answer.json()["id"]
    claim_and_report(alice_client, agent)  # build
    callbacks.deliveries_dispatch()
    assert receiver.requests == []

    claim_and_report(alice_client, agent)  # test, after build
    assert callbacks.jobs_callbacks_sweep() == 0  # made already, in the end's
    callbacks.deliveries_dispatch()

    [sent] = receiver.requests
    body = json.loads(sent["body"])
    assert body["event"] == "job.ended" and body["job_id"] == job_id
    assert body["state"] == "succeeded"
    assert [c["function"] for c in body["calls"]] == ["build", "test"]
    assert verify(
        issued.callback_secret, sent["headers"]["X-Hpcsera-Signature"], sent["body"]
    )
    detail = alice_client.get(f"/api/v1/jobs/{job_id}").json()
    assert detail["callback_url"] == receiver.url + "/job"
    assert detail["callback"]["state"] == "delivered"


def test_the_sweep_makes_a_job_callback_that_racing_ends_missed(
    receiver, alice_client, agent
):
    answer = alice_client.post(
        "/api/v1/jobs",
        {"callback_url": receiver.url + "/job", "calls": [{"function": "build"}]},
        format="json",
    )
    job_id = answer.json()["id"]
    claim_and_report(alice_client, agent)
    # As if two last calls had ended at once and each missed the other's end.
    Delivery.objects.filter(job_id=job_id).delete()
    Job.objects.filter(id=job_id).update(callback_done=False)

    assert callbacks.jobs_callbacks_sweep() == 1
    assert callbacks.jobs_callbacks_sweep() == 0
    assert Delivery.objects.filter(job_id=job_id, call=None).count() == 1


def test_a_cancelled_job_posts_its_callback(receiver, alice_client, agent):
    job_id = alice_client.post(
        "/api/v1/jobs",
        {"callback_url": receiver.url + "/job", "calls": [{"function": "build"}]},
        format="json",
    ).json()["id"]

    alice_client.delete(f"/api/v1/jobs/{job_id}")
    callbacks.deliveries_dispatch()

    [sent] = receiver.requests
    assert json.loads(sent["body"])["state"] == "cancelled"


def test_run_timers_sends_due_callbacks(receiver, alice_client, agent):
    async_call(alice_client, receiver.url + "/hook")
    claim_and_report(alice_client, agent)

    call_command("run_timers", "--once")

    assert len(receiver.requests) == 1


def test_the_celery_task_sends_only_with_a_current_claim(receiver, alice_client, agent):
    call_id = async_call(alice_client, receiver.url + "/hook")
    claim_and_report(alice_client, agent)
    [(delivery_id, claim)] = callbacks.deliveries_claim_due()

    assert tasks.deliver(str(delivery_id), claim.isoformat()) == "delivered"
    assert tasks.deliver(str(delivery_id), claim.isoformat()) is None
    assert len(receiver.requests) == 1
    assert Delivery.objects.get(call_id=call_id).state == "delivered"


def test_another_projects_token_never_sees_the_delivery(
    receiver, alice, bob, make_token, client_for, alice_client, agent
):
    call_id = async_call(alice_client, receiver.url + "/hook")
    claim_and_report(alice_client, agent)
    callbacks.deliveries_dispatch()

    for secret in (make_token(bob), make_token(alice, tag="proj-b")):
        other = client_for(secret)
        assert other.get(f"/api/v1/calls/{call_id}").status_code == 404
        listed = other.get("/api/v1/jobs").content.decode()
        assert call_id not in listed and receiver.url not in listed


def test_the_callback_secret_differs_per_token_and_is_printed_on_request(
    alice, issued, capsys
):
    other = token_issue(user=alice, tag="proj-a", roles=[roles.POST_JOB])
    assert issued.callback_secret != other.callback_secret

    call_command("issue_token", "--user", "alice", "--roles", "POST_Job")
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    call_command(
        "issue_token",
        "--user",
        "alice",
        "--roles",
        "POST_Job",
        "--show-callback-secret",
    )
    token_line, secret_line = capsys.readouterr().out.strip().splitlines()
    assert token_line.startswith("hpcsera_")
    assert secret_line.startswith("callback-secret: whsec_")
