"""The web UI's pages and rules, through Django's test client (the browser test
covers the SSO login itself)."""

from __future__ import annotations

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from django.test import Client

from jobs.models import FunctionCall
from tests.conftest import register_agent
from tokens.models import SecurityEvent, Token
from web.models import OidcIdentity
from web.oidc import IdentityBackend

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_web(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def new_token(client: Client, **fields) -> object:
    data = {"name": "n", "tag": "proj-a", "roles": ["POST_Job"], "lifetime": 3600}
    data.update(fields)
    return client.post("/ui/tokens", data)


def test_pages_need_a_login(db):
    for path in ("/ui/tokens", "/ui/jobs", "/ui/agents", "/ui/audit"):
        answer = Client().get(path)
        assert answer.status_code == 302 and answer["Location"].startswith("/ui/login")


def test_a_new_token_is_shown_once_and_never_again(alice_web):
    answer = new_token(alice_web, roles=["POST_Job", "GET_JobStatus"])
    assert answer.status_code == 200
    secret = answer.context["issued"].secret
    assert secret in answer.content.decode()
    assert answer["Cache-Control"] == "no-store"
    callback_secret = answer.context["issued"].callback_secret
    assert callback_secret in answer.content.decode()
    listing = alice_web.get("/ui/tokens").content.decode()
    assert secret not in listing and secret.split("_")[1] in listing
    assert callback_secret not in listing
    assert SecurityEvent.objects.filter(kind="token_created").count() == 1


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"roles": ["Frobnicate"]}, "Select a valid choice"),
        ({"roles": []}, "Choose at least one role"),
        ({"tag": "Bad Tag"}, "1 to 63 characters"),
        ({"tag": "-starts-with-dash"}, "1 to 63 characters"),
        ({"roles": ["POST_Code"], "lifetime": 30 * 86400}, "lifetime"),
        ({"lifetime": 12345}, "Select a valid choice"),
        ({"name": "x" * 101}, "at most 100"),
    ],
)
def test_bad_token_forms_show_an_error_and_create_nothing(alice_web, fields, message):
    answer = new_token(alice_web, **fields)
    assert answer.status_code == 400
    assert message in answer.content.decode()
    assert not Token.objects.exists()


def test_a_user_cannot_revoke_another_users_token(alice_web, bob, make_token):
    make_token(bob)
    bobs = Token.objects.get(user=bob)
    answer = alice_web.post(f"/ui/tokens/{bobs.id}/revoke")
    assert answer.status_code == 404
    bobs.refresh_from_db()
    assert bobs.revoked_at is None


def test_revoking_in_the_ui_takes_effect_on_the_next_request(
    alice_web, alice, make_token, client_for
):
    secret = make_token(alice)
    api = client_for(secret)
    assert api.get("/api/v1/jobs").status_code == 200
    token = Token.objects.get(prefix=secret.split("_")[1])
    assert alice_web.post(f"/ui/tokens/{token.id}/revoke").status_code == 302
    answer = api.get("/api/v1/jobs")
    assert answer.status_code == 401 and answer.json()["code"] == "token_revoked"


def test_a_token_cannot_create_tokens(alice, make_token):
    bearer = Client(HTTP_AUTHORIZATION=f"Bearer {make_token(alice)}")
    answer = bearer.post(
        "/ui/tokens", {"tag": "x", "roles": ["POST_Job"], "lifetime": 3600}
    )
    assert answer.status_code == 302 and "/ui/login" in answer["Location"]
    assert Token.objects.count() == 1


def test_jobs_and_agents_pages_show_only_the_users_own(
    alice_web, alice, bob, make_token, client_for
):
    bob_api = client_for(make_token(bob))
    register_agent(bob_api, functions=("secretfn",), site="bobsite")
    call_id = bob_api.post("/bob/async-function/secretfn").json()["call_id"]
    job_id = FunctionCall.objects.get(id=call_id).job_id

    assert "bobsite" not in alice_web.get("/ui/agents").content.decode()
    assert "secretfn" not in alice_web.get("/ui/jobs").content.decode()
    assert alice_web.get(f"/ui/jobs/{job_id}").status_code == 404


def test_a_running_job_page_refreshes_itself(alice_web, alice, make_token, client_for):
    api = client_for(make_token(alice))
    register_agent(api)
    call_id = api.post("/alice/async-function/hello").json()["call_id"]
    job_id = FunctionCall.objects.get(id=call_id).job_id
    page = alice_web.get(f"/ui/jobs/{job_id}").content.decode()
    assert 'http-equiv="refresh"' in page


def test_the_session_browses_the_api_read_only(
    alice_web, alice, make_token, client_for
):
    register_agent(client_for(make_token(alice, tag="default")))
    assert alice_web.get("/api/v1/jobs", HTTP_ACCEPT="text/html").status_code == 200
    answer = alice_web.post("/alice/async-function/hello")
    assert answer.status_code == 403
    assert not FunctionCall.objects.exists()


