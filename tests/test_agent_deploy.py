"""Installing a deployment: prepared in staging, swapped in, the old one kept."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from hpcsera_agent.config import ConfigError, DeploySettings, parse
from hpcsera_agent.deploy import NotApproved, install

from hpcsera_agent import runners

RUN = "#!/bin/sh\necho {version}\n"
PREPARE_OK = (
    "#!/bin/sh\n"
    'echo "function=$HPCSERA_FUNCTION deployment=$HPCSERA_DEPLOYMENT"\n'
    'echo "token=${HPCSERA_TOKEN:-none}"\n'
    'if [ -n "$COUNTER" ]; then echo x >> "$COUNTER"; fi\n'
    "pwd > prepared-in\n"
)


def config(tmp_path: Path, **deploy):
    base = parse(
        {
            "server": "http://127.0.0.1:9",
            "token": "t",
            "functions_dir": str(tmp_path / "functions"),
            "state_dir": str(tmp_path / "state"),
            "tail_chars": 200,
            "deploy": {"enabled": True},
        }
    )
    # Below the config's one-second floor, so a timeout test stays quick.
    return dataclasses.replace(base, deploy=dataclasses.replace(base.deploy, **deploy))


def tar_gz(path: Path, files: dict[str, tuple[str, int]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, (text, mode) in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return path


def upload(
    tmp_path: Path,
    deployment: str = "d1",
    prepare: str = PREPARE_OK,
    **extra: tuple[str, int],
) -> tuple[dict, Path]:
    """An offer for function "hello" whose `run` prints the deployment id."""
    files = {"run": (RUN.format(version=deployment), 0o755)}
    files["prepare.sh"] = (prepare, 0o755)
    files.update(extra)
    archive = tar_gz(tmp_path / f"{deployment}.tar.gz", files)
    offer = {
        "id": deployment,
        "upload_id": f"u-{deployment}",
        "function": "hello",
        "format": "tar.gz",
        "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "size": archive.stat().st_size,
        "prepare": "prepare.sh",
        "commit": None,
    }
    return offer, archive


def serving(cfg) -> str:
    """What a call of "hello" would print right now."""
    executable = runners.find_executable(cfg.functions_dir, "hello")
    assert executable is not None
    return subprocess.run([executable], capture_output=True, text=True).stdout.strip()


def hidden(cfg) -> Path:
    return cfg.functions_dir / ".hpcsera"


def versions(cfg) -> set[str]:
    return {p.name for p in (hidden(cfg) / "versions" / "hello").iterdir()}


def staging_is_empty(cfg) -> bool:
    staging = hidden(cfg) / "staging"
    return not staging.exists() or not any(staging.iterdir())


def test_it_installs_a_prepared_archive_behind_a_relative_link(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCSERA_TOKEN", "agent-secret")
    cfg = config(tmp_path)
    offer, archive = upload(tmp_path)

    result = install(cfg, offer, archive)

    assert result.state == "deployed", result.reason
    assert "function=hello deployment=d1" in result.log_tail
    assert "token=none" in result.log_tail, "the agent's token is not passed on"
    assert serving(cfg) == "d1"
    assert os.readlink(cfg.functions_dir / "hello") == ".hpcsera/versions/hello/d1"
    version = hidden(cfg) / "versions" / "hello" / "d1"
    prepared_in = (version / "prepared-in").read_text().strip()
    assert prepared_in == str(hidden(cfg) / "staging" / "d1")
    assert staging_is_empty(cfg)
    assert result.report() == {
        "state": "deployed",
        "reason": "",
        "log_tail": result.log_tail,
    }


def test_a_failing_preparation_leaves_the_old_version_serving(tmp_path):
    cfg = config(tmp_path)
    install(cfg, *upload(tmp_path, "d1"))

    bad = "#!/bin/sh\necho building\necho boom >&2\nexit 1\n"
    result = install(cfg, *upload(tmp_path, "d2", prepare=bad))

    assert result.state == "failed"
    assert result.reason == "preparation exited with code 1"
    assert "building\nboom" in result.log_tail, "stdout and stderr, in order"
    assert serving(cfg) == "d1"
    assert versions(cfg) == {"d1"}
    assert staging_is_empty(cfg)


def test_a_preparation_over_its_time_is_stopped_with_what_it_started(
    tmp_path, monkeypatch
):
    child_pid = tmp_path / "child.pid"
    monkeypatch.setenv("CHILD_PID", str(child_pid))
    cfg = config(tmp_path, prepare_timeout_seconds=0.5)
    install(cfg, *upload(tmp_path, "d1"))

    slow = '#!/bin/sh\nsleep 60 &\necho $! > "$CHILD_PID"\necho started\nwait\n'
    began = time.monotonic()
    result = install(cfg, *upload(tmp_path, "d2", prepare=slow))

    assert time.monotonic() - began < 10
    assert result.state == "failed"
    assert result.reason == "preparation did not finish within 0.5 s"
    assert "started" in result.log_tail
    assert serving(cfg) == "d1"
    assert not _alive(int(child_pid.read_text()))


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # killed, not yet reaped by init


def test_a_preparation_refused_by_approve_never_runs(tmp_path, monkeypatch):
    counter = tmp_path / "runs"
    monkeypatch.setenv("COUNTER", str(counter))
    cfg = config(tmp_path)
    install(cfg, *upload(tmp_path, "d1"))
    offer, archive = upload(tmp_path, "d2")
    asked = []

    def approve(executable: Path, arguments: dict) -> None:
        asked.append((executable, arguments, executable.read_text()))
        raise NotApproved("denied by alice")

    result = install(cfg, offer, archive, approve)

    assert result.state == "failed"
    assert "denied by alice" in result.reason
    assert asked == [
        (
            hidden(cfg) / "staging" / "d2" / "prepare.sh",
            {"archive_sha256": offer["sha256"], "prepare": "prepare.sh"},
            PREPARE_OK,
        )
    ]
    assert counter.read_text() == "x\n", "only d1's preparation ran"
    assert serving(cfg) == "d1"
    assert staging_is_empty(cfg)


def test_an_approved_preparation_runs(tmp_path):
    cfg = config(tmp_path)
    result = install(cfg, *upload(tmp_path, "d1"), approve=lambda path, args: None)

    assert result.state == "deployed", result.reason
    assert serving(cfg) == "d1"


def test_it_unpacks_nothing_when_the_digest_differs(tmp_path):
    cfg = config(tmp_path)
    offer, archive = upload(tmp_path, "d1")
    offer["sha256"] = "0" * 64

    result = install(cfg, offer, archive)

    assert result.state == "failed"
    assert "is not the approved" in result.reason
    assert not (hidden(cfg) / "versions").exists()
    assert staging_is_empty(cfg)
    assert runners.find_executable(cfg.functions_dir, "hello") is None


def test_it_leaves_a_hand_made_function_alone(tmp_path, monkeypatch):
    counter = tmp_path / "runs"
    monkeypatch.setenv("COUNTER", str(counter))
    cfg = config(tmp_path)
    cfg.functions_dir.mkdir()
    mine = cfg.functions_dir / "hello"
    mine.write_text("#!/bin/sh\necho mine\n")
    mine.chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    for made in ("file", "folder", "foreign link"):
        if made == "folder":
            mine.unlink()
            mine.mkdir()
            (mine / "run").write_text("#!/bin/sh\necho mine\n")
            (mine / "run").chmod(0o755)
        if made == "foreign link":
            os.rename(mine, elsewhere / "hello")
            mine.symlink_to(elsewhere / "hello")
        result = install(cfg, *upload(tmp_path, "d1"))

        assert result.state == "failed", made
        assert "was not installed by a deployment" in result.reason
        assert serving(cfg) == "mine"
        assert not (hidden(cfg) / "versions" / "hello").exists()
        assert not counter.exists(), "refused before anything ran"


def test_installing_the_same_deployment_again_changes_nothing(tmp_path, monkeypatch):
    counter = tmp_path / "runs"
    monkeypatch.setenv("COUNTER", str(counter))
    cfg = config(tmp_path)
    offer, archive = upload(tmp_path, "d1")

    first = install(cfg, offer, archive)
    again = install(cfg, offer, archive)

    assert (first.state, again.state) == ("deployed", "deployed")
    assert counter.read_text() == "x\n", "the preparation ran once"
    assert serving(cfg) == "d1"


def test_it_keeps_the_current_and_the_previous_version_only(tmp_path):
    cfg = config(tmp_path)
    for deployment in ("d1", "d2", "d3"):
        assert install(cfg, *upload(tmp_path, deployment)).state == "deployed"

    assert versions(cfg) == {"d2", "d3"}
    assert serving(cfg) == "d3"
    names = sorted(p.name for p in cfg.functions_dir.iterdir())
    assert names == [".hpcsera", "hello"], "no temporary link is left behind"


def test_a_refused_archive_leaves_the_old_version_serving(tmp_path):
    cfg = config(tmp_path)
    install(cfg, *upload(tmp_path, "d1"))
    offer, archive = upload(tmp_path, "d2", **{"../escape": ("x", 0o644)})

    result = install(cfg, offer, archive)

    assert result.state == "failed"
    assert result.reason.startswith("the archive was refused: entry '../escape'")
    assert serving(cfg) == "d1"
    assert not (hidden(cfg) / "staging" / "escape").exists()
    assert staging_is_empty(cfg)


def test_it_refuses_a_deployment_without_a_run_file(tmp_path):
    cfg = config(tmp_path)
    offer, archive = upload(tmp_path, "d1", prepare=PREPARE_OK + "rm run\n")

    result = install(cfg, offer, archive)

    assert result.state == "failed"
    assert "no executable file named run" in result.reason
    assert "function=hello" in result.log_tail
    assert not (cfg.functions_dir / "hello").exists()


def test_it_refuses_a_preparation_that_is_a_link_or_not_executable(tmp_path):
    cfg = config(tmp_path)
    offer, archive = upload(tmp_path, "d1", **{"prep.txt": ("echo", 0o644)})
    for prepare, match in [
        ("prep.txt", "not an executable file"),
        ("../prepare.sh", "not inside the archive"),
        ("missing.sh", "not an executable file"),
    ]:
        result = install(cfg, dict(offer, prepare=prepare), archive)

        assert result.state == "failed"
        assert match in result.reason

    path = tmp_path / "linked.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("prepare-link")
        info.type, info.linkname = tarfile.SYMTYPE, "/bin/true"
        tar.addfile(info)
    offer = dict(offer, prepare="prepare-link")
    offer["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    result = install(cfg, offer, path)
    assert result.state == "failed"
    assert "absolute path" in result.reason


def test_a_chatty_preparation_is_kept_to_its_tail(tmp_path):
    cfg = config(tmp_path)
    chatty = "#!/bin/sh\nyes line | head -n 200000\necho the-end\n"

    result = install(cfg, *upload(tmp_path, "d1", prepare=chatty))

    assert result.state == "deployed", result.reason
    assert len(result.log_tail) == cfg.tail_chars
    assert result.log_tail.endswith("line\nthe-end\n")


def test_an_uploaded_script_becomes_run(tmp_path):
    cfg = config(tmp_path)
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho scripted\n")
    offer = {
        "id": "s1",
        "function": "hello",
        "format": "script",
        "sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        "prepare": None,
    }

    result = install(cfg, offer, script)

    assert result.state == "deployed", result.reason
    assert serving(cfg) == "scripted"
    run = hidden(cfg) / "versions" / "hello" / "s1" / "run"
    assert stat.S_IMODE(run.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("function", ".hpcsera", "cannot be installed"),
        ("function", "a/b", "cannot be installed"),
        ("id", "../d1", "not usable as a folder name"),
        ("format", "rar", "not one of"),
    ],
)
def test_it_refuses_offers_with_unusable_names(tmp_path, field, value, match):
    cfg = config(tmp_path)
    offer, archive = upload(tmp_path, "d1")

    result = install(cfg, dict(offer, **{field: value}), archive)

    assert result.state == "failed"
    assert match in result.reason
    assert not cfg.functions_dir.exists()


def test_deploy_settings_default_to_off():
    cfg = parse({"server": "http://x", "token": "t"})

    assert cfg.deploy == DeploySettings()
    assert cfg.deploy.enabled is False
    assert cfg.deploy.max_bytes == 100 * 1024 * 1024


@pytest.mark.parametrize(
    "table, match",
    [
        ({"colour": "red"}, r"\[deploy\] unknown setting"),
        ({"enabled": "yes"}, r"\[deploy\] enabled must be true or false"),
        ({"max_bytes": 0}, r"\[deploy\] max_bytes must be a whole number"),
        ({"max_entries": 1.5}, r"\[deploy\] max_entries"),
        ({"prepare_timeout_seconds": 0}, r"\[deploy\] prepare_timeout_seconds"),
        ("on", r"\[deploy\] must be a table"),
    ],
)
def test_bad_deploy_settings_are_refused(table, match):
    with pytest.raises(ConfigError, match=match):
        parse({"server": "http://x", "token": "t", "deploy": table})


def test_deploy_settings_are_read():
    cfg = parse(
        {
            "server": "http://x",
            "token": "t",
            "deploy": {
                "enabled": True,
                "max_bytes": 2048,
                "max_entries": 7,
                "prepare_timeout_seconds": 30,
            },
        }
    )

    assert cfg.deploy == DeploySettings(True, 2048, 7, 30.0)
