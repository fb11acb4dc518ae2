"""The `hpcsera` command, run as a process against a real server and agent."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import harness
from tests.e2e.conftest import log_in
from tests.e2e.test_examples import decide_in_browser, wait_for_digest

pytestmark = pytest.mark.e2e
HPCSERA = str(Path(harness.PYTHON).parent / "hpcsera")


@pytest.fixture(scope="module")
def run(server, alice_tokens, tmp_path_factory):
    config = tmp_path_factory.mktemp("cli") / "client.json"

    def run(*argv: str, token: str | None = None, stdin: str = "", **env: str):
        environ = {
            **os.environ,
            "HPCSERA_SERVER": server.url,
            "HPCSERA_TOKEN": token or alice_tokens["client"],
            "HPCSERA_CONFIG": str(config),
            **env,
        }
        return subprocess.run(
            [HPCSERA, *argv],
            input=stdin,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def assert_one_line_error(done: subprocess.CompletedProcess, code: int) -> str:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    return done.stderr


def test_call_prints_the_json_result(run, agent):
    done = run("call", "hello", "name=Ada")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["greeting"] == "Hello, Ada"


def test_call_with_an_input_file_from_stdin(run, agent):
    done = run("call", "echo_input", "--input", "-", stdin='{"n": 1}')
    assert done.returncode == 0 and json.loads(done.stdout) == {"n": 1}


def test_a_failing_function_exits_1_with_its_last_stderr_line(run, agent):
    err = assert_one_line_error(run("call", "fail3"), 1)
    assert "exit 3" in err and "about to fail" in err


def test_an_unknown_function_exits_3(run):
    assert "unknown_function" in assert_one_line_error(run("call", "nobody"), 3)


def test_a_revoked_or_wrong_token_exits_3_without_echoing_it(run):
    done = run("whoami", token="hpcsera_wrong_secretvalue")
    err = assert_one_line_error(done, 3)
    assert "invalid_token" in err and "secretvalue" not in err


def test_an_unreachable_server_exits_4(run):
    url = f"http://127.0.0.1:{harness.free_port()}"
    done = run("--http-timeout", "2", "jobs", HPCSERA_SERVER=url)
    assert "could not connect" in assert_one_line_error(done, 4)


def test_async_then_status_watch_and_output(run, agent):
    submitted = run("call", "--async", "sleeper", "seconds=0.5")
    assert submitted.returncode == 0, submitted.stderr
    call_id = json.loads(submitted.stdout)["call_id"]

    watched = run("watch", call_id, "--timeout", "30")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.splitlines()[-1].endswith("sleeper  succeeded exit 0")

    status = run("status", call_id)
    assert status.returncode == 0 and "succeeded" in status.stdout
    assert json.loads(run("status", "--json", call_id).stdout)["id"] == call_id
    output = run("output", call_id)
    assert output.returncode == 0 and json.loads(output.stdout) == {"slept": True}


def test_watch_job_follows_every_call_and_exits_by_the_outcome(run, agent):
    job_id = json.loads(run("call", "--async", "fail3").stdout)["job_id"]
    done = run("watch", "--job", job_id, "--timeout", "30")
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].split()[2] == "failed"
    assert f"job {job_id}" in done.stdout


def test_output_of_an_unfinished_call_exits_5_and_with_wait_prints_it(run, agent):
    call_id = json.loads(run("call", "--async", "sleeper", "seconds=2").stdout)[
        "call_id"
    ]
    assert "still" in assert_one_line_error(run("output", call_id), 5)
    done = run("output", "--wait", "--timeout", "30", call_id)
    assert done.returncode == 0 and json.loads(done.stdout) == {"slept": True}


def test_login_stores_the_token_and_later_commands_need_no_env(
    run, server, alice_tokens
):
    done = run("--server", server.url, "login", stdin=alice_tokens["reader"] + "\n")
    assert done.returncode == 0, done.stderr
    assert alice_tokens["reader"] not in done.stdout
    whoami = run("whoami", HPCSERA_TOKEN="", HPCSERA_SERVER="")
    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout.startswith("alice  tag default  roles GET_JobStatus")


def test_jobs_lists_recent_jobs(run, agent):
    job_id = json.loads(run("call", "--async", "hello").stdout)["job_id"]
    done = run("jobs", "--limit", "5")
    assert done.returncode == 0 and job_id in done.stdout


DIAMOND = """\
name: diamond
calls:
  - {name: top, function: hello, args: {name: top}}
  - {name: left, function: sleeper, args: {seconds: "0.2"}, after: [top]}
  - {name: right, function: hello, args: {name: right}, after: [top]}
  - {name: bottom, function: echo_input, input: {joined: true},
     after: [left, right]}
