"""`hpcsera code upload` and `code status` against a scripted server, and the
folder packing behind `--archive DIR`: exit codes, one-line errors, the digest
line, the same bytes for the same folder."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest
from hpcsera_client.pack import PackError, pack_directory

from hpcsera_client import cli
from tests.client.scripted import Answer
from tests.client.test_cli_unit import one_line_error
from tests.client.test_uploads import DIGEST, SCRIPT, UPLOAD_ID, deployment, upload


@pytest.fixture
def env(monkeypatch, scripted, tmp_path):
    monkeypatch.setenv("HPCSERA_SERVER", scripted.url)
    monkeypatch.setenv("HPCSERA_TOKEN", "hpcsera_x_y")
    monkeypatch.setenv("HPCSERA_CONFIG", str(tmp_path / "client.json"))
    monkeypatch.setattr("hpcsera_client.uploads.POLL_MIN", 0.0)
    return scripted


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "run"
    path.write_bytes(SCRIPT)
    return str(path)


@pytest.fixture
def function_dir(tmp_path):
    folder = tmp_path / "simulate"
    (folder / "lib").mkdir(parents=True)
    (folder / "run").write_text("#!/bin/sh\ncat version\n")
    (folder / "prepare.sh").write_text("#!/bin/sh\necho 1 > version\n")
    (folder / "lib" / "data.txt").write_text("numbers\n")
    for name in ("run", "prepare.sh"):
        os.chmod(folder / name, 0o755)
    return folder


def run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as stop:  # argparse's own refusals
        return int(stop.code or 0)


def test_upload_prints_the_digest_to_stderr_and_the_answer_to_stdout(
    env, capsys, script
):
    env.then(Answer(202, upload()))
    assert run(["code", "upload", "simulate", "--script", script]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["id"] == UPLOAD_ID
    assert err == f"SHA-256 {DIGEST}: approve it at http://127.0.0.1/ui/inbox\n"


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--archive", "a.tgz"], "needs --prepare"),
        (["--script", "SCRIPT", "--prepare", "p"], "goes with --archive"),
        (["--script", "SCRIPT", "--archive", "a"], "not allowed with"),
        ([], "one of the arguments --archive --script is required"),
        (["--script", "/nonexistent/run"], "cannot read /nonexistent/run"),
        (["--script", "SCRIPT", "--timeout", "5"], "--timeout needs --wait"),
        (["--script", "SCRIPT", "--wait", "soon"], "invalid choice"),
    ],
)
def test_bad_usage_is_exit_2_and_one_line_before_any_request(
    env, capsys, script, argv, says
):
    argv = [script if arg == "SCRIPT" else arg for arg in argv]
    assert run(["code", "upload", "simulate", *argv]) == 2
    assert says in one_line_error(capsys)
    assert env.seen == []


@pytest.mark.parametrize(
    "final, code, says",
    [
        (upload("denied", reason="denied by the user"), 6, "denied by the user"),
        (upload("expired", reason="not approved in time"), 6, "not approved in time"),
        (
            upload(
                "approved",
                deployment(
                    "hpc", "failed", reason="prepare failed", log_tail="x\nboom\n"
                ),
            ),
            7,
            "prepare failed (log: boom)",
        ),
    ],
)
def test_waiting_ends_with_a_distinct_exit_code_and_one_error_line(
    env, capsys, script, final, code, says
):
    env.then(Answer(202, upload()), Answer(200, upload()), Answer(200, final))
    argv = ["code", "upload", "simulate", "--script", script, "--wait", "deployed"]
    assert run(argv) == code
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("hpcsera: error")]
    assert len(errors) == 1 and says in errors[0] and "Traceback" not in err
    assert out == ""


def test_a_digest_mismatch_is_exit_8(env, capsys, script):
    env.then(Answer(202, upload(sha256="2" * 64)))
    assert run(["code", "upload", "simulate", "--script", script]) == 8
    assert "do not approve" in one_line_error(capsys)


def test_waiting_past_the_timeout_is_exit_5(env, capsys, script):
    env.then(Answer(202, upload()), Answer(200, upload()))
    argv = ["code", "upload", "f", "--script", script, "--wait", "approved"]
    assert run([*argv, "--timeout", "0"]) == 5


def test_wait_deployed_prints_the_final_status(env, capsys, script):
    done = upload("approved", deployment("hpc", "deployed"))
    env.then(Answer(202, upload()), Answer(200, upload("approved")), Answer(200, done))
    argv = ["code", "upload", "f", "--script", script, "--wait", "deployed"]
    assert run(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["deployments"][0]["state"] == "deployed"
    assert "upload " + UPLOAD_ID + ": approved (hpc deployed)" in err


def test_a_directory_is_packed_and_sent_as_an_archive(env, capsys, function_dir):
    packed = pack_directory(function_dir)
    digest = hashlib.sha256(packed).hexdigest()
    env.then(Answer(202, upload(sha256=digest)))
    argv = ["code", "upload", "simulate", "--archive", str(function_dir)]
    assert run([*argv, "--prepare", "prepare.sh"]) == 0
    assert packed in env.seen[0].body
    assert digest in capsys.readouterr().err


@pytest.mark.parametrize(
    "answer, code",
    [
        (upload("approved"), 0),
        (upload("denied", reason="denied by the user"), 6),
    ],
)
def test_code_status_prints_the_answer_and_says_rejected_by_its_code(
    env, capsys, answer, code
):
    env.then(Answer(200, answer))
    assert run(["code", "status", UPLOAD_ID]) == code
    assert json.loads(capsys.readouterr().out)["state"] == answer["state"]


def test_packing_gives_the_same_bytes_whatever_the_times_and_order(function_dir):
    first = pack_directory(function_dir)
    os.utime(function_dir / "run", (1, 1))
    (function_dir / "lib" / "data.txt").touch()
    assert pack_directory(function_dir) == first

    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "lib", "lib/data.txt", "prepare.sh", "run"
    ]  # fmt: skip
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (0, 0, 0, "", "")
    }
    modes = {m.name: m.mode for m in members}
    assert modes["run"] == 0o755 and modes["lib/data.txt"] == 0o644
    assert first[4:8] == b"\0\0\0\0"  # the gzip header's time


def test_a_link_inside_the_folder_is_kept_as_a_link(function_dir):
    os.symlink("../run", function_dir / "lib" / "run-again")
    with tarfile.open(fileobj=io.BytesIO(pack_directory(function_dir))) as tar:
        link = tar.getmember("lib/run-again")
    assert link.issym() and link.linkname == "../run"


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "../.."])
def test_a_link_leaving_the_folder_is_refused(function_dir, capsys, env, target):
    os.symlink(target, function_dir / "lib" / "escape")
    with pytest.raises(PackError, match="points outside"):
        pack_directory(function_dir)
    argv = ["code", "upload", "f", "--archive", str(function_dir), "--prepare", "p"]
    assert run(argv) == 2
    assert "points outside" in one_line_error(capsys)
    assert env.seen == []
