"""The decoupled login: a registered client asks for a token, the user approves
it in the web UI, the client polls until the token is issued.

Wire format: OpenID CIBA in poll mode, the client authenticated by a JWT it
signs with its private key (RFC 7523). The key never leaves this machine.
PyJWT and cryptography are needed only here: `pip install hpcsera-client[login]`.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from hpcsera_client.errors import HpcseraError, TransportError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CIBA_GRANT = "urn:openid:params:grant-type:ciba"
SLOW_DOWN_STEP = 5  # seconds added to the interval on `slow_down` (CIBA, 7.3)


class LoginError(HpcseraError):
    """The login produced no token; `code` is the server's OAuth error."""

    def __init__(self, code: str, description: str = ""):
        self.code = code
        self.description = description
        super().__init__(f"{code}: {description}" if description else code)


class AccessDenied(LoginError):
    """The user denied the request in the web UI."""


class LoginExpired(LoginError):
    """The request expired before the user approved it."""


class LoginUnavailable(HpcseraError):
    """PyJWT or cryptography is not installed."""


@dataclass(frozen=True)
class Grant:
    token: str
    expires_in: int
    roles: str
    tag: str


def _crypto() -> tuple[Any, Any]:
    try:
        import jwt
        from cryptography.hazmat.primitives import serialization
    except ImportError as exc:
        raise LoginUnavailable(
            f"the decoupled login needs PyJWT and cryptography ({exc.name} is "
            "missing): pip install 'hpcsera-client[login]'"
        ) from exc
    return jwt, serialization


def client_assertion(client_id: str, key_pem: bytes, audience: str) -> str:
    """A JWT proving to be `client_id`, valid for one minute and one use."""
    jwt, serialization = _crypto()
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    key = serialization.load_pem_private_key(key_pem, password=None)
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


class _Flow:
    def __init__(self, server: str, client_id: str, key_pem: bytes, timeout: float):
        self.server = server.rstrip("/")
        self.client_id = client_id
        self.key_pem = key_pem
        self.timeout = timeout
        self.session = requests.Session()
        self.meta = self._get("/.well-known/oauth-authorization-server")

    def _get(self, path: str) -> dict:
        try:
            answer = self.session.get(self.server + path, timeout=self.timeout)
            answer.raise_for_status()
            return answer.json()
        except (requests.RequestException, ValueError) as exc:
            raise TransportError(f"cannot read the server's metadata: {exc}") from exc

    def post(self, endpoint: str, data: dict) -> tuple[int, dict]:
        assertion = client_assertion(self.client_id, self.key_pem, self.meta["issuer"])
        data = dict(
            data, client_assertion_type=ASSERTION_TYPE, client_assertion=assertion
        )
        try:
            answer = self.session.post(
                self.meta[endpoint], data=data, timeout=self.timeout
            )
            body = answer.json()
        except (requests.RequestException, ValueError) as exc:
            raise TransportError(f"{endpoint}: no proper answer: {exc}") from exc
        return answer.status_code, body if isinstance(body, dict) else {}


def _refusal(body: dict) -> LoginError:
    code = str(body.get("error") or "invalid_response")
    kind = {"access_denied": AccessDenied, "expired_token": LoginExpired}.get(
        code, LoginError
    )
    return kind(code, str(body.get("error_description") or ""))


def request_token(
    server: str,
    client_id: str,
    key_path: str | Path,
    user: str,
    roles: str,
    *,
    tag: str = "default",
    on_code: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = 30.0,
) -> Grant:
    """Run the decoupled login to its end: the token, or a LoginError.

    `on_code` gets the binding code the user must see beside the request in
    the web UI before approving it; nothing is approved without the user.
    """
    _crypto()
    key_pem = Path(key_path).expanduser().read_bytes()
    flow = _Flow(server, client_id, key_pem, timeout)
    code = "HPC " + secrets.token_hex(3).upper()
    status, started = flow.post(
        "backchannel_authentication_endpoint",
        {"login_hint": user, "scope": roles, "tag": tag, "binding_message": code},
    )
    if status != 200:
        raise _refusal(started)
    on_code(code)

    interval = max(1, int(started.get("interval", 5)))
    left = float(started.get("expires_in", 300))
    poll = {"grant_type": CIBA_GRANT, "auth_req_id": started["auth_req_id"]}
    while left > 0:
        sleep(interval)
        left -= interval
        status, body = flow.post("token_endpoint", poll)
        if status == 200:
            return Grant(
                token=body["access_token"],
                expires_in=int(body.get("expires_in", 0)),
                roles=str(body.get("scope", "")),
                tag=str(body.get("tag", tag)),
            )
        if body.get("error") == "slow_down":
            interval = int(body.get("interval", interval + SLOW_DOWN_STEP))
        elif body.get("error") != "authorization_pending":
            raise _refusal(body)
    raise LoginExpired("expired_token", "the request expired before it was approved")
