"""The decoupled login over HTTP: a registered client asks for a token, the
user decides in the web UI, the client polls with signed assertions."""

from __future__ import annotations

import json
import threading
import time
import uuid
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.db import connection
from django.test import Client as WebClient
from django.utils import timezone

from consent.models import AuthRequest, Client
from tokens.models import Token

pytestmark = pytest.mark.django_db
ISSUER = "http://testserver"
CIBA = "urn:openid:params:grant-type:ciba"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )


def assertion(client_id: str, key, **overrides) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides.pop("claims", {}))
    alg = overrides.pop("alg", "EdDSA")
    return jwt.encode(claims, key, algorithm=alg)


@pytest.fixture(autouse=True)
def issuer(settings):
    settings.HPCSERA = {**settings.HPCSERA, "ISSUER": ISSUER}


@pytest.fixture
def web(alice) -> WebClient:
    client = WebClient()
    client.force_login(alice)
    return client


@pytest.fixture
def key():
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def client_id(web, key) -> str:
    answer = web.post(
        "/ui/clients", {"name": "ci runner", "public_key": public_pem(key)}
    )
    assert answer.status_code == 200
    return answer.context["created"].client_id


FORM = "application/x-www-form-urlencoded"


def form(http: WebClient, path: str, data: dict, **headers):
    return http.post(path, urlencode(data, doseq=True), content_type=FORM, **headers)


class Flow:
    def __init__(self, client_id: str, key) -> None:
        self.client_id, self.key = client_id, key
        self.http = WebClient()

    def auth(self, **extra) -> dict:
        return {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion(self.client_id, self.key),
            **extra,
        }

    def ask(self, scope="POST_Job GET_JobStatus", **extra):
        data = self.auth(
            login_hint="alice", scope=scope, tag="proj-a", binding_message="CODE 42"
        )
        data.update(extra)
        return form(self.http, "/oauth/bc-authorize", data)

    def poll(self, request_id: str, **extra):
        data = self.auth(grant_type=CIBA, auth_req_id=request_id, **extra)
        return form(self.http, "/oauth/token", data)


@pytest.fixture
def flow(client_id, key) -> Flow:
    return Flow(client_id, key)


def approve(web, request_id_pk, roles) -> None:
    answer = web.post(
        f"/ui/requests/{request_id_pk}/decide", {"decision": "approve", "roles": roles}
    )
    assert answer.status_code == 302


def test_the_whole_flow_yields_a_token_with_the_narrowed_roles(flow, web):
    asked = flow.ask()
    assert asked.status_code == 200
    body = asked.json()
    assert len(body["auth_req_id"]) >= 22 and body["interval"] == 5
    assert flow.poll(body["auth_req_id"]).json()["error"] == "authorization_pending"

    inbox = web.get("/ui/requests").content.decode()
    assert "CODE 42" in inbox and "ci runner" in inbox and "proj-a" in inbox
    approve(web, AuthRequest.objects.get().id, ["GET_JobStatus"])

    AuthRequest.objects.update(last_polled_at=None)
    answer = flow.poll(body["auth_req_id"])
    assert answer.status_code == 200, answer.content
    token = answer.json()
    assert token["token_type"] == "Bearer" and token["scope"] == "GET_JobStatus"
    assert len(token["callback_secret"]) >= 32
    api = WebClient(HTTP_AUTHORIZATION=f"Bearer {token['access_token']}")
    assert api.get("/api/v1/jobs").status_code == 200
    assert api.post("/alice/async-function/x").status_code == 403
    stored = Token.objects.get(client__client_id=flow.client_id)
    assert stored.roles == ["GET_JobStatus"] and stored.tag == "proj-a"


def test_redeeming_twice_is_refused(flow, web):
    request_id = flow.ask().json()["auth_req_id"]
    approve(web, AuthRequest.objects.get().id, ["POST_Job"])
    assert flow.poll(request_id).status_code == 200
    again = flow.poll(request_id)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert Token.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_polls_after_approval_yield_exactly_one_token(flow, web):
    request_id = flow.ask().json()["auth_req_id"]
    approve(web, AuthRequest.objects.get().id, ["POST_Job"])
    answers = []

    def poll() -> None:
        answers.append(flow.poll(request_id).status_code)
        connection.close()

    polls = [threading.Thread(target=poll) for _ in range(2)]
    for poll in polls:
        poll.start()
    for poll in polls:
        poll.join()
    assert sorted(answers) == [200, 400]
    assert Token.objects.count() == 1


def test_another_clients_request_id_is_unknown_to_it(flow, web, key):
    request_id = flow.ask().json()["auth_req_id"]
    approve(web, AuthRequest.objects.get().id, ["POST_Job"])
    other_key = ed25519.Ed25519PrivateKey.generate()
    other = web.post(
        "/ui/clients", {"name": "other", "public_key": public_pem(other_key)}
    )
    thief = Flow(other.context["created"].client_id, other_key)
    answer = thief.poll(request_id)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert flow.poll(request_id).status_code == 200


