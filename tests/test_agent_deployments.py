"""The agent's side of deployments, driven step by step against a fake server:
asking only when its owner enabled it, retrying an unavailable server,
offering the function before reporting it, and asking first when consent is on."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from pathlib import Path

from hpcsera_agent.client import ServerUnavailable
from hpcsera_agent.config import parse
from hpcsera_agent.service import Agent

RUN = "#!/bin/sh\necho '{\"v\": 1}'\n"


def archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in (("run", RUN), ("prepare.sh", "#!/bin/sh\necho built\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FakeServer:
    def __init__(self, data: bytes, failures: int = 0):
        self.data = data
        self.failures = failures
        self.claims: list[dict] = []
        self.reports: list[tuple[str, dict]] = []
        self.registered: list[list[str]] = []
        self.last_cancel: list = []
        self.last_deploy: list = []
        self.offer = {
            "id": "dep-1",
            "upload_id": "up-1",
            "function": "greet",
            "format": "tar.gz",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "prepare": "prepare.sh",
            "commit": "",
        }

    def register(self, site, capabilities, functions):
        self.registered.append(sorted(f["name"] for f in functions))
        return {"agent_id": "agent-1", "lease_seconds": 30}

    def claim(self, agent_id, max_calls, wait, chain=False, deploy=False):
        self.claims.append({"deploy": deploy})
        self.last_deploy = [self.offer] if deploy else []
        return []

    def deployment_download(self, agent_id, deployment_id, target, max_bytes):
        if self.failures:
            self.failures -= 1
            raise ServerUnavailable("down")
        Path(target).write_bytes(self.data[: max_bytes + 1])

    def deployment_report(self, agent_id, deployment_id, report):
        # What the agent offered when it reported: "deployed" means callable.
        self.reports.append((deployment_id, dict(report, offered=self.registered[-1])))
        return {"id": deployment_id, "state": report["state"]}


def agent_with(tmp_path: Path, server: FakeServer, **extra) -> Agent:
    raw = {
        "server": "http://127.0.0.1:9",
        "token": "t",
        "functions_dir": str(tmp_path / "functions"),
        "state_dir": str(tmp_path / "state"),
        **extra,
    }
    (tmp_path / "functions").mkdir()
    (tmp_path / "state").mkdir()
    return Agent(parse(raw), client=server)


def settle(agent: Agent) -> None:
    agent._deployer.submit(lambda: None).result(timeout=30)


def test_an_agent_without_deploy_enabled_never_asks_for_code(tmp_path):
    server = FakeServer(archive())
    agent = agent_with(tmp_path, server)

    agent.claim_step(0)

    assert server.claims == [{"deploy": False}]
    assert server.reports == []
    assert not (tmp_path / "functions" / "greet").exists()


def test_an_offer_is_installed_then_offered_then_reported(tmp_path):
    server = FakeServer(archive())
    agent = agent_with(tmp_path, server, deploy={"enabled": True})

    agent.claim_step(0)
    settle(agent)

    [(deployment_id, report)] = server.reports
    assert deployment_id == "dep-1" and report["state"] == "deployed"
    assert "built" in report["log_tail"]
    assert report["offered"] == ["greet"]
    assert not list((tmp_path / "state" / "downloads").iterdir())


def test_an_unavailable_server_is_retried_and_the_deployment_still_lands(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("hpcsera_agent.service.backoff", lambda attempt: 0.0)
    server = FakeServer(archive(), failures=2)
    agent = agent_with(tmp_path, server, deploy={"enabled": True})

    agent.claim_step(0)
    settle(agent)

    assert [r["state"] for _, r in server.reports] == ["deployed"]


def test_bytes_longer_than_approved_are_refused_before_unpacking(tmp_path):
    server = FakeServer(archive())
    server.data = server.data + b"more"
    agent = agent_with(tmp_path, server, deploy={"enabled": True})

    agent.claim_step(0)
    settle(agent)

    [(_, report)] = server.reports
    assert report["state"] == "failed"
    assert not (tmp_path / "functions" / "greet").exists()


def test_a_stopping_agent_does_not_report_a_deployment_it_gave_up_waiting_on(
    tmp_path,
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "pinned.pem"
    key.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    server = FakeServer(archive())
    asked = threading.Event()

    def approval_request(agent_id, body):
        asked.set()
        return {"id": "a-1", "state": "pending"}

    def approval_get(agent_id, approval_id, wait):
        agent.stop.wait(0.05)
        return {"id": "a-1", "state": "pending"}

    server.approval_request = approval_request
    server.approval_get = approval_get
    agent = agent_with(
        tmp_path,
        server,
        deploy={"enabled": True},
        consent={"mode": "uploaded", "public_key_file": str(key)},
    )

    agent.claim_step(0)
    assert asked.wait(10)
    agent.stop.set()
    settle(agent)

    assert server.reports == []
    assert not (tmp_path / "functions" / "greet").exists()


def test_an_agent_says_when_its_token_cannot_fetch_code(tmp_path, caplog):
    server = FakeServer(archive())
    server.register = lambda site, capabilities, functions: {
        "agent_id": "agent-1",
        "lease_seconds": 30,
        "roles": ["GET_Job", "UPDATE_JobStatus"],
    }
    agent = agent_with(tmp_path, server, deploy={"enabled": True})

    agent.register()

    assert "lacks GET_Code" in caplog.text


def test_the_login_of_a_deploying_agent_asks_for_get_code(tmp_path):
    login = {"client_id": "c", "user": "alice"}
    plain = parse({"server": "http://127.0.0.1:9", "token": "t", "login": login})
    deploying = parse(
        {
            "server": "http://127.0.0.1:9",
            "token": "t",
            "login": login,
            "deploy": {"enabled": True},
        }
    )

    assert "GET_Code" not in plain.login.roles.split()
    assert "GET_Code" in deploying.login.roles.split()
