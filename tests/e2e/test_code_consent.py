"""Code consent from end to end: a real server behind a real OpenID provider,
real agent processes, and the owner deciding in headless Chromium.

Each test uses its own tag, so its uploads reach only its own agents.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests import harness
from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e

AGENT_ROLES = "GET_Job,UPDATE_JobStatus,GET_Code"
CLIENT_ROLES = "POST_Code,POST_Job,GET_JobStatus"

RUN = """#!/bin/sh
printf '{"version": "%s"}\\n' "$(cat "$(dirname "$0")/version")"
"""


def archive(version: str, prepare: str) -> bytes:
    """A function folder: `run` prints what `prepare.sh` wrote."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in (("run", RUN), ("prepare.sh", prepare)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def prepare_writing(version: str) -> str:
    return f"#!/bin/sh\necho preparing {version}\necho {version} > version\n"


class Owner:
    """alice on the SSO server: her tokens of one tag, and her browser."""

    def __init__(self, server, page, tag: str):
        self.server, self.page, self.tag = server, page, tag
        self.api = requests.Session()
        self.api.headers["Authorization"] = "Bearer " + server.token(
            "alice", CLIENT_ROLES, tag=tag
        )

    def upload(self, function: str, data: bytes, prepare: str = "prepare.sh"):
        answer = self.api.post(
            self.server.url + "/api/v1/code",
            data={"function": function, "prepare": prepare, "commit": "a1b2c3d4"},
            files={"archive": ("fn.tar.gz", data)},
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        return answer.json()

    def status(self, upload_id: str) -> dict:
        return self.api.get(
            self.server.url + f"/api/v1/code/{upload_id}", timeout=30
        ).json()

    def decide_upload(self, upload: dict, decision: str) -> None:
        log_in(self.page, self.server)
        self.page.goto(self.server.url + "/ui/requests")
        form = self.page.locator(f"form.upload[data-id='{upload['id']}']")
        shown = form.locator("code.sha256").inner_text().strip()
        assert shown == upload["sha256"]
        form.locator(f"button[value={decision}]").click()
        self.page.wait_for_url(self.server.url + "/ui/requests")

    def decide_run(self, function: str, decision: str, timeout: float = 30) -> str:
        """Decide the first run request for `function`; its executable hash."""
        log_in(self.page, self.server)
        deadline = time.monotonic() + timeout
        while True:
            self.page.goto(self.server.url + "/ui/requests")
            forms = self.page.locator("form.run", has_text=function)
            if forms.count():
                break
            assert time.monotonic() < deadline, "no run request appeared"
            time.sleep(0.3)
        shown = forms.first.locator("code.exe").inner_text().strip()
        forms.first.locator(f"button[value={decision}]").click()
        self.page.wait_for_url(self.server.url + "/ui/requests")
        return shown

    def deployment(self, upload_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = self.status(upload_id)["deployments"]
            ended = [d for d in found if d["state"] != "offered"]
            if ended:
                return ended[0]
            assert time.monotonic() < deadline, f"no deployment ended: {found}"
            time.sleep(0.3)

    def call(self, function: str, **args) -> requests.Response:
        return self.api.post(
            self.server.url + f"/alice/function/{function}", params=args, timeout=60
        )


def start_agent(owner: Owner, tmp: Path, name: str, extra: str = ""):
    functions = tmp / f"{name}-functions"
    functions.mkdir()
    config = harness.write_agent_config(
        tmp,
        owner.server,
        owner.server.token("alice", AGENT_ROLES, tag=owner.tag),
        functions,
        name=name,
        extra="[deploy]\nenabled = true\nprepare_timeout_seconds = 30\n" + extra,
    )
    return harness.start_agent(config), functions


def pinned_key(tmp: Path, pem: str) -> str:
    path = tmp / "approval-key.pem"
    path.write_text(pem)
    return f'[consent]\nmode = "all"\npublic_key_file = "{path}"\nwait_seconds = 60\n'


@pytest.fixture
def sso_alice(sso, page):
    server, _ = sso
    log_in(page, server)  # alice exists once she has logged in
    return server, page


def test_uploaded_code_runs_only_after_approval_and_a_failed_update_keeps_it(
    sso_alice, tmp_path
):
    server, page = sso_alice
    owner = Owner(server, page, "code-flow")
    agent, functions = start_agent(owner, tmp_path, "deployer")
    try:
        first = archive("v1", prepare_writing("v1"))
        upload = owner.upload("greet", first)
        assert upload["sha256"] == hashlib.sha256(first).hexdigest()
        assert upload["state"] == "pending"
        time.sleep(1.0)  # the agent long-polls meanwhile: nothing may reach it
        assert owner.status(upload["id"])["deployments"] == []
        assert not (functions / "greet").exists()
        assert owner.call("greet").status_code == 404

        owner.decide_upload(upload, "approve")
        deployed = owner.deployment(upload["id"])
        assert deployed["state"] == "deployed", deployed
        assert "preparing v1" in deployed["log_tail"]
        answer = owner.call("greet")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"version": "v1"}

        broken = archive("v2", "#!/bin/sh\necho cannot build v2 >&2\nexit 4\n")
        update = owner.upload("greet", broken)
        owner.decide_upload(update, "approve")
        failed = owner.deployment(update["id"])
        assert failed["state"] == "failed"
        assert "cannot build v2" in failed["log_tail"]
        assert owner.call("greet").json() == {"version": "v1"}
    finally:
        agent.stop()


def test_denied_code_is_deleted_and_never_reaches_the_agent(sso_alice, tmp_path):
    server, page = sso_alice
    owner = Owner(server, page, "code-denied")
    agent, functions = start_agent(owner, tmp_path, "denier")
    try:
        upload = owner.upload("nope", archive("v1", prepare_writing("v1")))
        owner.decide_upload(upload, "deny")
        status = owner.status(upload["id"])
        assert status["state"] == "denied"
        assert "deleted" in status["reason"]
        time.sleep(1.0)
        assert owner.status(upload["id"])["deployments"] == []
        assert not (functions / "nope").exists()
    finally:
        agent.stop()


def test_bytes_changed_on_the_server_after_approval_are_not_deployed(
    sso_alice, tmp_path
):
    server, page = sso_alice
    owner = Owner(server, page, "code-tampered")
    approved = archive("v1", prepare_writing("v1"))
    upload = owner.upload("tampered", approved)
    owner.decide_upload(upload, "approve")
    # Someone with database access swaps the approved bytes before any agent
    # fetched them (same length, one byte changed); the agent checks them
    # against the approved digest.
    swapped = approved[:-5] + bytes([approved[-5] ^ 0xFF]) + approved[-4:]
    server.manage(
        "shell",
        "-c",
        "from consent.models import CodeUpload; "
        f"CodeUpload.objects.filter(id='{upload['id']}')"
        f".update(content=bytes.fromhex('{swapped.hex()}'))",
    )
    agent, functions = start_agent(owner, tmp_path, "careful")
    try:
        failed = owner.deployment(upload["id"])
        assert failed["state"] == "failed"
        assert "SHA-256" in failed["reason"]
        assert not (functions / "tampered").exists()
        assert not list((functions / ".hpcsera" / "versions").glob("*"))
    finally:
        agent.stop()


def test_agent_side_consent_runs_only_what_the_owner_approved(sso_alice, tmp_path):
    server, page = sso_alice
    owner = Owner(server, page, "run-consent")
    public_pem = server.manage("approval_key")
    agent, functions = start_agent(
        owner, tmp_path, "asking", pinned_key(tmp_path, public_pem)
    )
    marker = tmp_path / "ran"
    harness.install_function(functions, "touch", f"#!/bin/sh\ntouch {marker}\n")
    try:
        wait_offered(owner, "touch")
        denied = owner.api.post(
            server.url + "/alice/async-function/touch", timeout=30
        ).json()
        owner.decide_run("touch", "deny")
        status = wait_terminal(owner, denied["status_url"])
        assert status["state"] == "failed"
        assert "not approved: denied by the user" in status["reason"]
        assert not marker.exists()

        approved = owner.api.post(
            server.url + "/alice/async-function/touch", timeout=30
        ).json()
        shown = owner.decide_run("touch", "approve")
        assert shown == hashlib.sha256((functions / "touch").read_bytes()).hexdigest()
        assert wait_terminal(owner, approved["status_url"])["state"] == "succeeded"
        assert marker.exists()
    finally:
        agent.stop()


def test_an_approval_not_signed_by_the_pinned_key_runs_nothing(sso_alice, tmp_path):
    server, page = sso_alice
    owner = Owner(server, page, "run-forged")
    # The agent pins another key than the server signs with: every approval
    # it gets is, to it, a forgery.
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    agent, functions = start_agent(owner, tmp_path, "pinned", pinned_key(tmp_path, pem))
    marker = tmp_path / "ran"
    harness.install_function(functions, "touch", f"#!/bin/sh\ntouch {marker}\n")
    try:
        wait_offered(owner, "touch")
        call = owner.api.post(
            server.url + "/alice/async-function/touch", timeout=30
        ).json()
        owner.decide_run("touch", "approve")
        status = wait_terminal(owner, call["status_url"])
        assert status["state"] == "failed"
        assert "signature" in status["reason"]
        assert not marker.exists()
    finally:
        agent.stop()


def wait_offered(owner: Owner, function: str, timeout: float = 30) -> None:
    """Until an agent of the owner's tag offers `function`."""
    deadline = time.monotonic() + timeout
    while True:
        agents = owner.api.get(owner.server.url + "/api/v1/agents", timeout=30)
        names = {f["name"] for a in agents.json()["agents"] for f in a["functions"]}
        if function in names:
            return
        assert time.monotonic() < deadline, f"{function} is not offered: {names}"
        time.sleep(0.2)


def wait_terminal(owner: Owner, status_url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = owner.api.get(owner.server.url + status_url, timeout=30).json()
        if status["terminal"] or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def test_the_inbox_shows_what_the_upload_holds(sso_alice, tmp_path):
    server, page = sso_alice
    owner = Owner(server, page, "code-shown")
    upload = owner.upload("shown", archive("v1", prepare_writing("v1")))
    page.goto(server.url + "/ui/requests")
    form = page.locator(f"form.upload[data-id='{upload['id']}']")
    text = form.inner_text()
    assert upload["sha256"] in text
    assert "prepare.sh" in text and "run" in text
    assert "a1b2c3d4" in text and "127.0.0.1" in text
    assert json.dumps(upload["size"]) in text