"""


def test_submit_watch_runs_a_diamond_job_and_exits_0(run, agent, api, tmp_path):
    document = tmp_path / "diamond.yaml"
    document.write_text(DIAMOND)

    done = run("submit", "--watch", "--timeout", "120", str(document))

    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[1]
    job = api.get(f"/api/v1/jobs/{job_id}").json()
    calls = {call["name"]: call for call in job["calls"]}
    assert {c["state"] for c in calls.values()} == {"succeeded"}
    assert calls["bottom"]["after"] == ["left", "right"]
    assert calls["bottom"]["output"] == {"joined": True}
    # bottom started only after both sides had finished
    started = calls["bottom"]["timings"]["started_at"]
    assert all(
        calls[s]["timings"]["finished_at"] <= started for s in calls if s != "bottom"
    )


def test_submit_watch_exits_1_when_a_call_fails(run, agent, tmp_path):
    document = tmp_path / "failing.yaml"
    document.write_text(
        "calls:\n  - {name: broken, function: fail3}\n"
        "  - {name: later, function: hello}\n"
    )

    done = run("submit", "--watch", "--timeout", "120", str(document))

    assert done.returncode == 1, done.stderr
    final = {line.split()[2] for line in done.stdout.splitlines()[-2:]}
    assert final == {"failed", "cancelled"}


def running(api, call_id: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        status = api.get(f"/api/v1/calls/{call_id}").json()
        if status["state"] not in ("ready", "leased") or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_cancel_ends_a_running_job(run, server, agent, api, tmp_path):
    owner = server.token("alice", "POST_Job,GET_JobStatus,DELETE_Job")
    document = tmp_path / "long.json"
    document.write_text(
        json.dumps({"calls": [{"function": "sleeper", "args": {"seconds": "120"}}]})
    )
    submitted = run("submit", str(document), token=owner)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job_id"]
    call_id = json.loads(submitted.stdout)["calls"]["sleeper"]
    assert running(api, call_id)["state"] == "running"

    done = run("cancel", job_id, token=owner)

    assert done.returncode == 0, done.stderr
    assert "1/1 cancelled" in done.stdout
    assert api.get(f"/api/v1/calls/{call_id}").json()["state"] == "cancelled"


def test_cancel_without_the_role_exits_3(run, tmp_path):
    done = run("cancel", "00000000-0000-4000-8000-000000000000")
    assert "missing_role" in assert_one_line_error(done, 3)


def test_a_code_upload_denied_in_the_browser_exits_6_with_the_reason(
    sso, page, tmp_path
):
    server, _ = sso
    log_in(page, server)
    script = tmp_path / "run"
    script.write_text('#!/bin/sh\necho \'{"never": "runs"}\'\n')
    environ = {
        **os.environ,
        "HPCSERA_SERVER": server.url,
        "HPCSERA_TOKEN": server.token("alice", "POST_Code", tag="cli-denied"),
        "HPCSERA_CONFIG": "/nonexistent/client.json",
    }
    argv = [HPCSERA, "code", "upload", "never", "--script", str(script)]
    log_path = tmp_path / "upload.stderr"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*argv, "--wait", "approved", "--timeout", "120"],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        sha256 = wait_for_digest(process, log_path)
        decide_in_browser(page, server, sha256, "deny")
        out, _ = process.communicate(timeout=60)

    assert process.returncode == 6 and out == ""
    errors = [
        line
        for line in log_path.read_text().splitlines()
        if line.startswith("hpcsera: error:")
    ]
    assert len(errors) == 1 and "denied" in errors[0], log_path.read_text()
    assert "Traceback" not in log_path.read_text()