def test_an_approved_but_expired_request_is_expired_at_the_token_endpoint(flow, web):
    request_id = flow.ask().json()["auth_req_id"]
    approve(web, AuthRequest.objects.get().id, ["POST_Job"])
    AuthRequest.objects.update(expires_at=timezone.now())
    answer = flow.poll(request_id)
    assert answer.status_code == 400 and answer.json()["error"] == "expired_token"
    assert not Token.objects.exists()


def test_a_missing_request_id_is_a_clean_400(flow):
    answer = flow.poll("")
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


def test_polling_too_fast_answers_slow_down_and_raises_the_interval(flow):
    request_id = flow.ask().json()["auth_req_id"]
    assert flow.poll(request_id).json()["error"] == "authorization_pending"
    fast = flow.poll(request_id)
    assert fast.json()["error"] == "slow_down" and fast.json()["interval"] == 10
    assert AuthRequest.objects.get().interval == 10


def test_a_denied_request_answers_access_denied(flow, web):
    request_id = flow.ask().json()["auth_req_id"]
    web.post(
        f"/ui/requests/{AuthRequest.objects.get().id}/decide", {"decision": "deny"}
    )
    answer = flow.poll(request_id)
    assert answer.json()["error"] == "access_denied"


def test_approving_as_another_user_is_404_and_changes_nothing(flow, bob):
    flow.ask()
    intruder = WebClient()
    intruder.force_login(bob)
    answer = intruder.post(
        f"/ui/requests/{AuthRequest.objects.get().id}/decide",
        {"decision": "approve", "roles": ["POST_Job"]},
    )
    assert answer.status_code == 404
    assert AuthRequest.objects.get().state == "pending"
    assert "CODE 42" not in intruder.get("/ui/requests").content.decode()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"claims": {"aud": "http://elsewhere"}}, "audience"),
        ({"claims": {"exp": int(time.time()) - 120}}, "expired"),
        ({"claims": {"exp": int(time.time()) + 3600}}, "too long"),
        ({"claims": {"sub": "someone"}}, "subject"),
        ({"claims": {"jti": None}}, "not valid"),
        ({"alg": "HS256"}, "algorithm"),
    ],
)
def test_bad_assertions_are_refused(flow, change, message):
    alg = change.get("alg", "EdDSA")
    key = "a-shared-secret-that-must-not-work-32b" if alg == "HS256" else flow.key
    claims = change.get("claims", {})
    if claims.get("jti", "") is None:
        claims = {**claims}
        forged = jwt.encode(
            {
                "iss": flow.client_id,
                "sub": flow.client_id,
                "aud": ISSUER,
                "exp": int(time.time()) + 60,
            },
            key,
            algorithm=alg,
        )
    else:
        forged = assertion(flow.client_id, key, alg=alg, claims=claims)
    answer = form(
        flow.http,
        "/oauth/bc-authorize",
        {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": forged,
            "login_hint": "alice",
            "scope": "POST_Job",
            "binding_message": "x",
        },
    )
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert message in answer.json()["error_description"]
    assert not AuthRequest.objects.exists()


def test_a_replayed_assertion_is_refused(flow):
    data = flow.auth(login_hint="alice", scope="POST_Job", binding_message="one")
    assert form(flow.http, "/oauth/bc-authorize", data).status_code == 200
    replay = form(flow.http, "/oauth/bc-authorize", data)
    assert replay.status_code == 401
    assert "used before" in replay.json()["error_description"]


def test_an_unknown_key_is_refused(flow):
    stranger = ed25519.Ed25519PrivateKey.generate()
    impostor = Flow(flow.client_id, stranger)
    answer = impostor.ask()
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_a_shared_secret_is_never_accepted(flow):
    answer = form(
        flow.http,
        "/oauth/bc-authorize",
        {
            "client_id": flow.client_id,
            "client_secret": "anything",
            "login_hint": "alice",
            "scope": "POST_Job",
            "binding_message": "x",
        },
    )
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


