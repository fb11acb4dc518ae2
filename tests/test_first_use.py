"""What a first-time user is led to expect by the documentation: uploads no
agent could install refused at once, a call waiting for consent saying so,
production settings named all at once, `make run`'s first step, and the OIDC
redirect behind a TLS proxy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.test_code_upload import SCRIPT, member, refused, tar_gz, upload
from tests.test_run_approvals import (  # noqa: F401  (fixtures)
    agent,  # noqa: F811
    alice_api,
    approval_key,
    ask,
    asked,
    held_call,  # noqa: F811
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def alice_client(alice, make_token, client_for):
    return client_for(make_token(alice))


# -- persona 1: uploads that no agent will ever install are accepted ----------------


@pytest.mark.django_db
def test_an_archive_whose_prepare_is_not_executable_is_refused_at_upload(
    alice_client,
):
    """The README promises the server "refuses at once what no agent would
    install"; the agent refuses a preparation step without an execute bit, but
    only after the owner approved it."""
    archive = tar_gz(
        member("run", SCRIPT),
        member("prep.sh", b"#!/bin/sh\ntrue\n", mode=0o644),
    )
    refused(upload(alice_client, archive=archive, prepare="prep.sh"), "invalid_prepare")


@pytest.mark.django_db
def test_an_archive_whose_run_is_a_link_is_refused_at_upload(alice_client):
    """`hpcsera code upload --archive DIR` packs a `run -> real` link inside the
    folder, the server accepts it, and the agent then fails the approved
    deployment with "the deployment has no executable file named run"."""
    archive = tar_gz(
        member("real", SCRIPT),
        member("run", type=tarfile.SYMTYPE, linkname="real"),
        member("prep.sh", b"#!/bin/sh\ntrue\n"),
    )
    answer = upload(alice_client, archive=archive, prepare="prep.sh")
    assert answer.status_code == 400, answer.content
    assert "link" in answer.json()["detail"]


# -- persona 2: a call waiting for the owner's consent looks merely "leased" ---------


@pytest.mark.django_db
def test_a_call_waiting_for_approval_says_so_in_its_status(
    agent,  # noqa: F811
    held_call,  # noqa: F811
    alice_api,  # noqa: F811
):
    answer = ask(agent, asked(held_call))
    assert answer.status_code == 201, answer.content

    status = alice_api.get(f"/api/v1/calls/{held_call.id}").json()
    shown = " ".join(str(status.get(key) or "") for key in ("reason", "waiting_for"))
    assert "approval" in shown, status


# -- persona 3: production settings --------------------------------------------------


def manage(tmp_path, *argv, **env_vars) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HPCSERA_", "SECRET_KEY", "ALLOWED_HOSTS", "OIDC_"))
        # Its own SQLite under tmp_path: never the suite's database.
        and key not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    }
    env.update(HPCSERA_VAR_DIR=str(tmp_path), HPCSERA_ENV="production")
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_without_settings_names_all_missing_ones_without_a_traceback(
    tmp_path,
):
    done = manage(tmp_path, "check")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    for name in ("SECRET_KEY", "HPCSERA_ISSUER", "HPCSERA_APPROVAL_KEY_FILE"):
        assert name in done.stderr, done.stderr[-2000:]


def test_production_serves_the_issuer_host_or_refuses_an_empty_allowed_hosts(
    tmp_path,
):
    """With the three required settings and no ALLOWED_HOSTS, `manage.py
    check` passes, and every request is then answered 400 Bad Request."""
    key = tmp_path / "approval.pem"
    key.write_text(
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "ed25519"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    required = {
        "SECRET_KEY": "x" * 48,
        "HPCSERA_ISSUER": "https://hpcsera.example.org",
        "HPCSERA_APPROVAL_KEY_FILE": str(key),
    }
    done = manage(
        tmp_path,
        "shell",
        "-c",
        "from django.conf import settings; print(settings.ALLOWED_HOSTS)",
        **required,
    )
    if "hpcsera.example.org" in done.stdout:
        return
    check = manage(tmp_path, "check", **required)
    assert check.returncode != 0 and "ALLOWED_HOSTS" in check.stderr, (
        done.stdout,
        check.stderr[-1000:],
    )


# -- `make run` ----------------------------------------------------------------------


def test_make_run_copies_the_example_functions_without_failing(tmp_path):
    """scripts/run-local.sh copies examples/functions/* with `cp -p`, which
    stops the script (set -e) at the folder examples/functions/greet."""
    script = (ROOT / "scripts" / "run-local.sh").read_text()
    loop = re.search(
        r"^for f in examples/functions/\*; do\n.*?^done$", script, re.M | re.S
    )
    assert loop, "the copy loop moved; update this test"
    var = tmp_path / "var"
    (var / "functions").mkdir(parents=True)
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + loop.group(0)],
        cwd=ROOT,
        env={**os.environ, "VAR": str(var)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (var / "functions" / "hello").is_file()


OIDC = {
    "HPCSERA_BEHIND_TLS_PROXY": "1",
    "ALLOWED_HOSTS": "hpcsera.example.org",
    "HPCSERA_ISSUER": "https://hpcsera.example.org",
    "OIDC_RP_CLIENT_ID": "hpcsera",
    "OIDC_RP_CLIENT_SECRET": "s" * 32,
    "OIDC_OP_ISSUER": "https://sso.example.org",
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "https://sso.example.org/auth",
    "OIDC_OP_TOKEN_ENDPOINT": "https://sso.example.org/token",
    "OIDC_OP_USER_ENDPOINT": "https://sso.example.org/user",
    "OIDC_OP_JWKS_ENDPOINT": "https://sso.example.org/jwks",
}


def test_behind_a_tls_proxy_the_oidc_redirect_uri_is_the_registered_https_one(
    tmp_path,
):
    """gunicorn binds 127.0.0.1 behind a TLS proxy; the README says to register
    https://<server>/oidc/callback/, but the login sends http://…, which the
    provider refuses. (If the fix is an opt-in setting for trusting
    X-Forwarded-Proto, set it in OIDC above.)"""
    probe = (
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "from django.test import Client\n"
        "from urllib.parse import parse_qs, urlparse\n"
        "r = Client().get('/oidc/authenticate/', HTTP_HOST='hpcsera.example.org',"
        " HTTP_X_FORWARDED_PROTO='https')\n"
        "print(parse_qs(urlparse(r['Location']).query)['redirect_uri'][0])\n"
    )
    done = manage(tmp_path, "shell", "-c", probe, HPCSERA_ENV="development", **OIDC)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("https://hpcsera.example.org/oidc/callback/"), (
        done.stdout
    )
