"""Job documents, cancellation and virtual calls through the SDK, against a
scripted server: what is sent, and how answers become handles."""

from __future__ import annotations

import json

import pytest

from hpcsera_client import CallTimeout, Client, Job
from tests.client.scripted import Answer

JOB_ID = "0b7d0a52-0000-4000-8000-000000000001"


def call(name: str, state: str, number: int = 1, **extra: object) -> dict:
    return {
        "id": f"c{number}",
        "job_id": JOB_ID,
        "name": name,
        "function": name,
        "state": state,
        **extra,
    }


def job(*calls: dict, state: str = "running") -> dict:
    return {"id": JOB_ID, "state": state, "calls": list(calls), "url": "/x"}


def test_a_yaml_file_is_sent_as_it_is_with_its_media_type(client, scripted, tmp_path):
    document = tmp_path / "job.yaml"
    document.write_text("calls:\n  - {name: a, function: hello}\n")
    scripted.then(Answer(201, job(call("a", "ready"))))

    handle = client.submit_job(document)

    sent = scripted.seen[0]
    assert (sent.method, sent.path) == ("POST", "/api/v1/jobs")
    assert sent.headers["Content-Type"] == "application/yaml"
    assert sent.body == document.read_bytes()
    assert handle.id == JOB_ID and handle.calls()[0].name == "a"


def test_a_mapping_is_sent_as_json(client, scripted):
    scripted.then(Answer(201, job(call("a", "ready"))))
    client.submit_job({"calls": [{"function": "hello", "after": []}]})
    assert scripted.seen[0].headers["Content-Type"] == "application/json"
    assert json.loads(scripted.seen[0].body)["calls"][0]["after"] == []


def test_wait_reports_each_change_of_state_and_returns_the_final_calls(
    client, scripted, sleeps
):
    scripted.then(
        Answer(200, job(call("a", "running"), call("b", "pending", 2))),
        Answer(200, job(call("a", "running"), call("b", "pending", 2))),
        Answer(200, job(call("a", "succeeded"), call("b", "failed", 2))),
    )
    seen: list[tuple[str, str]] = []

    final = Job(client, JOB_ID).wait(on_change=lambda s: seen.append((s.name, s.state)))

    assert [s.state for s in final] == ["succeeded", "failed"]
    assert seen == [
        ("a", "running"),
        ("b", "pending"),
        ("a", "succeeded"),
        ("b", "failed"),
    ]
    assert len(sleeps) == 2


def test_wait_gives_up_with_call_timeout(client, scripted):
    scripted.then(Answer(200, job(call("a", "running"))))
    with pytest.raises(CallTimeout) as raised:
        Job(client, JOB_ID).wait(timeout=0)
    assert raised.value.call_id == JOB_ID


def test_cancelling_a_call_cancels_its_job(client, scripted):
    scripted.then(
        Answer(200, job(call("a", "cancelled"), state="cancelled")),
        Answer(200, call("a", "cancelled")),
    )
    handle = client._handle({"call_id": "c1", "job_id": JOB_ID})

    assert handle.cancel().state == "cancelled"
    assert [(s.method, s.path) for s in scripted.seen] == [
        ("DELETE", f"/api/v1/jobs/{JOB_ID}"),
        ("GET", "/api/v1/calls/c1"),
    ]


def test_finish_ends_a_virtual_call_with_its_message(client, scripted):
    scripted.then(Answer(200, call("approval", "succeeded", output="ok by bob")))
    status = client.finish("c1", True, "ok by bob")
    assert status.succeeded and status.output == "ok by bob"
    assert json.loads(scripted.seen[0].body) == {
        "state": "succeeded",
        "message": "ok by bob",
    }


def test_a_call_is_found_by_its_name_in_the_job(client, scripted):
    scripted.then(Answer(201, job(call("a", "ready"), call("b", "pending", 2))))
    handle = client.submit_job({"calls": []})
    assert handle.call("b").id == "c2"
    with pytest.raises(KeyError):
        handle.call("nobody")


def test_an_unreadable_job_file_raises_oserror_before_any_request(
    client: Client, scripted, tmp_path
):
    with pytest.raises(OSError):
        client.submit_job(tmp_path / "missing.yaml")
    assert scripted.seen == []