@pytest.mark.parametrize(
    "extra, error",
    [
        ({"scope": "POST_Job Frobnicate"}, "invalid_scope"),
        ({"scope": ""}, "invalid_scope"),
        ({"login_hint": "bob"}, "unknown_user_id"),
        ({"binding_message": "<script>alert(1)</script>"}, "invalid_binding_message"),
        ({"binding_message": "x" * 65}, "invalid_binding_message"),
        ({"tag": "Bad Tag"}, "invalid_request"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_pending(flow, bob, extra, error):
    answer = flow.ask(**extra)
    assert answer.status_code == 400 and answer.json()["error"] == error
    assert not AuthRequest.objects.exists()


def test_pending_requests_per_client_are_capped(flow, settings):
    for n in range(3):
        assert flow.ask(binding_message=f"n{n}").status_code == 200
    answer = flow.ask(binding_message="one too many")
    assert answer.status_code == 429 and answer.json()["error"] == "slow_down"


def test_requests_per_user_are_rate_limited(flow, settings):
    settings.HPCSERA = {**settings.HPCSERA, "MAX_REQUESTS_PER_USER_HOUR": 2}
    for n in range(2):
        flow.ask(binding_message=f"n{n}")
    AuthRequest.objects.update(state="denied")
    assert flow.ask(binding_message="third").status_code == 429


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
)
def test_ec_and_rsa_clients_work_too(web, make):
    key = make()
    alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "PS256"
    created = web.post("/ui/clients", {"name": alg, "public_key": public_pem(key)})
    client_id = created.context["created"].client_id
    data = {
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion(client_id, key, alg=alg),
        "login_hint": "alice",
        "scope": "POST_Job",
        "binding_message": "k",
    }
    assert form(WebClient(), "/oauth/bc-authorize", data).status_code == 200


@pytest.mark.parametrize(
    "key_text",
    [
        "not a key",
        public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        public_pem(ec.generate_private_key(ec.SECP384R1())),
    ],
)
def test_weak_or_broken_keys_cannot_be_registered(web, key_text):
    answer = web.post("/ui/clients", {"name": "weak", "public_key": key_text})
    assert answer.status_code == 400
    assert not Client.objects.exists()


def test_a_jwk_public_key_can_be_registered(web):
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key())
    answer = web.post("/ui/clients", {"name": "jwk", "public_key": jwk})
    assert answer.status_code == 200 and Client.objects.get().algorithm == "EdDSA"


def test_metadata_describes_the_flow(db):
    meta = WebClient().get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == ISSUER
    assert meta["backchannel_token_delivery_modes_supported"] == ["poll"]
    assert meta["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert "POST_Job" in meta["scopes_supported"]


def test_introspection_shows_only_own_tokens_and_inactive_says_nothing_more(
    flow, web, alice, bob, make_token
):
    request_id = flow.ask().json()["auth_req_id"]
    approve(web, AuthRequest.objects.get().id, ["POST_Job"])
    secret = flow.poll(request_id).json()["access_token"]

    mine = form(flow.http, "/oauth/introspect", flow.auth(token=secret)).json()
    assert mine["active"] is True and mine["scope"] == "POST_Job"
    bobs = make_token(bob)
    assert form(flow.http, "/oauth/introspect", flow.auth(token=bobs)).json() == {
        "active": False
    }
    as_bob = WebClient(HTTP_AUTHORIZATION=f"Bearer {bobs}")
    assert form(as_bob, "/oauth/introspect", {"token": secret}).json() == {
        "active": False
    }
    anonymous = form(WebClient(), "/oauth/introspect", {"token": secret})
    assert anonymous.status_code == 401


def test_revocation_works_on_own_tokens_only(flow, web, bob, make_token):
    bobs = make_token(bob)
    assert form(flow.http, "/oauth/revoke", flow.auth(token=bobs)).status_code == 200
    assert Token.objects.get(user=bob).revoked_at is None

    request_id = flow.ask().json()["auth_req_id"]
    approve(web, AuthRequest.objects.get().id, ["POST_Job"])
    secret = flow.poll(request_id).json()["access_token"]
    assert form(flow.http, "/oauth/revoke", flow.auth(token=secret)).status_code == 200
    api = WebClient(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/jobs").json()["code"] == "token_revoked"


def test_the_oauth_endpoints_want_form_encoding(flow):
    answer = flow.http.post(
        "/oauth/token",
        json.dumps({"grant_type": CIBA}),
        content_type="application/json",
    )
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


def test_revoking_a_client_revokes_the_tokens_it_obtained(flow, web):
    request_id = flow.ask().json()["auth_req_id"]
    approve(web, AuthRequest.objects.get().id, ["POST_Job"])
    secret = flow.poll(request_id).json()["access_token"]
    client = Client.objects.get(client_id=flow.client_id)
    assert web.post(f"/ui/clients/{client.id}/revoke").status_code == 302
    api = WebClient(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/jobs").json()["code"] == "token_revoked"
    assert flow.ask().status_code == 401


def test_a_disabled_users_client_cannot_authenticate(flow, alice):
    alice.is_active = False
    alice.save()
    answer = flow.ask()
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_bearer_introspection_is_fenced_by_tag(flow, web, alice, make_token):
    request_id = flow.ask().json()["auth_req_id"]
    approve(web, AuthRequest.objects.get().id, ["POST_Job"])
    secret = flow.poll(request_id).json()["access_token"]  # tag proj-a
    other_tag = WebClient(HTTP_AUTHORIZATION=f"Bearer {make_token(alice, tag='x')}")
    assert form(other_tag, "/oauth/introspect", {"token": secret}).json() == {
        "active": False
    }
    assert form(other_tag, "/oauth/revoke", {"token": secret}).status_code == 200
    assert Token.objects.get(prefix=secret.split("_")[1]).revoked_at is None


@pytest.mark.django_db(transaction=True)
def test_requests_sent_at_once_cannot_pass_the_pending_cap(flow):
    answers = []

    def ask(n: int) -> None:
        answers.append(flow.ask(binding_message=f"n{n}").status_code)
        connection.close()

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert AuthRequest.objects.filter(state="pending").count() == 3
    assert answers.count(200) == 3
