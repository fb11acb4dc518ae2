"""Clients' public keys: accepted kinds, and the one algorithm each may sign with."""

from __future__ import annotations

import json

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hpcsera.errors import BadInput

# The algorithm a key signs with is fixed by the key, never by the assertion:
# an assertion naming another algorithm is refused (no algorithm confusion).
ALGORITHMS = ("EdDSA", "ES256", "RS256", "PS256")


def parse_public_key(text: str) -> tuple[str, str]:
    """(normalized PEM, algorithm) for a PEM or JWK public key, or BadInput."""
    text = text.strip()
    if len(text) > 16384:
        raise BadInput("The key is too long.", code="invalid_key")
    try:
        if text.startswith("{"):
            key = jwt.PyJWK(json.loads(text)).key
        else:
            key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError, jwt.PyJWKError, UnicodeError):
        raise BadInput("Not a public key in PEM or JWK form.", code="invalid_key")
    return _pem(key), _algorithm(key)


def _algorithm(key: object) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise BadInput("EC keys must be on the P-256 curve.", code="invalid_key")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise BadInput("RSA keys must have at least 2048 bits.", code="invalid_key")
        return "RS256"
    raise BadInput(
        "Use an Ed25519, EC P-256 or RSA (2048 bits or more) key.", code="invalid_key"
    )


def _pem(key: object) -> str:
    if not hasattr(key, "public_bytes"):
        raise BadInput(
            "That is a private key; paste the public one.", code="invalid_key"
        )
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def allowed_algorithms(algorithm: str) -> list[str]:
    # An RSA key may sign with PKCS#1 v1.5 or PSS; every other key has one.
    return ["RS256", "PS256"] if algorithm == "RS256" else [algorithm]
