"""Abuse of code uploads, the owner's consent and deployments: flooding,
archives that inflate in memory, text that reads as something else, stale
approvals and logins, and bytes swapped while the owner decides."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import time

import pytest
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory

from tests.test_code_consent import (
    AGENT_ROLES,
    SCRIPT,
    Agent,
    api_client,
    decide,
    send,
)
from tokens import roles

pytestmark = pytest.mark.django_db


def _upload(client, **form):
    return client.post("/api/v1/code", form, format="multipart")


def _tar_gz(members: dict[str, bytes], pax: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            if pax:
                info.pax_headers = dict(pax)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), 6)


@pytest.fixture
def uploader(alice):
    return api_client(alice, role_list=[roles.POST_CODE], name="ci-build")


# -- resource exhaustion ----------


def test_a_token_cannot_keep_unlimited_uploads_pending(uploader):
    """Pending uploads hold bytes and fill the owner's inbox: capped per user."""
    answers = [
        _upload(uploader, function=f"f{i}", script=SimpleUploadedFile("r", SCRIPT))
        for i in range(60)
    ]
    refused = [a for a in answers if a.status_code != 202]
    assert refused, "60 pending uploads from one token were all accepted"
    assert refused[0].status_code == 429
    assert refused[0].json()["code"]


def test_a_huge_pax_header_is_refused_without_inflating_it_into_memory(uploader):
    """tarfile reads an extended header whole: one over 64 KiB is refused first."""
    data = _tar_gz({"run": b"#!/bin/sh\n"}, pax={"comment": "A" * (8 * 1024 * 1024)})
    answer = _upload(
        uploader,
        function="bomb",
        archive=SimpleUploadedFile("a.tar.gz", data),
        prepare="run",
    )
    assert answer.status_code == 400, answer.content[:200]
    assert answer.json()["code"] == "unsafe_archive"


# -- what the owner is shown ----------


@pytest.mark.parametrize(
    "description",
    [
        "fixes typo\u202e" + "hs.lave",  # right-to-left override
        "line one\u2028line two",  # Unicode line separator
        "next\x85line",  # C1 control NEL
    ],
)
def test_a_description_is_one_plain_line(uploader, description):
    """Bidi overrides, separators and C1 controls would disguise the text."""
    answer = _upload(
        uploader,
        function="hello",
        description=description,
        script=SimpleUploadedFile("r", SCRIPT),
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_description"


@pytest.mark.parametrize("name", ["run\nprepare.sh", "setup\u202ehs.txt"])
def test_archive_entry_names_with_control_or_bidi_characters_are_refused(
    uploader, name
):
    """A file name must read on the consent page as what it is."""
    data = _tar_gz({"run": b"#!/bin/sh\n", "prep": b"#!/bin/sh\n", name: b"x"})
    answer = _upload(
        uploader,
        function="hello",
        archive=SimpleUploadedFile("a.tar.gz", data),
        prepare="prep",
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "unsafe_archive"


@pytest.mark.parametrize("function", [".hidden", ".hpcsera"])
def test_a_function_no_agent_can_install_is_refused_at_upload(uploader, function):
    """Agents never offer hidden names: refused at once, not after approval."""
    answer = _upload(
        uploader, function=function, script=SimpleUploadedFile("r", SCRIPT)
    )
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_function_name"


# -- approval scope ----------


def test_an_agent_joining_later_is_not_offered_superseded_versions(alice, uploader):
    """An approval is no standing permission for versions replaced since."""
    from django.test import Client

    web = Client()
    web.force_login(alice)
    first = send(uploader)
    assert decide(web, first).status_code == 302
    newer = b"#!/bin/sh\necho hello v2\n"
    second = send(uploader, data=newer)
    assert (
        decide(web, second, sha256=hashlib.sha256(newer).hexdigest()).status_code == 302
    )

    late = Agent(api_client(alice, role_list=AGENT_ROLES), site="new-site")
    offered = [o["upload_id"] for o in late.offers()]

    assert offered == [second]


# -- the recent-login rule ----------


def test_a_login_the_provider_remembered_is_not_a_recent_login(
    alice, settings, monkeypatch
):
    """A remembered login at the provider (old auth_time) is not recent."""
    from django.contrib import auth
    from mozilla_django_oidc.auth import OIDCAuthenticationBackend

    from web.models import OidcIdentity
    from web.oidc import IdentityBackend
    from web.recent import login_is_recent

    issuer = "https://idp.uni.example"
    settings.OIDC_OP_ISSUER = issuer
    settings.OIDC_RP_CLIENT_ID = "hpcsera"
    settings.OIDC_RP_CLIENT_SECRET = "s"
    settings.OIDC_OP_TOKEN_ENDPOINT = "https://idp.uni.example/token"
    settings.OIDC_OP_USER_ENDPOINT = "https://idp.uni.example/userinfo"
    settings.AUTHENTICATION_BACKENDS = ["web.oidc.IdentityBackend"]
    # The callback URL is only routed when OIDC is on at import time.
    settings.OIDC_AUTHENTICATION_CALLBACK_URL = "ui-inbox"
    OidcIdentity.objects.create(user=alice, issuer=issuer, subject="alice-sub")
    day_old = int(time.time()) - 86400
    payload = {
        "iss": issuer,
        "aud": "hpcsera",
        "sub": "alice-sub",
        "auth_time": day_old,  # the provider says: she typed her password a day ago
    }
    monkeypatch.setattr(
        IdentityBackend,
        "get_token",
        lambda self, body: {"id_token": "i", "access_token": "a"},
    )
    monkeypatch.setattr(
        OIDCAuthenticationBackend, "verify_token", lambda self, token, **kw: payload
    )
    monkeypatch.setattr(
        IdentityBackend, "get_userinfo", lambda self, a, i, p: {"sub": "alice-sub"}
    )
    request = RequestFactory().get("/oidc/callback/", {"code": "c", "state": "s"})
    SessionMiddleware(lambda r: None).process_request(request)
    request.user = AnonymousUser()

    user = auth.authenticate(request, nonce="n", code_verifier=None)
    assert user == alice
    auth.login(request, user)  # what the library's callback view does

    assert not login_is_recent(request)


# -- agent-side consent ----------


def test_the_agent_runs_only_the_bytes_that_were_approved(tmp_path, pinned_file):
    """A file rewritten while the owner decides does not run."""
    from tests.test_agent_consent import (
        CALL,
        FakeServer,
        call,
        deployed_function,
        make_agent,
        serve,
    )

    approved_marker, swapped_marker = tmp_path / "approved", tmp_path / "swapped"
    run = deployed_function(tmp_path, "deployed", approved_marker)

    class SwappingServer(FakeServer):
        def approval_get(self, agent_id, approval_id, wait):
            # While the owner reads the consent page, the file changes.
            run.write_text(f"#!/bin/sh\necho swapped > '{swapped_marker}'\n")
            return super().approval_get(agent_id, approval_id, wait)

    server = SwappingServer("approved", [call("deployed")])
    agent = make_agent(tmp_path, server, "uploaded", pinned_file)

    serve(agent)

    assert not swapped_marker.exists(), "bytes nobody approved ran"
    assert server.final(CALL)["state"] == "failed" or approved_marker.exists()


@pytest.fixture
def pinned_file(tmp_path, settings):
    from consent import signing

    key = tmp_path / "server-key.pem"
    signing.key_file_create(key)
    settings.HPCSERA = {**settings.HPCSERA, "APPROVAL_KEY_FILE": str(key)}
    pinned = tmp_path / "pinned.pem"
    pinned.write_text(signing.approval_public_pem())
    return pinned
