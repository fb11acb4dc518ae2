"""Code uploads through the SDK against a scripted server: what is sent, the
digest check, and how waiting ends (approved, denied, expired, deployed,
failed)."""

from __future__ import annotations

import hashlib

import pytest

from hpcsera_client import (
    DeploymentFailed,
    DigestMismatch,
    ServerError,
    UploadRejected,
    UploadTimeout,
)
from tests.client.scripted import Answer

UPLOAD_ID = "5f1c2a52-0000-4000-8000-000000000007"
SCRIPT = b"#!/bin/sh\necho '{\"ok\": true}'\n"
DIGEST = hashlib.sha256(SCRIPT).hexdigest()


def upload(state: str = "pending", *deployments: dict, **extra: object) -> dict:
    return {
        "id": UPLOAD_ID,
        "state": state,
        "function": "simulate",
        "sha256": DIGEST,
        "reason": "",
        "consent_url": "http://127.0.0.1/ui/inbox",
        "status_url": f"/api/v1/code/{UPLOAD_ID}",
        "deployments": list(deployments),
        **extra,
    }


def deployment(site: str, state: str, **extra: object) -> dict:
    return {
        "agent_id": f"a-{site}",
        "site": site,
        "state": state,
        "reason": "",
        "log_tail": "",
        **extra,
    }


def test_the_upload_is_multipart_with_the_file_and_every_field(client, scripted):
    scripted.then(Answer(202, upload()))

    handle = client.code_upload(
        "simulate",
        script=SCRIPT,
        commit="abc1234",
        description="pipeline 7",
        site="cluster",
    )

    sent = scripted.seen[0]
    assert (sent.method, sent.path) == ("POST", "/api/v1/code")
    assert sent.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(sent.headers["Content-Length"]) == len(sent.body)
    assert b'name="script"; filename="script"' in sent.body
    assert SCRIPT in sent.body
    for name, value in [
        ("function", "simulate"),
        ("commit", "abc1234"),
        ("description", "pipeline 7"),
        ("site", "cluster"),
    ]:
        assert f'name="{name}"\r\n\r\n{value}\r\n'.encode() in sent.body
    assert (handle.id, handle.sha256, handle.state) == (UPLOAD_ID, DIGEST, "pending")


def test_an_archive_path_is_sent_under_its_name_with_its_prepare_step(
    client, scripted, tmp_path
):
    archive = tmp_path / "simulate.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really a tar")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    scripted.then(Answer(202, upload(sha256=digest)))

    client.code_upload("simulate", archive=archive, prepare="prepare.sh")

    body = scripted.seen[0].body
    assert b'name="archive"; filename="simulate.tar.gz"' in body
    assert archive.read_bytes() in body
    assert b'name="prepare"\r\n\r\nprepare.sh\r\n' in body


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"archive": b"x", "script": b"y", "prepare": "p"},
        {"archive": b"x"},
        {"script": b"y", "prepare": "p"},
    ],
)
def test_wrong_combinations_are_refused_before_any_request(client, scripted, kwargs):
    with pytest.raises(ValueError):
        client.code_upload("simulate", **kwargs)
    assert scripted.seen == []


def test_an_answer_naming_other_bytes_is_an_error_and_the_upload_withdrawn(
    client, scripted
):
    scripted.then(
        Answer(202, upload(sha256="0" * 64)),
        Answer(200, upload("withdrawn", sha256="0" * 64)),
    )
    with pytest.raises(DigestMismatch) as caught:
        client.code_upload("simulate", script=SCRIPT)
    assert (caught.value.sent, caught.value.received) == (DIGEST, "0" * 64)
    assert "do not approve" in str(caught.value)
    assert caught.value.withdrawn and "withdrawn" in str(caught.value)
    withdraw = scripted.seen[1]
    assert (withdraw.method, withdraw.path) == ("DELETE", f"/api/v1/code/{UPLOAD_ID}")


def test_an_upload_is_not_resent_when_the_server_fails(client, scripted, sleeps):
    scripted.then(Answer(503, "proxy says no", content_type="text/plain"))
    with pytest.raises(ServerError):
        client.code_upload("simulate", script=SCRIPT)
    assert len(scripted.seen) == 1 and sleeps == []


