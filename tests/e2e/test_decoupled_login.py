"""The decoupled login end to end: a real agent process asks for a token, the
user approves it in headless Chromium (narrowing the roles), the agent stores
the token and serves a call with it."""

from __future__ import annotations

import os
import queue
import re
import stat
import subprocess
import threading
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hpcsera_client import Client
from tests import harness
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e


def test_an_agent_logs_in_by_the_users_approval_and_serves_calls(
    sso, page, functions_dir, tmp_path
):
    server, _ = sso
    key = tmp_path / "agent.key"
    token_file = tmp_path / "agent.token"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'server = "{server.url}"\ntoken_file = "{token_file}"\nsite = "laptop"\n'
        f'functions_dir = "{functions_dir}"\nstate_dir = "{tmp_path / "state"}"\n'
        "claim_wait_seconds = 5\n"
    )
    init = subprocess.run(
        [harness.AGENT, "-c", str(config), "init", "--key", str(key)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "BEGIN PUBLIC KEY" in init.stdout
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600

    log_in(page, server)
    page.goto(server.url + "/ui/clients")
    page.fill("input[name=name]", "laptop agent")
    page.fill("textarea[name=public_key]", init.stdout)
    page.click("#new-client-form button[type=submit]")
    client_id = page.inner_text("#client-id").strip()

    with open(config, "a") as handle:
        handle.write(
            f'\n[login]\nclient_id = "{client_id}"\nkey_file = "{key}"\n'
            'user = "alice"\nroles = "GET_Job UPDATE_JobStatus POST_Job"\n'
        )
    login = subprocess.Popen(
        [harness.AGENT, "-c", str(config), "login"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    code = None
    for line in login.stdout:
        found = re.search(r"code: (HPC [0-9A-F]{6})", line)
        if found:
            code = found.group(1)
            break
    assert code, "the agent should show the binding message"

    page.goto(server.url + "/ui/requests")
    request = page.locator("form.request", has_text=code)
    request.locator("input[value=POST_Job]").uncheck()
    request.locator("button[value=approve]").click()
    assert login.wait(timeout=60) == 0, login.stdout.read()
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600

    secret = token_file.read_text().strip()
    seen = requests.post(
        server.url + "/oauth/introspect",
        data={"token": secret},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert seen.json()["scope"] == "GET_Job UPDATE_JobStatus"

    agent = harness.start_agent(config)
    try:
        client_token = server.token("alice", "POST_Job")
        deadline = time.monotonic() + 20
        while True:
            answer = requests.post(
                server.url + "/alice/function/hello",
                headers={"Authorization": f"Bearer {client_token}"},
                timeout=30,
            )
            if answer.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.status_code == 200 and answer.json()["greeting"]
    finally:
        agent.stop()


def test_the_sdk_logs_in_by_the_users_approval(sso, page, tmp_path):
    server, _ = sso
    private = ec.generate_private_key(ec.SECP256R1())
    key = tmp_path / "sdk.key"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    log_in(page, server)
    page.goto(server.url + "/ui/clients")
    page.fill("input[name=name]", "notebook")
    page.fill("textarea[name=public_key]", public.decode())
    page.click("#new-client-form button[type=submit]")
    client_id = page.inner_text("#client-id").strip()

    codes: queue.Queue = queue.Queue()
    outcome: dict = {}

    def log_in_sdk() -> None:
        try:
            outcome["client"] = Client.login(
                server.url, client_id, key, "alice", "GET_JobStatus POST_Job",
                tag="notebook", on_code=codes.put,
            )  # fmt: skip
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=log_in_sdk)
    worker.start()
    code = codes.get(timeout=30)
    page.goto(server.url + "/ui/requests")
    page.locator("form.request", has_text=code).locator("button[value=approve]").click()
    worker.join(timeout=60)

    assert "error" not in outcome, outcome.get("error")
    token = outcome["client"].capabilities()["token"]
    assert (token["user"], token["tag"]) == ("alice", "notebook")
    assert token["roles"] == ["GET_JobStatus", "POST_Job"]
