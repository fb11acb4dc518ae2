"""Prepare the test OpenID provider for `make run`, so the web UI can be tried
on a laptop without an institution's provider.

Prints shell `export` lines: the provider's own settings (OP_*), HPCSerA's
OIDC_* settings and DEMO_PASSWORD, a fresh password for the demo user.

    python -m tests.oidc_provider.dev VAR_DIR RP_URL PROVIDER_PORT USER
"""

import secrets
import shlex
import subprocess
import sys
from pathlib import Path


def main(var: str, rp_url: str, port: str, user: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    folder = Path(var) / "oidc-dev"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = folder / "key.pem"
    if not key.exists():
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key.write_bytes(
            pem.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key.chmod(0o600)
    database = folder / "provider.sqlite3"
    database.unlink(missing_ok=True)  # fresh users and client on every start

    issuer = f"http://localhost:{port}/o"
    provider_env = {
        "OP_DB": str(database),
        "OP_RSA_KEY_FILE": str(key),
        "OP_ISSUER": issuer,
    }
    client_id, client_secret = "hpcsera-dev", secrets.token_urlsafe(24)
    password = secrets.token_urlsafe(12)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.oidc_provider.setup",
            f"{rp_url}/oidc/callback/",
            client_id,
            client_secret,
            f"{user}:{password}",
        ],
        env={
            **provider_env,
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
        },
        check=True,
    )
    exports = {
        **provider_env,
        "OIDC_RP_CLIENT_ID": client_id,
        "OIDC_RP_CLIENT_SECRET": client_secret,
        "OIDC_OP_ISSUER": issuer,
        "OIDC_OP_AUTHORIZATION_ENDPOINT": issuer + "/authorize/",
        "OIDC_OP_TOKEN_ENDPOINT": issuer + "/token/",
        "OIDC_OP_USER_ENDPOINT": issuer + "/userinfo/",
        "OIDC_OP_JWKS_ENDPOINT": issuer + "/.well-known/jwks.json",
        "DEMO_PASSWORD": password,
    }
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