def test_wait_approved_polls_until_approved_and_honours_retry_after(
    client, scripted, sleeps
):
    scripted.then(
        Answer(202, upload()),
        Answer(200, upload(), headers={"Retry-After": "7"}),
        Answer(200, upload()),
        Answer(200, upload("approved")),
    )
    seen: list[str] = []
    handle = client.code_upload("simulate", script=SCRIPT)

    answer = handle.wait_approved(
        timeout=60, on_change=lambda a: seen.append(a["state"])
    )

    assert answer["state"] == "approved" and handle.state == "approved"
    assert sleeps[0] == 7.0 and len(sleeps) == 2
    assert seen == ["pending", "approved"]
    assert {s.path for s in scripted.seen[1:]} == {f"/api/v1/code/{UPLOAD_ID}"}


@pytest.mark.parametrize(
    "state, reason",
    [
        ("denied", "denied by the user; the code was deleted"),
        ("expired", "not approved in time; the code was deleted"),
    ],
)
def test_wait_approved_raises_when_denied_or_expired_with_the_servers_reason(
    client, scripted, state, reason
):
    scripted.then(Answer(202, upload()), Answer(200, upload(state, reason=reason)))
    handle = client.code_upload("simulate", script=SCRIPT)
    with pytest.raises(UploadRejected) as caught:
        handle.wait_approved(timeout=60)
    assert (caught.value.state, caught.value.reason) == (state, reason)
    assert reason in str(caught.value)


def test_wait_approved_gives_up_after_its_timeout(client, scripted):
    scripted.then(Answer(202, upload()), Answer(200, upload()))
    handle = client.code_upload("simulate", script=SCRIPT)
    with pytest.raises(UploadTimeout) as caught:
        handle.wait_approved(timeout=0.5)
    assert caught.value.upload_id == UPLOAD_ID


def test_wait_deployed_waits_for_approval_then_for_a_deployed_agent(
    client, scripted, sleeps
):
    scripted.then(
        Answer(202, upload()),
        Answer(200, upload()),
        Answer(200, upload("approved", deployment("cluster", "offered"))),
        Answer(200, upload("approved", deployment("cluster", "deployed"))),
    )
    handle = client.code_upload("simulate", script=SCRIPT)
    answer = handle.wait_deployed(timeout=60)
    assert answer["deployments"][0]["state"] == "deployed"
    assert len(sleeps) == 2


def test_wait_deployed_with_sites_waits_for_each_named_site(client, scripted, sleeps):
    one = upload("approved", deployment("a", "deployed"), deployment("b", "offered"))
    both = upload("approved", deployment("a", "deployed"), deployment("b", "deployed"))
    scripted.then(Answer(202, upload()), Answer(200, one), Answer(200, both))
    handle = client.code_upload("simulate", script=SCRIPT)
    assert handle.wait_deployed(timeout=60, sites=["a", "b"]) == both
    assert len(sleeps) == 1


def test_a_failed_deployment_raises_with_its_reason_and_log_tail(client, scripted):
    failed = deployment(
        "cluster", "failed", reason="prepare.sh exited 2", log_tail="make: no rule\n"
    )
    scripted.then(Answer(202, upload()), Answer(200, upload("approved", failed)))
    handle = client.code_upload("simulate", script=SCRIPT)
    with pytest.raises(DeploymentFailed) as caught:
        handle.wait_deployed(timeout=60)
    assert caught.value.site == "cluster"
    assert caught.value.reason == "prepare.sh exited 2"
    assert caught.value.log_tail == "make: no rule\n"


def test_a_failure_on_a_site_not_asked_for_does_not_end_the_wait(client, scripted):
    answer = upload("approved", deployment("b", "failed"), deployment("a", "deployed"))
    scripted.then(Answer(202, upload()), Answer(200, answer))
    handle = client.code_upload("simulate", script=SCRIPT)
    assert handle.wait_deployed(timeout=60, sites=["a"]) == answer


def test_a_status_answer_naming_other_bytes_is_an_error_too(client, scripted):
    scripted.then(Answer(202, upload()), Answer(200, upload(sha256="1" * 64)))
    handle = client.code_upload("simulate", script=SCRIPT)
    with pytest.raises(DigestMismatch):
        handle.refresh()


def test_code_status_reads_the_upload(client, scripted):
    scripted.then(Answer(200, upload("approved")))
    assert client.code_status(UPLOAD_ID)["state"] == "approved"
    assert scripted.seen[0].path == f"/api/v1/code/{UPLOAD_ID}"
