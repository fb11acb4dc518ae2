"""The agent's parts on their own: config, scheduler output parsing, runners."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hpcsera_agent.config import ConfigError, load, parse

from hpcsera_agent import runners, slurm

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"
AGENT_SRC = Path(__file__).parent.parent / "hpcsera_agent" / "src"


def config(tmp_path: Path, **overrides):
    raw = {
        "server": "http://127.0.0.1:9",
        "token": "t",
        "functions_dir": str(tmp_path / "functions"),
        "state_dir": str(tmp_path / "state"),
    }
    raw.update(overrides)
    return parse(raw)


def call(function: str, **extra) -> dict:
    return {"id": "c1", "job_id": "j1", "function": function, "args": {}, **extra}


def make_function(tmp_path: Path, name: str, source: str) -> Path:
    folder = tmp_path / "functions"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(source)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    "raw, message",
    [
        ({}, "server is required"),
        ({"server": "ftp://x", "token": "t"}, "http"),
        ({"server": "http://x"}, "token is required"),
        ({"server": "http://x", "token": "t", "arg_mode": "shell"}, "arg_mode"),
        ({"server": "http://x", "token": "t", "max_parallel": 0}, "max_parallel"),
        ({"server": "http://x", "token": "t", "colour": "red"}, "unknown setting"),
        ({"server": "http://x", "token": "t", "site": "a b"}, "site"),
        (
            {"server": "http://x", "token": "t", "functions": {"..": {}}},
            "not valid",
        ),
        (
            {"server": "http://x", "token": "t", "functions": {"f": {"runner": "k8s"}}},
            "runner",
        ),
        (
            {"server": "http://x", "token": "t", "slurm": {"extra_args": "--mem=1G"}},
            "list",
        ),
    ],
)
def test_bad_configs_are_refused_with_a_reason(raw, message, monkeypatch):
    monkeypatch.delenv("HPCSERA_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=message):
        parse(raw)


def test_a_missing_or_broken_config_file_is_one_readable_line(tmp_path):
    for path, content in [
        (tmp_path / "missing.toml", None),
        (tmp_path / "bad.toml", "="),
    ]:
        if content is not None:
            path.write_text(content)
        agent = shutil.which("hpcsera-agent") or str(
            Path(sys.executable).parent / "hpcsera-agent"
        )
        done = subprocess.run(
            [agent, "-c", str(path), "check"], capture_output=True, text=True
        )
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpcsera-agent: config:")


def test_a_token_file_is_read(tmp_path):
    (tmp_path / "tok").write_text("secret-token\n")
    (tmp_path / "agent.toml").write_text('server = "http://x"\ntoken_file = "tok"\n')
    assert load(str(tmp_path / "agent.toml")).token == "secret-token"


def test_sbatch_output_with_site_notices_yields_the_id():
    text = (FIXTURES / "sbatch_site_notice.txt").read_text()
    assert slurm.parse_sbatch(text) == "4242"
    cluster = (FIXTURES / "sbatch_parsable_cluster.txt").read_text()
    assert slurm.parse_sbatch(cluster) == "777"
    plain = (FIXTURES / "sbatch_plain_recorded.txt").read_text()
    assert slurm.parse_sbatch(plain) == "38"
    assert slurm.parse_sbatch("Submitted batch job 9 on cluster b\n") == "9"
    assert slurm.parse_sbatch("sbatch: error: invalid partition\n") is None


def test_sacct_states_map_to_outcomes():
    states = slurm.parse_sacct((FIXTURES / "sacct_mixed.txt").read_text())

    assert states["101"].succeeded
    assert not states["102"].succeeded and states["102"].exit_code == 3
    assert "code 3" in states["102"].reason()
    assert states["103"].state == "CANCELLED" and "CANCELLED" in states["103"].reason()
    assert "time limit" in states["104"].reason()
    assert "memory" in states["105"].reason()
    assert not states["106"].terminal and not states["107"].terminal
    assert not states["109"].terminal
    assert states["108"].terminal and not states["108"].succeeded
    # A state this agent does not know is never taken for success, nor an end.
    assert not states["110"].succeeded and "unknown state" in states["110"].reason()
    assert states["110"].kind == "unknown" and not states["110"].terminal


@pytest.mark.parametrize(
    "job_id, words",
    [
        ("111", "PREEMPTED"),
        ("112", "BOOT_FAIL"),
        ("113", "DEADLINE"),
        ("115", "by uid 1000"),
    ],
)
def test_every_terminal_kind_of_slurm_ends_failed_saying_which(job_id, words):
    state = slurm.parse_sacct((FIXTURES / "sacct_mixed.txt").read_text())[job_id]
    assert state.terminal and not state.succeeded and words in state.reason()


def test_suffixes_and_signals_in_sacct_columns_are_understood():
    states = slurm.parse_sacct((FIXTURES / "sacct_mixed.txt").read_text())
    assert states["114"].succeeded  # COMPLETED+
    assert states["116"].exit_code == 137 and "signal 9" in states["116"].reason()
    assert not states["118"].succeeded and states["118"].exit_code == 1


def test_a_reused_job_id_is_matched_by_the_job_name():
    text = (FIXTURES / "sacct_mixed.txt").read_text()
    mine = slurm.parse_sacct(text, {"117": "hpcsera-q"})
    assert mine["117"].state == "RUNNING"
    assert slurm.parse_sacct(text, {"117": "hpcsera-other"}) == {}


def test_recorded_sacct_and_squeue_output_parse():
    text = (FIXTURES / "sacct_recorded.txt").read_text()
    states = slurm.parse_sacct(text)
    assert [states[i].kind for i in ("33", "34", "35", "36", "37")] == [
        "succeeded",
        "failed",
        "failed",
        "failed",
        "active",
    ]
    assert states["36"].exit_code == 137
    live = slurm.parse_squeue((FIXTURES / "squeue_recorded.txt").read_text())
    assert live["37"][0] == "i7-run" and live["37"][1].kind == "active"
    assert live["33"][1].state == "COMPLETED"


@pytest.mark.parametrize(
    "raw, expected",
    [("0:0", (0, 0)), ("3:0", (3, 0)), ("0:9", (0, 9)), ("", (None, 0))],
)
def test_exit_codes_in_code_signal_form(raw, expected):
    assert slurm.parse_exit_code(raw) == expected


def test_short_squeue_states_map_like_long_ones():
    assert slurm.batch_state("CD", "0:0").succeeded
    assert (
        slurm.batch_state("OOM").terminal and slurm.batch_state("PD").kind == "active"
    )
    assert slurm.batch_state("").kind == "unknown"


def test_env_mode_passes_arguments_as_prefixed_variables(tmp_path):
    make_function(tmp_path, "f", "#!/bin/sh\nprintf '%s' \"$HPCSERA_ARG_name\"\n")
    cfg = config(tmp_path)
    prepared = runners.prepare(cfg, call("f", args={"name": "a b; $(x)"}))
    outcome = runners.run_local(prepared, cfg, lambda: None)
    assert outcome.state == "succeeded" and outcome.stdout == "a b; $(x)"


def test_argv_mode_passes_arguments_as_options(tmp_path):
    make_function(tmp_path, "f", "#!/bin/sh\nprintf '%s|' \"$@\"\n")
    cfg = config(tmp_path, arg_mode="argv")
    prepared = runners.prepare(cfg, call("f", args={"b": "2", "a": "1 `x`"}))
    outcome = runners.run_local(prepared, cfg, lambda: None)
    assert outcome.stdout == "--a=1 `x`|--b=2|"


def test_a_missing_executable_cannot_be_prepared(tmp_path):
    with pytest.raises(runners.RunError, match="no executable"):
        runners.prepare(config(tmp_path), call("ghost"))


def test_names_that_leave_the_folder_are_never_executables(tmp_path):
    make_function(tmp_path, "real", "#!/bin/sh\necho hi\n")
    folder = tmp_path / "functions"
    assert runners.find_executable(folder, "real") is not None
    for name in ("..", ".", "../functions/real", "/bin/sh", ""):
        assert runners.find_executable(folder, name) is None


def test_a_directory_function_runs_its_run_file(tmp_path):
    folder = tmp_path / "functions" / "tool"
    folder.mkdir(parents=True)
    (folder / "run").write_text("#!/bin/sh\necho from-dir\n")
    (folder / "run").chmod(0o755)
    cfg = config(tmp_path)
    outcome = runners.run_local(runners.prepare(cfg, call("tool")), cfg, lambda: None)
    assert outcome.stdout == "from-dir\n"


def test_large_output_keeps_its_beginning_and_says_it_was_cut(tmp_path):
    make_function(tmp_path, "big", "#!/bin/sh\nseq 1 100000\n")
    cfg = config(tmp_path, max_output_bytes=1000)
    outcome = runners.run_local(runners.prepare(cfg, call("big")), cfg, lambda: None)
    assert outcome.stdout_truncated and len(outcome.stdout) == 1000
    assert outcome.stdout.startswith("1\n2\n3\n")


def test_the_agents_token_is_not_in_the_functions_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCSERA_TOKEN", "hpcsera_secret_of_the_agent")
    make_function(tmp_path, "f", "#!/bin/sh\nenv\n")
    cfg = config(tmp_path)
    outcome = runners.run_local(runners.prepare(cfg, call("f")), cfg, lambda: None)
    assert "hpcsera_secret_of_the_agent" not in outcome.stdout
    assert "HPCSERA_CALL_ID=c1" in outcome.stdout


def test_a_function_flooding_its_output_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(runners, "OUTPUT_CHECK_SECONDS", 0.2)
    monkeypatch.setattr(runners, "output_file_limit", lambda config: 1_000_000)
    make_function(tmp_path, "flood", "#!/bin/sh\nyes flood 1>&2\n")
    cfg = config(tmp_path)
    outcome = runners.run_local(runners.prepare(cfg, call("flood")), cfg, lambda: None)
    assert outcome.state == "failed" and "wrote more than" in outcome.reason
    assert "flood\nflood" in outcome.stderr_tail


def test_a_local_process_is_killed_at_its_wall_clock_limit(tmp_path):
    make_function(tmp_path, "slow", "#!/bin/sh\nsleep 30 &\nwait\n")
    cfg = config(tmp_path)
    running = []
    prepared = runners.prepare(cfg, call("slow", time_limit_seconds=1))
    outcome = runners.run_local(prepared, cfg, lambda: running.append(True))
    assert outcome.state == "failed" and "wall-clock limit" in outcome.reason
    assert running == [True]


def test_a_signal_death_is_a_failure_with_128_plus_signal(tmp_path):
    make_function(tmp_path, "boom", "#!/bin/sh\nkill -9 $$\n")
    cfg = config(tmp_path)
    outcome = runners.run_local(runners.prepare(cfg, call("boom")), cfg, lambda: None)
    assert outcome.state == "failed" and outcome.exit_code == 137
    assert "signal 9" in outcome.reason


def test_the_input_body_is_a_private_file(tmp_path):
    make_function(tmp_path, "f", '#!/bin/sh\ncat "$HPCSERA_INPUT_FILE"\n')
    cfg = config(tmp_path)
    prepared = runners.prepare(cfg, call("f", input='{"a": 1}'))
    assert os.stat(prepared.env["HPCSERA_INPUT_FILE"]).st_mode & 0o777 == 0o600
    assert runners.run_local(prepared, cfg, lambda: None).stdout == '{"a": 1}'


def test_backoff_is_jittered_and_capped():
    from hpcsera_agent.client import backoff

    waits = [backoff(attempt, base=0.5, cap=8.0) for attempt in range(1, 40)]
    assert all(0 <= w <= 8.0 for w in waits)
    assert len(set(waits)) > 30, "full jitter spreads agents that failed together"
    assert max(backoff(1, base=0.5, cap=8.0) for _ in range(200)) <= 1.0


def _python39() -> str | None:
    versions = Path(os.path.expanduser("~/.pyenv/versions"))
    candidates = [str(p) for p in sorted(versions.glob("3.9*/bin/python"))]
    candidates += [p for p in [shutil.which("python3.9")] if p]
    for candidate in candidates:
        if (
            subprocess.run([candidate, "--version"], capture_output=True).returncode
            == 0
        ):
            return candidate
    return None


@pytest.mark.skipif(_python39() is None, reason="no Python 3.9 on this machine")
def test_the_agent_compiles_on_python_3_9():
    done = subprocess.run(
        [_python39(), "-m", "compileall", "-q", str(AGENT_SRC)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
