"""A P-256 key standing in for the user's authenticator.

It builds WebAuthn responses byte by byte as a browser and authenticator
would (authenticatorData, clientDataJSON, attestationObject, signature), so
the agent's verifier and the server's fido2 checks can be tested without a
browser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.cose import ES256

UP, UV, AT = 0x01, 0x04, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    def __init__(self, rp_id: str = "localhost", origin: str = "http://localhost"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(16)
        self.rp_id, self.origin = rp_id, origin
        self.count = 0

    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
            .decode("ascii")
        )

    def _auth_data(self, flags: int, rp_id: str | None, extra: bytes = b"") -> bytes:
        self.count += 1
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        return rp_hash + bytes([flags]) + struct.pack(">I", self.count) + extra

    def _client_data(self, kind: str, challenge: bytes, origin: str | None) -> bytes:
        data = {
            "type": kind,
            "challenge": b64url(challenge),
            "origin": origin or self.origin,
            "crossOrigin": False,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def create(self, challenge: bytes, flags: int = UP | UV) -> dict:
        """A registration response as the page posts it (base64url fields)."""
        cose = dict(ES256.from_cryptography_key(self.key.public_key()))
        attested = (
            bytes(16)  # aaguid: none
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + cbor.encode(cose)
        )
        auth_data = self._auth_data(flags | AT, None, attested)
        attestation = cbor.encode({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", challenge, None)
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
            },
        }

    def get(
        self,
        challenge: bytes,
        *,
        flags: int = UP | UV,
        rp_id: str | None = None,
        origin: str | None = None,
        kind: str = "webauthn.get",
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> dict:
        """An assertion: {credential_id, authenticator_data, client_data_json,
        signature}, each base64url, as the server stores it for the agent."""
        auth_data = self._auth_data(flags, rp_id)
        client_data = self._client_data(kind, challenge, origin)
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = (key or self.key).sign(signed, ec.ECDSA(hashes.SHA256()))
        return {
            "credential_id": b64url(self.credential_id),
            "authenticator_data": b64url(auth_data),
            "client_data_json": b64url(client_data),
            "signature": b64url(signature),
        }
