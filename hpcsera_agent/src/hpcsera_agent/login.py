"""The decoupled login: ask the server for a token, let the user approve it in
the web UI, prove to be the registered client by signing with a private key.

The private key stays on this machine (mode 0600); the server only ever holds
the public key the user pasted when registering the client.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CIBA_GRANT = "urn:openid:params:grant-type:ciba"


class LoginError(Exception):
    """The login did not produce a token; the message says why."""


@dataclass(frozen=True)
class Grant:
    token: str
    expires_at: float
    roles: str
    tag: str


def make_key_pair(path: Path) -> str:
    """Write a new Ed25519 private key (0600) to `path`; return the public PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if path.exists():
        raise LoginError(f"{path} exists already; remove it to make a new key")
    key = ed25519.Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return public_key_of(path)


def public_key_of(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )


def client_assertion(client_id: str, key_path: Path, audience: str) -> str:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = "EdDSA"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = "ES256"
    else:
        algorithm = "PS256"
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=algorithm)


class Login:
    def __init__(
        self, server: str, client_id: str, key_path: Path, timeout: float = 30.0
    ):
        self.server = server.rstrip("/")
        self.client_id = client_id
        self.key_path = key_path
        self.timeout = timeout
        self.session = requests.Session()
        self._metadata: dict | None = None

    def metadata(self) -> dict:
        if self._metadata is None:
            url = self.server + "/.well-known/oauth-authorization-server"
            try:
                answer = self.session.get(url, timeout=self.timeout)
                answer.raise_for_status()
                self._metadata = answer.json()
            except (requests.RequestException, ValueError) as exc:
                raise LoginError(f"cannot read the server's metadata: {exc}")
        return self._metadata

    def _post(self, endpoint: str, data: dict) -> tuple:
        meta = self.metadata()
        data = dict(
            data,
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=client_assertion(
                self.client_id, self.key_path, meta["issuer"]
            ),
        )
        try:
            answer = self.session.post(meta[endpoint], data=data, timeout=self.timeout)
            body = answer.json()
        except (requests.RequestException, ValueError) as exc:
            raise LoginError(f"the server did not answer properly: {exc}")
        return answer.status_code, body

    def start(self, user: str, roles: str, tag: str, binding_message: str) -> dict:
        status, body = self._post(
            "backchannel_authentication_endpoint",
            {
                "login_hint": user,
                "scope": roles,
                "tag": tag,
                "binding_message": binding_message,
            },
        )
        if status != 200:
            raise LoginError(_describe(body))
        return body

    def wait(self, request: dict, stop: threading.Event) -> Grant:
        interval = int(request.get("interval", 5))
        deadline = time.monotonic() + int(request.get("expires_in", 300))
        while not stop.wait(interval):
            if time.monotonic() > deadline:
                raise LoginError("the request expired before it was approved")
            status, body = self._post(
                "token_endpoint",
                {
                    "grant_type": CIBA_GRANT,
                    "auth_req_id": request["auth_req_id"],
                },
            )
            if status == 200:
                return Grant(
                    token=body["access_token"],
                    expires_at=time.time() + int(body.get("expires_in", 0)),
                    roles=body.get("scope", ""),
                    tag=body.get("tag", ""),
                )
            error = body.get("error")
            if error == "slow_down":
                interval = int(body.get("interval", interval + 5))
            elif error != "authorization_pending":
                raise LoginError(_describe(body))
        raise LoginError("interrupted")


def _describe(body: dict) -> str:
    return f"{body.get('error', 'error')}: {body.get('error_description', '')}"


def new_binding_message() -> str:
    """A short code the user compares in the web UI before approving."""
    return "HPC " + uuid.uuid4().hex[:6].upper()


def store_token(path: Path, grant: Grant) -> None:
    """Write the token (0600) and, beside it, when it expires; atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for target, content in (
        (path, grant.token + "\n"),
        (
            meta_path(path),
            json.dumps(
                {"expires_at": grant.expires_at, "roles": grant.roles, "tag": grant.tag}
            ),
        ),
    ):
        temporary = target.with_name(target.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.replace(temporary, target)


def meta_path(token_path: Path) -> Path:
    return token_path.with_name(token_path.name + ".json")


def token_expires_at(token_path: Path) -> float | None:
    try:
        return float(json.loads(meta_path(token_path).read_text())["expires_at"])
    except (OSError, ValueError, KeyError):
        return None


def run_login(
    login: Login,
    user: str,
    roles: str,
    tag: str,
    token_path: Path,
    stop: threading.Event,
    say: Callable[[str], None],
) -> Grant:
    message = new_binding_message()
    request = login.start(user, roles, tag, message)
    say(
        f"Approve this request in the HPCSerA web UI (Requests); it shows the "
        f"code: {message}"
    )
    grant = login.wait(request, stop)
    store_token(token_path, grant)
    say(f"Token stored in {token_path} (roles {grant.roles}, tag {grant.tag}).")
    return grant
