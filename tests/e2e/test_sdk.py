"""The SDK against a real server (gunicorn) and a real agent process."""

from __future__ import annotations

import pytest

from hpcsera_client import (
    AuthenticationFailed,
    BadRequest,
    CallTimeout,
    Client,
    FunctionFailed,
    NotFound,
    PermissionDenied,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sdk(server, alice_tokens) -> Client:
    return Client(server.url, alice_tokens["client"])


def test_it_finds_its_namespace_and_limits_from_the_capabilities(sdk):
    assert sdk.user == "alice"
    capabilities = sdk.capabilities()
    assert capabilities["token"]["roles"] == ["GET_JobStatus", "POST_Job"]
    assert capabilities["limits"]["sync_wait_seconds"] == 10


def test_a_sync_call_returns_the_functions_json_result(sdk, agent):
    assert sdk.call("hello", {"name": "Ada"}) == {
        "greeting": "Hello, Ada",
        "slurm_job": None,
    }


def test_a_text_result_comes_back_as_text(sdk, agent):
    assert sdk.call("text") == "plain words\n"


def test_a_python_structure_reaches_the_function_as_its_input(sdk, agent):
    assert sdk.call("echo_input", input={"z": [1, 2], "a": "é"}) == {
        "z": [1, 2],
        "a": "é",
    }


def test_a_failing_function_raises_with_exit_code_and_stderr(sdk, agent):
    with pytest.raises(FunctionFailed) as raised:
        sdk.call("fail3")
    assert raised.value.exit_code == 3
    assert "about to fail" in raised.value.stderr_tail
    assert sdk.call_status(raised.value.call_id).state == "failed"


def test_an_async_handle_polls_waits_and_gives_the_result(sdk, agent):
    handle = sdk.submit("sleeper", {"seconds": "0.5"})
    first = handle.poll()
    assert first.id == handle.id and first.job_id == handle.job_id
    seen = []
    final = handle.wait(timeout=30, on_change=lambda s: seen.append(s.state))
    assert final.succeeded and seen[-1] == "succeeded"
    assert handle.result() == {"slept": True}
    assert sdk.job(handle.job_id)["calls"][0]["id"] == handle.id
    assert handle.id in [job["calls"][0]["id"] for job in sdk.jobs(limit=5)]


def test_waiting_less_than_the_call_takes_raises_and_the_call_goes_on(sdk, agent):
    handle = sdk.submit("sleeper", {"seconds": "3"})
    with pytest.raises(CallTimeout) as raised:
        handle.wait(timeout=0.3)
    assert raised.value.call_id == handle.id
    assert handle.result(timeout=30) == {"slept": True}


def test_a_failed_async_call_raises_from_result(sdk, agent):
    handle = sdk.submit("fail3")
    with pytest.raises(FunctionFailed) as raised:
        handle.result(timeout=30)
    assert raised.value.exit_code == 3 and raised.value.state == "failed"


def test_a_function_nobody_offers_is_not_found(sdk):
    with pytest.raises(NotFound) as raised:
        sdk.call("nobody_offers_this")
    assert raised.value.code == "unknown_function"


def test_a_reader_token_may_not_call_and_is_told_the_role(server, alice_tokens):
    reader = Client(server.url, alice_tokens["reader"])
    with pytest.raises(PermissionDenied) as raised:
        reader.call("hello")
    assert raised.value.required_roles == ["POST_Job"]


def test_a_wrong_token_is_refused_with_its_code(server):
    with pytest.raises(AuthenticationFailed) as raised:
        Client(server.url, "hpcsera_nope_nope").capabilities()
    assert raised.value.code == "invalid_token"


def test_another_users_call_is_not_found(server, sdk, agent):
    handle = sdk.submit("hello")
    bob = Client(server.url, server.token("bob", "POST_Job,GET_JobStatus"))
    with pytest.raises(NotFound):
        bob.call_status(handle.id)


@pytest.fixture(scope="module")
def owner(server) -> Client:
    roles = "POST_Job,GET_JobStatus,UPDATE_JobStatus,DELETE_Job"
    return Client(server.url, server.token("alice", roles))


def test_a_job_runs_after_its_virtual_call_is_finished_by_rest(owner, agent):
    job = owner.submit_job(
        {
            "name": "gated",
            "calls": [
                {"name": "approval", "virtual": {"deadline_seconds": 600}},
                {"name": "greet", "function": "hello", "args": {"name": "gate"}},
            ],
        }
    )
    assert [s.state for s in job.calls()] == ["ready", "pending"]

    owner.finish(job.call("approval").id, True, "approved by bob")
    final = {status.name: status for status in job.wait(timeout=60)}

    assert final["approval"].succeeded
    assert final["greet"].output["greeting"] == "Hello, gate"
    assert job.succeeded


def test_a_failed_virtual_call_cancels_what_runs_after_it(owner):
    job = owner.submit_job(
        {
            "calls": [
                {"name": "gate", "virtual": {"deadline_seconds": 60}},
                {"function": "hello"},
            ]
        }
    )
    owner.finish(job.call("gate").id, False, "refused by bob")
    gate, greet = job.wait(timeout=60)
    assert (gate.state, gate.reason) == ("failed", "refused by bob")
    assert greet.state == "cancelled" and "gate" in greet.reason


def test_cancelling_a_call_cancels_its_job(owner, agent):
    handle = owner.submit("sleeper", {"seconds": "120"})
    assert handle.cancel().state == "cancelled"
    assert owner.job(handle.job_id)["state"] == "cancelled"


def test_a_job_file_with_a_cycle_is_refused_with_the_servers_code(owner, tmp_path):
    document = tmp_path / "cycle.yaml"
    document.write_text(
        "calls:\n  - {name: a, function: hello, after: [b]}\n"
        "  - {name: b, function: hello, after: [a]}\n"
    )
    with pytest.raises(BadRequest) as refused:
        owner.submit_job(document)
    assert refused.value.code == "dependency_cycle"
