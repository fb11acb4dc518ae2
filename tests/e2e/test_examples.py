"""The examples in examples/ run against a real server and agent."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import harness
from tests.e2e.conftest import FUNCTIONS, log_in

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
    for name in ("deploy", "simulate"):
        # hpcsera-client is not on PyPI: the pipeline names where it comes from.
        install = 'pip install --quiet "$HPCSERA_CLIENT_SPEC"'
        assert install in jobs[name]["before_script"]
    assert stages.index("deploy") < stages.index("simulate")


PIPELINE_TAG = "pipeline"
DIGEST_LINE = re.compile(r"SHA-256 ([0-9a-f]{64}): approve it at ")


@pytest.fixture
def pipeline(sso, page, tmp_path):
    """alice's SSO server, her browser, a CI token and an agent that deploys.

    The deploy job waits for a person's approval in the web UI, so this
    pipeline runs against the server behind the OpenID provider, where alice
    can log in; its own tag keeps its uploads away from other tests' agents.
    """
    server, _ = sso
    log_in(page, server)  # alice exists once she has logged in
    functions = tmp_path / "functions"
    for name in ("hello", "sleeper"):
        harness.install_function(functions, name, FUNCTIONS[name])
    agent_token = server.token(
        "alice", "GET_Job,UPDATE_JobStatus,GET_Code", tag=PIPELINE_TAG
    )
    config = harness.write_agent_config(
        tmp_path,
        server,
        agent_token,
        functions,
        name="ci-cluster",
        extra="[deploy]\nenabled = true\nprepare_timeout_seconds = 60\n",
    )
    agent = harness.start_agent(config)
    ci_token = server.token(
        "alice", "POST_Code,POST_Job,GET_JobStatus", tag=PIPELINE_TAG
    )
    yield server, page, ci_token
    agent.stop()


def decide_in_browser(page, server, sha256: str, decision: str = "approve") -> None:
    """What the user does: find the upload with the digest the job log shows."""
    log_in(page, server)
    page.goto(server.url + "/ui/requests")
    form = page.locator("form.upload", has_text=sha256)
    assert form.count() == 1, page.content()
    form.locator(f"button[value={decision}]").click()
    page.wait_for_url(server.url + "/ui/requests")


def run_job(job: dict, env: dict, cwd: Path, log) -> subprocess.Popen:
    # before_script installs the client, which this venv already has.
    script = "set -euo pipefail\n" + "\n".join(job["script"])
    return subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )


def wait_for_digest(process: subprocess.Popen, log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = DIGEST_LINE.search(log.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, f"the job ended early: {log.read_text()}"
        assert time.monotonic() < deadline, f"no digest line: {log.read_text()}"
        time.sleep(0.1)


def test_the_gitlab_pipeline_scripts_run_stage_by_stage(pipeline, tmp_path):
    server, page, ci_token = pipeline
    stages, jobs = gitlab_jobs()
    checkout = tmp_path / "checkout"
    shutil.copytree(EXAMPLES / "functions", checkout / "examples" / "functions")
    bin_dir = str(Path(harness.PYTHON).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "HPCSERA_SERVER": server.url,
        "HPCSERA_TOKEN": ci_token,
        "HPCSERA_CONFIG": "/nonexistent/client.json",
        "CI_COMMIT_SHA": "abc1234" + "0" * 33,
        "CI_COMMIT_SHORT_SHA": "abc1234",
        "CI_PIPELINE_URL": "https://gitlab.example.org/group/project/-/pipelines/7",
    }
    for stage in stages:
        for name, job in jobs.items():
            if job["stage"] != stage:
                continue
            log_path = tmp_path / f"{name}.stderr"
            with open(log_path, "w") as log:
                process = run_job(job, env, checkout, log)
                if name == "deploy":
                    sha256 = wait_for_digest(process, log_path)
                    decide_in_browser(page, server, sha256)
                process.communicate(timeout=300)
            stderr = log_path.read_text()
            assert process.returncode == 0, f"{name}: {stderr}"

    upload = json.loads((checkout / "upload.json").read_text())
    assert upload["state"] == "approved" and upload["sha256"] == sha256
    assert upload["commit"] == env["CI_COMMIT_SHA"]
    assert upload["description"] == env["CI_PIPELINE_URL"]
    assert [d["state"] for d in upload["deployments"]] == ["deployed"]
    deployed = json.loads((checkout / "deployed.json").read_text())
    assert deployed["greeting"] == "Hello, abc1234"
    assert deployed["version"].startswith("prepared ")
    greeting = json.loads((checkout / "greeting.json").read_text())
    assert greeting["greeting"] == "Hello, abc1234"
    assert json.loads((checkout / "result.json").read_text()) == {"slept": True}


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
