"""The agent's consent step (hpcsera_agent.consent) and the [consent] config.

A fake server answers approval requests the way the real one may: approved
(really signed, by consent.signing with a test key), denied, forged, or never.
Functions touch a marker file, so each test sees whether anything ran.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hpcsera_agent.approval import NotApproved, file_sha256
from hpcsera_agent.client import Refused, ServerUnavailable
from hpcsera_agent.config import ConfigError, ConsentSettings, parse
from hpcsera_agent.service import Agent

from consent import signing
from hpcsera_agent import approval, consent

CALL = "0b9c7f40-0000-4000-8000-0000000000c1"


class FakeServer:
    """The agent API for one agent, with approvals answered as `answer` says."""

    def __init__(self, answer: str = "approved", calls=()):
        self.answer = answer
        self.queue = list(calls)
        self.calls = {c["id"]: c for c in calls}
        self.asked: list[dict] = []
        self.reports: list[tuple[str, dict]] = []
        self.unavailable = 0  # how many requests fail before one gets through

    def register(self, site, capabilities, functions):
        return {"agent_id": "agent-1", "lease_seconds": 30}

    def claim(self, agent_id, max_calls, wait, chain=False):
        taken, self.queue = self.queue[:max_calls], self.queue[max_calls:]
        return taken

    def heartbeat(self, agent_id, call_ids, complete=False):
        return {"released": []}

    def report(self, agent_id, call_id, report):
        self.reports.append((call_id, report))
        return {"id": call_id, "state": report["state"]}

    def approval_request(self, agent_id, body):
        if self.unavailable:
            self.unavailable -= 1
            raise ServerUnavailable("down")
        call = self.calls.get(body["subject_id"])
        if call is not None:
            # The real server recomputes the hash from its own record.
            ours = signing.arguments_sha256_for_call(call["args"], call.get("input"))
            if ours != body["arguments_sha256"]:
                raise Refused(400, "arguments_mismatch", "arguments differ")
        self.asked.append(body)
        return {"id": f"ap-{len(self.asked)}", "state": "pending"}

    def approval_get(self, agent_id, approval_id, wait):
        body = self.asked[int(approval_id.split("-")[1]) - 1]
        if self.answer in ("denied", "expired", "pending"):
            return {"id": approval_id, "state": self.answer, "reason": ""}
        statement = self._statement(agent_id, approval_id, body)
        if self.answer == "approved":
            signed = signing.statement_sign(statement)
        elif self.answer == "replayed":
            signed = signing.statement_sign(dict(statement, nonce="00" * 16))
        elif self.answer == "unsigned":
            signed = {"statement": statement}
        else:  # forged: signed, but not with the server's key
            other = ed25519.Ed25519PrivateKey.generate()
            raw = other.sign(approval.DOMAIN + approval.canonical(statement))
            signed = {"statement": statement, "signature": signing._b64url(raw)}
        return {"id": approval_id, "state": "approved", "approval": signed}

    def _statement(self, agent_id: str, approval_id: str, body: dict) -> dict:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
        return {
            "v": 1,
            "approval_id": approval_id,
            "decision": "approved",
            "agent_id": agent_id,
            "site": "default",
            "approved_by": "alice",
            "approved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "expires_at": expires,
            **{k: body[k] for k in consent_fields()},
        }

    def final(self, call_id: str) -> dict:
        finals = [
            r for c, r in self.reports if c == call_id and r["state"] != "running"
        ]
        assert len(finals) == 1, self.reports
        return finals[0]


def consent_fields() -> tuple[str, ...]:
    return (
        "purpose",
        "subject_id",
        "function",
        "executable_sha256",
        "arguments_sha256",
        "nonce",
    )


@pytest.fixture
def pinned_file(tmp_path, settings) -> Path:
    """The server's key (used by consent.signing) and its public half, pinned."""
    key = tmp_path / "server-key.pem"
    signing.key_file_create(key)
    settings.HPCSERA = {**settings.HPCSERA, "APPROVAL_KEY_FILE": str(key)}
    pinned = tmp_path / "pinned.pem"
    pinned.write_text(signing.approval_public_pem())
    return pinned


def make_agent(tmp_path: Path, server: FakeServer, mode: str, pinned: Path) -> Agent:
    raw = {
        "server": "http://127.0.0.1:9",
        "token": "t",
        "functions_dir": str(tmp_path / "functions"),
        "state_dir": str(tmp_path / "state"),
        "consent": {"mode": mode, "public_key_file": str(pinned), "wait_seconds": 5},
    }
    agent = Agent(parse(raw), server)
    agent.register()
    return agent