def test_the_admin_can_revoke_but_not_read_or_make_tokens(alice, make_token):
    admin = get_user_model().objects.create_superuser("root", password="pw-root-1")
    make_token(alice)
    token = Token.objects.get()
    client = Client()
    client.force_login(admin)
    page = client.get(f"/admin/tokens/token/{token.id}/change/").content.decode()
    assert token.digest not in page
    assert client.get("/admin/tokens/token/add/").status_code == 403
    client.post(
        "/admin/tokens/token/",
        {"action": "revoke", "_selected_action": [str(token.id)]},
    )
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_the_schema_is_public_and_lists_roles_as_scopes(db):
    answer = Client().get("/api/schema")
    assert answer.status_code == 200
    schema = yaml.safe_load(answer.content)
    scheme = schema["components"]["securitySchemes"]["hpcseraToken"]
    assert scheme["type"] == "oauth2"
    faas = schema["paths"]["/{user}/function/{name}"]["post"]
    assert faas["security"] == [{"hpcseraToken": ["POST_Job"]}]
    report = schema["paths"]["/api/agent/v1/agents/{agent_id}/calls/{call_id}/report"][
        "post"
    ]
    assert report["security"] == [{"hpcseraToken": ["UPDATE_JobStatus"]}]
    assert Client().get("/api/docs/").status_code == 200


class FakeProvider(IdentityBackend):
    """The library's signature and userinfo steps replaced by fixed claims."""

    def __init__(self, payload: dict, userinfo: dict):
        self.payload, self.userinfo = payload, userinfo
        self.UserModel = get_user_model()

    def get_userinfo(self, access_token, id_token, payload):
        return self.userinfo


ISSUER = "https://idp.uni.example"


@pytest.fixture
def oidc_settings(settings):
    settings.OIDC_OP_ISSUER = ISSUER
    settings.OIDC_RP_CLIENT_ID = "hpcsera"
    return settings


@pytest.mark.parametrize(
    "payload",
    [
        {"iss": "https://evil.example", "aud": "hpcsera", "sub": "1"},
        {"iss": ISSUER, "aud": "someone-else", "sub": "1"},
        {"iss": ISSUER, "aud": ["hpcsera", "other"], "azp": "other", "sub": "1"},
        {"iss": ISSUER, "aud": "hpcsera"},
    ],
)
def test_id_tokens_from_another_issuer_or_for_another_audience_are_refused(
    oidc_settings, payload, monkeypatch
):
    monkeypatch.setattr(
        "mozilla_django_oidc.auth.OIDCAuthenticationBackend.verify_token",
        lambda self, token, **kw: payload,
    )
    with pytest.raises(SuspiciousOperation):
        FakeProvider(payload, {}).verify_token("t")


def test_users_are_found_by_issuer_and_subject_not_by_email(oidc_settings):
    first = FakeProvider(
        {"iss": ISSUER, "sub": "s-1"},
        {"sub": "s-1", "email": "same@uni.example", "preferred_username": "ada"},
    ).get_or_create_user("a", "i", {"iss": ISSUER, "sub": "s-1"})
    second = FakeProvider(
        {"iss": ISSUER, "sub": "s-2"},
        {"sub": "s-2", "email": "same@uni.example", "preferred_username": "ada"},
    ).get_or_create_user("a", "i", {"iss": ISSUER, "sub": "s-2"})
    again = FakeProvider(
        {"iss": ISSUER, "sub": "s-1"},
        {"sub": "s-1", "email": "changed@uni.example"},
    ).get_or_create_user("a", "i", {"iss": ISSUER, "sub": "s-1"})

    assert first != second and again == first
    assert first.username == "ada" and second.username == "ada-2"
    assert OidcIdentity.objects.count() == 2


def test_userinfo_about_another_subject_is_refused(oidc_settings):
    backend = FakeProvider({}, {"sub": "someone-else"})
    with pytest.raises(SuspiciousOperation):
        backend.get_or_create_user("a", "i", {"iss": ISSUER, "sub": "s-1"})


def test_a_disabled_user_is_out_of_the_web_ui_at_once(oidc_settings, alice):
    backend = FakeProvider({}, {})
    assert backend.get_user(alice.pk) == alice
    alice.is_active = False
    alice.save()
    assert backend.get_user(alice.pk) is None


def test_names_the_server_answers_and_case_twins_are_not_given_out(
    oidc_settings, alice
):
    def login(subject: str, name: str):
        return FakeProvider(
            {"iss": ISSUER, "sub": subject},
            {"sub": subject, "preferred_username": name},
        ).get_or_create_user("a", "i", {"iss": ISSUER, "sub": subject})

    assert login("s-admin", "admin").username == "admin-user"
    assert login("s-api", "API").username == "API-user"
    assert login("s-alice", "Alice").username == "Alice-2"


def test_the_agents_page_says_which_agents_are_alive(
    alice_web, alice, make_token, client_for
):
    from datetime import timedelta

    from django.utils import timezone

    from jobs.models import Agent

    api = client_for(make_token(alice))
    register_agent(api, site="fresh")
    register_agent(api, site="stale")
    Agent.objects.filter(site="stale").update(
        last_seen_at=timezone.now() - timedelta(hours=1)
    )
    page = alice_web.get("/ui/agents").content.decode()
    fresh, stale = page.split("fresh")[1], page.split("stale")[1]
    assert "alive" in fresh.split("</tr>")[0]
    assert "silent" in stale.split("</tr>")[0]
