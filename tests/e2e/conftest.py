from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from tests import harness

AGENT_ROLES = "GET_Job,UPDATE_JobStatus"
CLIENT_ROLES = "POST_Job,GET_JobStatus"

FUNCTIONS = {
    "hello": """#!/usr/bin/env python3
import json, os
print(json.dumps({"greeting": "Hello, " + os.environ.get("HPCSERA_ARG_name", "world"),
                  "slurm_job": os.environ.get("SLURM_JOB_ID")}))
""",
    "text": "#!/bin/sh\necho plain words\n",
    "fail3": "#!/bin/sh\necho about to fail >&2\nexit 3\n",
    "sleeper": """#!/usr/bin/env python3
import os, time
time.sleep(float(os.environ.get("HPCSERA_ARG_seconds", "1")))
print('{"slept": true}')
""",
    "fail_later": "#!/bin/sh\nsleep 3\necho about to fail >&2\nexit 3\n",
    "echo_input": """#!/usr/bin/env python3
import sys, os
sys.stdout.write(open(os.environ["HPCSERA_INPUT_FILE"]).read())
""",
}
SLURM_FUNCTIONS = ("hello", "fail3", "sleeper", "fail_later")


def slurm_required() -> bool:
    return os.environ.get("HPCSERA_REQUIRE_SLURM") == "1"


@pytest.fixture(scope="session")
def slurm() -> None:
    if harness.slurm_available():
        return
    if slurm_required():
        pytest.fail(
            "Slurm is required (HPCSERA_REQUIRE_SLURM=1) but not running; "
            "start it with scripts/slurm-local-start.sh"
        )
    pytest.skip("no Slurm cluster; start one with scripts/slurm-local-start.sh")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    srv = harness.start_server(tmp, HPCSERA_SYNC_WAIT_SECONDS="10")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def alice_tokens(server):
    return {
        "agent": server.token("alice", AGENT_ROLES),
        "client": server.token("alice", CLIENT_ROLES),
        "reader": server.token("alice", "GET_JobStatus"),
    }


@pytest.fixture(scope="session")
def functions_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("functions")
    for name, source in FUNCTIONS.items():
        harness.install_function(folder, name, source)
        if name in SLURM_FUNCTIONS:
            harness.install_function(folder, f"slurm_{name}", source)
    return folder


@pytest.fixture(scope="session")
def agent(server, alice_tokens, functions_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent")
    slurm_table = "".join(
        f'[functions.slurm_{name}]\nrunner = "slurm"\n' for name in SLURM_FUNCTIONS
    )
    config = harness.write_agent_config(
        tmp,
        server,
        alice_tokens["agent"],
        functions_dir,
        name="cluster",
        extra="max_parallel = 8\n[slurm]\npoll_seconds = 0.5\n" + slurm_table,
    )
    process = harness.start_agent(config)
    yield process
    process.stop()


class Api:
    def __init__(self, url: str, token: str):
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.post(self.url + path, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.url + path, timeout=60, **kwargs)

    def wait_terminal(self, status_url: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.get(status_url).json()
            if status["terminal"] or time.monotonic() > deadline:
                return status
            time.sleep(0.2)


@pytest.fixture(scope="session")
def api(server, alice_tokens) -> Api:
    return Api(server.url, alice_tokens["client"])


CHROMIUM = os.environ.get("HPCSERA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALICE = ("alice", "correct-horse-alice")


@pytest.fixture(scope="session")
def sso(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sso")
    port = harness.free_port()
    provider = harness.start_provider(
        tmp, f"http://127.0.0.1:{port}/oidc/callback/", [":".join(ALICE)]
    )
    server = harness.start_server(tmp, port=port, **provider.rp_settings())
    yield server, provider
    server.stop()
    provider.stop()


@pytest.fixture(scope="session")
def page(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is needed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        context = browser.new_context()
        yield context.new_page()
        browser.close()


def log_in(page, server) -> None:
    """Log alice in through the provider, unless this browser already is."""
    page.goto(server.url + "/ui/")
    if "/ui/login" not in page.url:
        return
    page.click("#sso-login")
    page.fill("input[name=username]", ALICE[0])
    page.fill("input[name=password]", ALICE[1])
    page.click("#op-login")
    page.wait_for_url(server.url + "/ui/tokens")
