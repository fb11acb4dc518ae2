from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tokens.models import Token
from tokens.services import token_revoke

pytestmark = pytest.mark.django_db


def test_issue_token_prints_the_token_once_and_stores_only_a_digest(alice):
    out = StringIO()
    call_command(
        "issue_token",
        user="alice",
        roles="POST_Job,GET_JobStatus",
        tag="t1",
        stdout=out,
    )
    secret = out.getvalue().strip()
    token = Token.objects.get()

    assert secret.startswith("hpcsera_")
    assert token.prefix in secret
    assert secret not in (token.digest, token.prefix)
    assert token.roles == ["GET_JobStatus", "POST_Job"]
    assert token.tag == "t1"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"roles": "POST_Job,Frobnicate"}, "unknown role"),
        ({"roles": ","}, "at least one role"),
        ({"roles": "POST_Job", "tag": "Bad Tag"}, "tag"),
        ({"roles": "POST_Code", "lifetime": 10 * 24 * 3600}, "lifetime"),
    ],
)
def test_issue_token_refuses_bad_input_and_creates_nothing(alice, options, message):
    with pytest.raises(CommandError, match=message):
        call_command("issue_token", user="alice", stdout=StringIO(), **options)
    assert Token.objects.count() == 0


def test_issue_token_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="no user"):
        call_command("issue_token", user="nobody", roles="POST_Job", stdout=StringIO())


def test_a_token_lifetime_is_capped_by_its_most_powerful_role(alice):
    call_command(
        "issue_token", user="alice", roles="GET_JobStatus,POST_Code", stdout=StringIO()
    )
    token = Token.objects.get()
    assert token.expires_at - token.created_at <= timedelta(days=1)


def _status(client_for, secret):
    return client_for(secret).get("/api/v1/jobs")


def test_a_valid_token_reads(alice, make_token, client_for):
    assert _status(client_for, make_token(alice)).status_code == 200


def test_an_expired_token_is_refused_with_401_saying_so(alice, make_token, client_for):
    secret = make_token(alice)
    Token.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    answer = _status(client_for, secret)
    assert answer.status_code == 401
    assert answer.json()["code"] == "token_expired"


def test_a_revoked_token_is_refused_on_the_next_request(alice, make_token, client_for):
    secret = make_token(alice)
    assert _status(client_for, secret).status_code == 200
    token_revoke(token=Token.objects.get())
    answer = _status(client_for, secret)
    assert answer.status_code == 401
    assert answer.json()["code"] == "token_revoked"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1],
        lambda s: s[:-1] + "A" if s[-1] != "A" else s[:-1] + "B",
        lambda s: "x" + s,
        lambda s: s[:20],
    ],
)
def test_a_tampered_token_is_401_and_the_log_names_no_part_of_it(
    alice, make_token, client_for, caplog, mangle
):
    secret = make_token(alice)
    caplog.set_level(logging.DEBUG)
    answer = _status(client_for, mangle(secret))
    assert answer.status_code == 401
    assert answer.json()["code"] == "invalid_token"
    secret_part = secret.split("_", 2)[2]
    assert secret_part[:8] not in caplog.text


def test_no_token_is_401_and_a_wrong_scheme_is_401(alice, client_for):
    from rest_framework.test import APIClient

    assert APIClient().get("/api/v1/jobs").status_code == 401
    basic = APIClient()
    basic.credentials(HTTP_AUTHORIZATION="Basic YWxpY2U6cHc=")
    answer = basic.get("/api/v1/jobs")
    assert answer.status_code == 401
    assert answer["WWW-Authenticate"].startswith("Bearer")
