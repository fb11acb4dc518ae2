"""A client calls functions over REST; a real agent process runs them locally."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests import harness

pytestmark = pytest.mark.e2e


def test_a_sync_call_of_a_local_function_returns_its_json(api, agent):
    answer = api.post("/alice/function/hello", params={"name": "Ada"})
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"greeting": "Hello, Ada", "slurm_job": None}
    status = api.get(f"/api/v1/calls/{answer.headers['X-Hpcsera-Call']}").json()
    assert status["state"] == "succeeded" and status["agent_site"] == "cluster"


def test_text_output_comes_back_as_text(api, agent):
    answer = api.post("/alice/function/text")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.text == "plain words\n"


def test_the_json_body_reaches_the_function_as_a_file_unchanged(api, agent):
    raw = '{"z": [1, 2, 3],  "a": "\\u00e9"}'
    answer = api.post(
        "/alice/function/echo_input",
        data=raw,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200
    assert answer.text == raw


def test_a_local_function_exiting_3_ends_failed_with_exit_code_3(api, agent):
    answer = api.post("/alice/function/fail3")
    assert answer.status_code == 502
    body = answer.json()
    assert body["code"] == "function_failed" and body["exit_code"] == 3
    assert "about to fail" in body["stderr_tail"]
    status = api.get(body["status_url"]).json()
    assert status["state"] == "failed" and status["exit_code"] == 3


def test_arguments_never_pass_through_a_shell(api, agent, tmp_path):
    marker = tmp_path / "pwned"
    answer = api.post(
        "/alice/function/hello", params={"name": f"$(touch {marker}); `touch {marker}`"}
    )
    assert answer.status_code == 200
    assert "$(touch" in answer.json()["greeting"]
    assert not marker.exists()


def test_a_local_call_over_its_wall_clock_limit_fails_saying_so(api, agent):
    answer = api.post(
        "/alice/async-function/sleeper",
        params={"seconds": "30"},
        headers={"X-Hpcsera-Time-Limit": "1"},
    )
    status = api.wait_terminal(answer.json()["status_url"], timeout=20)
    assert status["state"] == "failed"
    assert "wall-clock limit" in status["reason"]


def test_a_sync_call_not_done_in_time_answers_202_then_finishes(api, agent):
    started = time.monotonic()
    answer = api.post("/alice/function/sleeper", params={"seconds": "12"})
    assert answer.status_code == 202
    assert 9 < time.monotonic() - started < 12
    status = api.wait_terminal(answer.json()["status_url"], timeout=20)
    assert status["state"] == "succeeded"


def test_a_missing_executable_fails_the_call_and_the_agent_keeps_serving(
    api, agent, functions_dir
):
    doomed = harness.install_function(functions_dir, "doomed", "#!/bin/sh\necho hi\n")
    # A new executable is offered once the agent has looked at its folder again.
    deadline = time.monotonic() + 10
    while (answer := api.post("/alice/function/doomed")).status_code == 404:
        assert time.monotonic() < deadline, "the agent never offered the new function"
        time.sleep(0.2)
    assert answer.status_code == 200
    doomed.unlink()
    answer = api.post("/alice/function/doomed")
    # The agent either ran the call and found no executable, or re-registered
    # without the function first; neither may leave the call hanging.
    if answer.status_code == 502:
        assert "no executable" in answer.json()["detail"]
    else:
        assert answer.status_code == 404
    assert api.post("/alice/function/hello").status_code == 200


def test_twenty_waiting_sync_calls_do_not_block_a_status_request(
    api, server, alice_tokens
):
    # A function offered by an agent that never claims: its calls just wait.
    idle_agent = harness_register(server, alice_tokens["agent"], "idle-site", "nobody")
    assert idle_agent
    results = []

    def call() -> None:
        results.append(api.post("/alice/function/nobody").status_code)

    waiters = [threading.Thread(target=call) for _ in range(20)]
    for waiter in waiters:
        waiter.start()
    time.sleep(1.5)
    reader = requests.get(
        server.url + "/api/v1/jobs?limit=5",
        timeout=5,
        headers={"Authorization": f"Bearer {alice_tokens['reader']}"},
    )
    assert reader.status_code == 200
    assert reader.elapsed.total_seconds() < 1.0
    for waiter in waiters:
        waiter.join()
    assert results == [202] * 20


def harness_register(server, token: str, site: str, function: str) -> str:
    answer = requests.post(
        server.url + "/api/agent/v1/agents",
        json={
            "site": site,
            "capabilities": ["local"],
            "functions": [{"name": function, "runner": "local"}],
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    return answer.json()["agent_id"]


def test_bad_input_over_real_http_is_400_and_nothing_is_queued(api, server):
    before = len(api.get("/api/v1/jobs?limit=200").json()["jobs"])
    big = b'{"a": "' + b"x" * (1024 * 1024) + b'"}'
    answer = api.post("/alice/async-function/hello", data=big)
    assert answer.status_code == 400 and answer.json()["code"] == "body_too_large"
    answer = api.post("/alice/async-function/hello", data=b"{nope")
    assert answer.status_code == 400 and answer.json()["code"] == "malformed_json"
    assert len(api.get("/api/v1/jobs?limit=200").json()["jobs"]) == before


def test_two_long_polling_claimers_never_receive_the_same_call(
    api, server, alice_tokens
):
    agent_ids = [
        harness_register(server, alice_tokens["agent"], f"race-{i}", "race")
        for i in range(2)
    ]
    claimed: list[list[str]] = [[], []]
    stop = threading.Event()

    def claimer(index: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {alice_tokens['agent']}"
        while not stop.is_set():
            answer = session.post(
                f"{server.url}/api/agent/v1/agents/{agent_ids[index]}/claim",
                json={"max": 3, "wait": 1},
                timeout=30,
            )
            claimed[index].extend(c["id"] for c in answer.json()["calls"])

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    submitted = [
        api.post("/alice/async-function/race").json()["call_id"] for _ in range(200)
    ]
    deadline = time.monotonic() + 60
    while len(claimed[0]) + len(claimed[1]) < 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join()

    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(submitted)
    assert claimed[0] and claimed[1], "both claimers should have won some calls"


def test_a_chunked_body_reaches_the_function(api, agent):
    def chunks():
        yield b'{"chunked": '
        yield b"true}"

    answer = api.post(
        "/alice/function/echo_input",
        data=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 200
    assert answer.json() == {"chunked": True}


def test_a_chunked_body_over_the_limit_is_400(api, agent):
    def chunks():
        yield b'{"a": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    answer = api.post("/alice/async-function/echo_input", data=chunks())
    assert answer.status_code == 400 and answer.json()["code"] == "body_too_large"
