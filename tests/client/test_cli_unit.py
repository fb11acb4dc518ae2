"""The CLI's input checks, exit codes and live view, without a real server."""

from __future__ import annotations

import io
import json

import pytest
from hpcsera_client.progress import watch_job

from hpcsera_client import Client, cli
from tests.client.scripted import Answer


@pytest.fixture
def env(monkeypatch, scripted, tmp_path):
    monkeypatch.setenv("HPCSERA_SERVER", scripted.url)
    monkeypatch.setenv("HPCSERA_TOKEN", "hpcsera_x_y")
    monkeypatch.setenv("HPCSERA_CONFIG", str(tmp_path / "client.json"))
    return scripted


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("hpcsera: error: ")
    return err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["call", "f", "novalue"], "not key=value"),
        (["call", "f", "a=1", "a=2"], "given twice"),
        (["call", "f", "--input", "/nonexistent/in.json"], "cannot read"),
        (["call"], "required"),
        (["frobnicate"], "invalid choice"),
        (["call", "f", "--time-limit", "soon"], "invalid int"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_request(env, capsys, argv, says):
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    assert code == 2
    assert says in one_line_error(capsys)
    assert env.seen == []


def test_an_input_file_that_is_not_json_is_refused_locally(env, capsys, tmp_path):
    bad = tmp_path / "in.json"
    bad.write_text("{nope")
    assert cli.main(["call", "f", "--input", str(bad)]) == 2
    assert "not JSON" in one_line_error(capsys)


def test_without_a_server_it_says_how_to_give_one(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HPCSERA_SERVER", raising=False)
    monkeypatch.setenv("HPCSERA_CONFIG", str(tmp_path / "none.json"))
    assert cli.main(["jobs"]) == 2
    assert "--server" in one_line_error(capsys)


@pytest.mark.parametrize(
    "answer, code",
    [
        (Answer(404, {"code": "not_found", "detail": "No such object."}), 3),
        (Answer(401, {"code": "token_revoked", "detail": "revoked"}), 3),
        (Answer(500, {"code": "server_error", "detail": "logged"}), 4),
    ],
)
def test_server_refusals_map_to_their_exit_codes(env, capsys, answer, code):
    env.then(answer, answer, answer, answer, answer)
    assert cli.main(["status", "c1"]) == code
    assert answer.body["code"] in one_line_error(capsys)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def job(state: str) -> dict:
    call = {
        "id": "c1234567890",
        "function": "simulate",
        "state": state,
        "exit_code": 0 if state == "succeeded" else None,
        "timings": {"duration_seconds": 1.5 if state == "succeeded" else None},
    }
    return {"id": "j1", "state": state, "calls": [call]}


def test_on_a_terminal_the_job_table_is_redrawn_in_place(scripted):
    scripted.then(Answer(200, job("running")), Answer(200, job("succeeded")))
    client = Client(scripted.url, "t", user="alice", sleep=lambda _: None)
    screen = Terminal()
    assert watch_job(client, "j1", screen) == ["succeeded"]
    frames = screen.getvalue().split("\x1b[2F\x1b[J")
    assert len(frames) == 2
    assert "0/1 done" in frames[0] and "running" in frames[0]
    assert "1/1 done" in frames[1] and "1.5s" in frames[1]


def test_into_a_pipe_only_changes_are_written(scripted):
    scripted.then(*[Answer(200, job("running"))] * 3, Answer(200, job("succeeded")))
    client = Client(scripted.url, "t", user="alice", sleep=lambda _: None)
    log = io.StringIO()
    watch_job(client, "j1", log)
    lines = log.getvalue().splitlines()
    assert "\x1b" not in log.getvalue()
    assert [line.split()[2] for line in lines if line.startswith("c1234567")] == [
        "running",
        "succeeded",
    ]


def test_login_checks_the_token_and_stores_it_for_the_user_only(
    env, capsys, monkeypatch, tmp_path
):
    env.then(Answer(200, {"token": {"user": "alice", "tag": "default", "roles": []}}))
    monkeypatch.setattr("sys.stdin", io.StringIO("hpcsera_abc_def\n"))
    assert cli.main(["--server", env.url, "login"]) == 0
    saved = tmp_path / "client.json"
    assert json.loads(saved.read_text())["token"] == "hpcsera_abc_def"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert "hpcsera_abc_def" not in capsys.readouterr().out
