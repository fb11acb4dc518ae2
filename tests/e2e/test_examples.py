"""The examples in examples/ run against a real server and agent."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import harness

pytestmark = pytest.mark.e2e
EXAMPLES = harness.ROOT / "examples"
GITLAB_KEYWORDS = {"stages", "variables", "default", "include", "workflow"}


@pytest.fixture
def client_env(server, alice_tokens) -> dict:
    bin_dir = str(Path(harness.PYTHON).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "HPCSERA_SERVER": server.url,
        "HPCSERA_TOKEN": alice_tokens["client"],
        "HPCSERA_CONFIG": "/nonexistent/client.json",
    }


def gitlab_jobs() -> tuple[list[str], dict]:
    pipeline = yaml.safe_load((EXAMPLES / "gitlab-ci" / ".gitlab-ci.yml").read_text())
    jobs = {k: v for k, v in pipeline.items() if k not in GITLAB_KEYWORDS}
    return pipeline["stages"], jobs


def test_the_gitlab_pipeline_is_well_formed():
    stages, jobs = gitlab_jobs()
    assert jobs, "the pipeline has no job"
    for name, job in jobs.items():
        assert job["stage"] in stages, name
        assert all(isinstance(line, str) for line in job["script"]), name
        assert set(job.get("needs", [])) <= set(jobs), name
    assert "pip install --quiet hpcsera-client" in jobs["simulate"]["before_script"]


def test_the_gitlab_pipeline_scripts_run_stage_by_stage(client_env, tmp_path, agent):
    stages, jobs = gitlab_jobs()
    env = {**client_env, "CI_COMMIT_SHORT_SHA": "abc1234"}
    for stage in stages:
        for name, job in jobs.items():
            if job["stage"] != stage:
                continue
            # before_script installs the client, which this venv already has.
            script = "set -euo pipefail\n" + "\n".join(job["script"])
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, f"{name}: {done.stderr}"
    greeting = json.loads((tmp_path / "greeting.json").read_text())
    assert greeting["greeting"] == "Hello, abc1234"
    assert json.loads((tmp_path / "result.json").read_text()) == {"slept": True}


def run_example(name: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [harness.PYTHON, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_workflow_step_runs_calls_after_what_they_need(client_env, agent):
    done = run_example("workflow_step.py", client_env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "prepare: done" and lines[-2] == "summarize: done"
    assert json.loads(lines[-1]) == {
        "simulate-a": {"slept": True},
        "simulate-b": {"slept": True},
    }


def test_the_notebook_runs_cell_by_cell_as_a_script(client_env, agent):
    done = run_example("notebook.py", client_env)
    assert done.returncode == 0, done.stderr
    assert "connected as alice" in done.stdout
    assert "Hello, notebook" in done.stdout
    assert "collected 3 results" in done.stdout
    assert "fail3 failed with exit code 3" in done.stdout