def marker_function(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho ran > '{marker}'\n")
    path.chmod(0o755)


def deployed_function(tmp_path: Path, name: str, marker: Path) -> Path:
    """`functions/<name>` as a deployment installs it: a symlink into versions."""
    functions = tmp_path / "functions"
    version = functions / ".hpcsera" / "versions" / name / "d1"
    marker_function(version / "run", marker)
    (functions / name).symlink_to(Path(".hpcsera") / "versions" / name / "d1")
    return version / "run"


def call(name: str, call_id: str = CALL, **fields) -> dict:
    body = {"id": call_id, "job_id": "j1", "function": name, "mode": "sync"}
    return {**body, "args": {"who": "Zoë"}, "input": None, **fields}


def serve(agent: Agent) -> None:
    agent.claim_step(0)
    agent._pool.shutdown(wait=True)


def test_an_approved_call_runs(tmp_path, pinned_file):
    marker = tmp_path / "ran"
    marker_function(tmp_path / "functions" / "hello", marker)
    server = FakeServer("approved", [call("hello", input="ünïcode")])
    agent = make_agent(tmp_path, server, "all", pinned_file)

    serve(agent)

    assert server.final(CALL)["state"] == "succeeded"
    assert marker.read_text() == "ran\n"
    [asked] = server.asked
    assert asked["purpose"] == "call"
    assert asked["subject_id"] == CALL
    assert asked["executable_sha256"] == file_sha256(tmp_path / "functions" / "hello")
    assert len(asked["nonce"]) == 32
    int(asked["nonce"], 16)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("denied", "not approved: denied by the user"),
        ("expired", "not approved: the user did not decide in time (expired)"),
        ("forged", "not approved: the signature is not valid under the pinned key"),
        ("unsigned", "not approved: the approval is not signed"),
        ("replayed", "not approved: the approval's nonce is not the one asked for"),
    ],
)
def test_a_call_without_a_valid_approval_fails_and_nothing_runs(
    tmp_path, pinned_file, answer, reason
):
    marker = tmp_path / "ran"
    marker_function(tmp_path / "functions" / "hello", marker)
    server = FakeServer(answer, [call("hello")])
    agent = make_agent(tmp_path, server, "all", pinned_file)

    serve(agent)

    final = server.final(CALL)
    assert final["state"] == "failed"
    assert final["reason"] == reason
    assert not marker.exists()
    assert list(agent.journal.entries()) == []


def test_uploaded_mode_asks_only_for_functions_a_deployment_installed(
    tmp_path, pinned_file
):
    handmade, deployed, linked = tmp_path / "m1", tmp_path / "m2", tmp_path / "m3"
    marker_function(tmp_path / "functions" / "handmade", handmade)
    run = deployed_function(tmp_path, "deployed", deployed)
    # A symlink made by hand to somewhere else is not a deployment.
    marker_function(tmp_path / "elsewhere" / "run", linked)
    (tmp_path / "functions" / "linked").symlink_to(tmp_path / "elsewhere")
    calls = [call("handmade", "c-1"), call("deployed", "c-2"), call("linked", "c-3")]
    server = FakeServer("approved", calls)
    agent = make_agent(tmp_path, server, "uploaded", pinned_file)

    serve(agent)

    assert [a["subject_id"] for a in server.asked] == ["c-2"]
    assert server.asked[0]["executable_sha256"] == file_sha256(run)
    assert all(server.final(c)["state"] == "succeeded" for c in ("c-1", "c-2", "c-3"))
    assert handmade.exists() and deployed.exists() and linked.exists()


def test_uploaded_mode_refuses_an_unapproved_deployed_function(tmp_path, pinned_file):
    marker = tmp_path / "ran"
    deployed_function(tmp_path, "deployed", marker)
    server = FakeServer("denied", [call("deployed")])
    agent = make_agent(tmp_path, server, "uploaded", pinned_file)

    serve(agent)

    assert server.final(CALL)["reason"] == "not approved: denied by the user"
    assert not marker.exists()


def test_mode_off_asks_for_nothing(tmp_path, pinned_file):
    marker = tmp_path / "ran"
    deployed_function(tmp_path, "deployed", marker)
    server = FakeServer("denied", [call("deployed")])
    agent = make_agent(tmp_path, server, "off", pinned_file)

    serve(agent)

    assert server.asked == []
    assert marker.exists()


