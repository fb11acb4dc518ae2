"""Schemathesis over the whole published schema against a real server.

Every operation of /api/schema is called with generated input (valid and
invalid) and a real token holding every role but POST_Code; no answer may be a
5xx. The number of examples per operation is bounded and the server's long
waits are shortened, so the run stays short.

The run goes through the `schemathesis` command: its pytest plugin (4.32)
reads a private attribute that pytest 9 no longer has (`request.node._nodeid`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests import harness

pytestmark = pytest.mark.e2e

SCHEMATHESIS = str(Path(harness.PYTHON).parent / "schemathesis")
ROLES = "GET_JobStatus,UPDATE_JobStatus,GET_Job,POST_Job,UPDATE_Job,DELETE_Job"
EXAMPLES = "30"


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory):
    server = harness.start_server(
        tmp_path_factory.mktemp("fuzzed"),
        HPCSERA_SYNC_WAIT_SECONDS="0.2",
        HPCSERA_CLAIM_WAIT_SECONDS="0.2",
    )
    yield server
    server.stop()


def test_no_operation_of_the_schema_answers_a_server_error(fuzzed_server, tmp_path):
    # TODO: operations on one object (a job, a call, an agent) mostly meet 404
    # with generated ids; a schemathesis config naming real ids would take the
    # run deeper into them.
    token = fuzzed_server.token("alice", ROLES)
    done = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            fuzzed_server.url + "/api/schema",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            EXAMPLES,
            "--seed",
            "8",
            "--workers",
            "2",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
            "--header",
            f"Authorization: Bearer {token}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
    )
    summary = done.stdout[-4000:]
    assert done.returncode == 0, summary
    counted = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert counted and counted.group(1) == counted.group(2), summary
    assert int(counted.group(1)) > 100, summary
    server_log = fuzzed_server.log.read_text()
    assert "Traceback" not in server_log, server_log[-4000:]


def test_the_schema_and_its_viewer_are_served(fuzzed_server):
    schema = requests.get(fuzzed_server.url + "/api/schema?format=json", timeout=10)
    assert {
        "/api/v1/capabilities",
        "/api/v1/calls/{call_id}",
        "/api/v1/jobs",
        "/{user}/function/{name}",
        "/api/agent/v1/agents/{agent_id}/claim",
    } <= set(schema.json()["paths"])
    docs = requests.get(fuzzed_server.url + "/api/docs/", timeout=10)
    assert docs.status_code == 200 and "swagger-ui" in docs.text
