"""`hpcsera submit`, `cancel` and `login --client-id` against a scripted
server: exit codes, one-line errors, the stored token."""

from __future__ import annotations

import functools
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hpcsera_client.login import request_token

from hpcsera_client import cli
from tests.client.scripted import Answer
from tests.client.test_cli_unit import one_line_error
from tests.client.test_login import STARTED, metadata


@pytest.fixture
def env(monkeypatch, scripted, tmp_path):
    monkeypatch.setenv("HPCSERA_SERVER", scripted.url)
    monkeypatch.setenv("HPCSERA_TOKEN", "hpcsera_x_y")
    monkeypatch.setenv("HPCSERA_CONFIG", str(tmp_path / "client.json"))
    return scripted


def a_job(*states: str) -> dict:
    calls = [
        {
            "id": f"c{n}0000000",
            "job_id": "j1",
            "name": f"step{n}",
            "function": "f",
            "state": state,
            "exit_code": None,
            "timings": {"duration_seconds": None},
        }
        for n, state in enumerate(states)
    ]
    return {"id": "j1", "state": "running", "calls": calls}


@pytest.fixture
def jobfile(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("calls:\n  - {name: step0, function: f}\n")
    return path


def test_submit_prints_the_job_and_call_ids(env, capsys, jobfile):
    env.then(Answer(201, a_job("ready", "pending")))
    assert cli.main(["submit", str(jobfile)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "job_id": "j1",
        "calls": {"step0": "c00000000", "step1": "c10000000"},
    }


@pytest.mark.parametrize(
    "final, code", [(("succeeded", "succeeded"), 0), (("succeeded", "cancelled"), 1)]
)
def test_submit_watch_exits_0_only_if_every_call_succeeded(env, jobfile, final, code):
    env.then(Answer(201, a_job("ready", "pending")), Answer(200, a_job(*final)))
    assert cli.main(["submit", "--watch", str(jobfile)]) == code


def test_a_missing_job_file_is_a_usage_error(env, capsys, tmp_path):
    assert cli.main(["submit", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read" in one_line_error(capsys)
    assert env.seen == []


def test_cancel_sends_delete_and_says_how_many_calls_ended(env, capsys):
    env.then(Answer(200, a_job("succeeded", "cancelled")))
    assert cli.main(["cancel", "j1"]) == 0
    assert env.seen[0].method == "DELETE" and env.seen[0].path == "/api/v1/jobs/j1"
    assert "1/2 cancelled" in capsys.readouterr().out


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "client.key"
    path.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def login_argv(env, key) -> list[str]:
    return [
        "--server", env.url, "login", "--client-id", "cid", "--key", str(key),
        "--user", "alice", "--roles", "POST_Job",
    ]  # fmt: skip


def test_login_by_approval_stores_the_token_for_the_user_only(
    env, capsys, monkeypatch, tmp_path, key
):
    no_sleep = functools.partial(request_token, sleep=lambda _: None)
    monkeypatch.setattr(cli, "request_token", no_sleep)
    env.then(
        metadata(env.url),
        STARTED,
        Answer(200, {"access_token": "hpcsera_a_b", "expires_in": 60}),
        Answer(200, {"token": {"user": "alice", "tag": "default", "roles": []}}),
    )
    assert cli.main(login_argv(env, key)) == 0
    saved = tmp_path / "client.json"
    assert json.loads(saved.read_text())["token"] == "hpcsera_a_b"
    assert saved.stat().st_mode & 0o777 == 0o600
    out = capsys.readouterr().out
    assert "the code: HPC " in out and "hpcsera_a_b" not in out


def test_a_denied_login_exits_3_with_one_line(env, capsys, monkeypatch, key):
    no_sleep = functools.partial(request_token, sleep=lambda _: None)
    monkeypatch.setattr(cli, "request_token", no_sleep)
    env.then(metadata(env.url), STARTED, Answer(403, {"error": "access_denied"}))
    assert cli.main(login_argv(env, key)) == 3
    assert "access_denied" in one_line_error(capsys)


def test_login_by_approval_without_a_key_is_a_usage_error(env, capsys):
    argv = ["--server", env.url, "login", "--client-id", "cid", "--user", "alice"]
    assert cli.main(argv) == 2
    assert "--key" in one_line_error(capsys)