def obtain(server: FakeServer, executable: Path, pinned: Path, **changes) -> None:
    settings = ConsentSettings("all", pinned, changes.pop("wait_seconds", 5.0))
    options = {
        "purpose": "call",
        "subject_id": "call-x",
        "function": "hello",
        "executable": executable,
        "arguments_sha256": hashlib.sha256(b"{}").hexdigest(),
        "stop": threading.Event(),
        **changes,
    }
    consent.obtain(
        server,
        "agent-1",
        "default",
        approval.load_public_key(pinned),
        settings,
        **options,
    )


def test_obtain_returns_once_the_signed_approval_matches(tmp_path, pinned_file):
    executable = tmp_path / "run"
    executable.write_text("#!/bin/sh\n")
    server = FakeServer("approved")
    server.unavailable = 1  # the first request is lost: it is sent again

    obtain(server, executable, pinned_file)

    assert len(server.asked) == 1


def test_obtain_gives_up_when_nobody_decides_in_time(tmp_path, pinned_file):
    executable = tmp_path / "run"
    executable.write_text("#!/bin/sh\n")

    started = time.monotonic()
    with pytest.raises(NotApproved, match="no decision within 1 s"):
        obtain(FakeServer("pending"), executable, pinned_file, wait_seconds=1.0)
    assert time.monotonic() - started < 3


def test_obtain_stops_waiting_when_the_agent_stops(tmp_path, pinned_file):
    executable = tmp_path / "run"
    executable.write_text("#!/bin/sh\n")
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()

    started = time.monotonic()
    with pytest.raises(NotApproved, match="agent stopped"):
        obtain(FakeServer("pending"), executable, pinned_file, stop=stop)
    assert time.monotonic() - started < 2


def test_a_call_left_waiting_by_a_stopping_agent_stays_journaled(tmp_path, pinned_file):
    marker = tmp_path / "ran"
    marker_function(tmp_path / "functions" / "hello", marker)
    server = FakeServer("pending", [call("hello")])
    agent = make_agent(tmp_path, server, "all", pinned_file)
    threading.Timer(0.2, agent.stop.set).start()

    serve(agent)

    assert server.reports == []
    assert [e["phase"] for e in agent.journal.entries()] == ["claimed"]
    assert not marker.exists()


def test_obtain_refuses_when_the_server_refuses(tmp_path, pinned_file):
    executable = tmp_path / "run"
    executable.write_text("#!/bin/sh\n")
    server = FakeServer("approved", [call("hello", "call-x")])

    with pytest.raises(NotApproved, match="refused the request: arguments differ"):
        obtain(server, executable, pinned_file)


def config_with(tmp_path: Path, consent_table: dict):
    return parse(
        {
            "server": "http://127.0.0.1:9",
            "token": "t",
            "functions_dir": str(tmp_path / "functions"),
            "state_dir": str(tmp_path / "state"),
            "consent": consent_table,
        }
    )


def test_consent_is_off_unless_configured(tmp_path):
    config = config_with(tmp_path, {})

    assert config.consent.mode == "off"
    assert config.consent.public_key_file is None
    assert config.consent.wait_seconds == 600.0


def test_a_consent_mode_needs_a_public_key_file(tmp_path):
    with pytest.raises(ConfigError, match=r"\[consent\] mode uploaded needs"):
        config_with(tmp_path, {"mode": "uploaded"})


def test_the_pinned_key_is_loaded_with_the_config(tmp_path, pinned_file):
    config = config_with(
        tmp_path,
        {"mode": "all", "public_key_file": str(pinned_file), "wait_seconds": 30},
    )

    assert isinstance(config.consent.public_key, ed25519.Ed25519PublicKey)
    assert config.consent.wait_seconds == 30.0


def test_a_pinned_key_that_is_not_ed25519_is_refused(tmp_path):
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )

    with pytest.raises(ConfigError, match="is not an Ed25519 key"):
        config_with(tmp_path, {"mode": "all", "public_key_file": str(path)})


def test_a_pinned_private_key_or_missing_file_is_refused(tmp_path):
    private = tmp_path / "private.pem"
    signing.key_file_create(private)

    with pytest.raises(ConfigError, match="holds a private key"):
        config_with(tmp_path, {"mode": "all", "public_key_file": str(private)})
    with pytest.raises(ConfigError, match="cannot be read"):
        missing = str(tmp_path / "missing.pem")
        config_with(tmp_path, {"mode": "all", "public_key_file": missing})


def test_an_unknown_consent_mode_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="mode must be one of off, uploaded, all"):
        config_with(tmp_path, {"mode": "sometimes"})
