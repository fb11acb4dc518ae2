"""The SDK's decoupled login against a scripted authorization server: what it
signs and sends, how it paces its polls, how a refusal ends it."""

from __future__ import annotations

import sys
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hpcsera_client.login import request_token

from hpcsera_client import AccessDenied, Client, LoginExpired, LoginUnavailable
from tests.client.scripted import Answer


@pytest.fixture
def key(tmp_path):
    private = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "client.key"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, private.public_key()


def metadata(url: str) -> Answer:
    return Answer(
        200,
        {
            "issuer": "https://hpcsera.test",
            "backchannel_authentication_endpoint": url + "/oauth/bc-authorize",
            "token_endpoint": url + "/oauth/token",
        },
    )


STARTED = Answer(200, {"auth_req_id": "r1", "expires_in": 300, "interval": 2})
PENDING = Answer(400, {"error": "authorization_pending"})


def form(seen) -> dict:
    return {k: v[0] for k, v in parse_qs(seen.body.decode()).items()}


def test_it_polls_at_the_interval_slows_down_and_returns_the_token(
    scripted, sleeps, key
):
    path, public = key
    issued = {"access_token": "hpcsera_t_s", "expires_in": 3600, "scope": "POST_Job"}
    scripted.then(
        metadata(scripted.url),
        STARTED,
        PENDING,
        Answer(400, {"error": "slow_down"}),
        PENDING,
        Answer(200, {**issued, "tag": "ci"}),
    )
    codes: list[str] = []

    grant = request_token(
        scripted.url, "cid", path, "alice", "POST_Job", tag="ci",
        on_code=codes.append, sleep=sleeps,
    )  # fmt: skip

    assert grant.token == "hpcsera_t_s" and grant.tag == "ci"
    assert sleeps == [2, 2, 7, 7]
    asked = form(scripted.seen[1])
    assert asked["login_hint"] == "alice" and asked["binding_message"] == codes[0]
    claims = jwt.decode(
        form(scripted.seen[2])["client_assertion"],
        public,
        algorithms=["EdDSA"],
        audience="https://hpcsera.test",
    )
    assert claims["iss"] == claims["sub"] == "cid"
    assert form(scripted.seen[2])["auth_req_id"] == "r1"


def test_a_denied_request_raises_access_denied(scripted, sleeps, key):
    scripted.then(
        metadata(scripted.url),
        STARTED,
        Answer(400, {"error": "access_denied", "error_description": "no"}),
    )
    with pytest.raises(AccessDenied) as raised:
        request_token(
            scripted.url, "cid", key[0], "alice", "POST_Job", on_code=print,
            sleep=sleeps,
        )  # fmt: skip
    assert raised.value.code == "access_denied"


def test_an_expired_request_raises_login_expired(scripted, sleeps, key):
    scripted.then(
        metadata(scripted.url), STARTED, Answer(400, {"error": "expired_token"})
    )
    with pytest.raises(LoginExpired):
        Client.login(
            scripted.url, "cid", key[0], "alice", "POST_Job", on_code=print,
            sleep=sleeps,
        )  # fmt: skip


def test_without_pyjwt_it_says_which_extra_to_install(monkeypatch, scripted, key):
    monkeypatch.setitem(sys.modules, "jwt", None)
    with pytest.raises(LoginUnavailable) as raised:
        request_token(scripted.url, "cid", key[0], "alice", "POST_Job")
    assert "hpcsera-client[login]" in str(raised.value)
    assert scripted.seen == []
