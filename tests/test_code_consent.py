"""The owner's decision on uploaded code (web UI) and the deployments that follow
it (agent API): nothing reaches an agent that alice did not approve, byte for
byte, with a recent login, in time."""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from consent.models import CodeUpload, Deployment
from tokens import roles
from tokens.services import token_issue
from web.recent import SESSION_KEY

pytestmark = pytest.mark.django_db

SCRIPT = b"#!/bin/sh\necho hello\n"
DIGEST = hashlib.sha256(SCRIPT).hexdigest()
AGENT_ROLES = [roles.GET_JOB, roles.UPDATE_JOB_STATUS, roles.GET_CODE]


@contextmanager
def clock_moved(seconds: float):
    """timezone.now() runs `seconds` ahead; the login's wall-clock stamp does not."""
    later = timezone.now() + timedelta(seconds=seconds)
    with mock.patch("django.utils.timezone.now", return_value=later):
        yield


def api_client(user, tag: str = "proj-a", role_list=None, name: str = "") -> APIClient:
    secret = token_issue(
        user=user,
        tag=tag,
        roles=list(role_list or roles.ALL_ROLES),
        lifetime_seconds=3600,
        name=name,
    ).secret
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


class Agent:
    """One agent process: its token, its id, its session."""

    def __init__(self, client: APIClient, site: str = "site-a", session: str = "s1"):
        self.client, self.site = client, site
        self.id = ""
        self.register(session)

    def register(self, session: str) -> None:
        answer = self.client.post(
            "/api/agent/v1/agents",
            {
                "site": self.site,
                "capabilities": ["local"],
                "functions": [{"name": "hello", "runner": "local"}],
                "session": session,
            },
            format="json",
        )
        assert answer.status_code == 200, answer.content
        self.id, self.session = answer.json()["agent_id"], session

    def offers(self, deploy: bool = True) -> list[dict]:
        answer = self.client.post(
            f"/api/agent/v1/agents/{self.id}/claim",
            {"max": 1, "deploy": deploy, "session": self.session},
            format="json",
        )
        assert answer.status_code == 200, answer.content
        return answer.json().get("deploy", [])

    def download(self, deployment_id: str):
        return self.client.get(
            f"/api/agent/v1/agents/{self.id}/deployments/{deployment_id}/archive"
        )

    def report(self, deployment_id: str, state: str, reason: str = ""):
        return self.client.post(
            f"/api/agent/v1/agents/{self.id}/deployments/{deployment_id}/report",
            {"state": state, "reason": reason, "log_tail": "done"},
            format="json",
        )


@pytest.fixture
def uploader(alice) -> APIClient:
    return api_client(alice, role_list=[roles.POST_CODE], name="ci-build")


@pytest.fixture
def agent(alice) -> Agent:
    return Agent(api_client(alice, role_list=AGENT_ROLES))


@pytest.fixture
def alice_web(alice) -> Client:
    web = Client()
    web.force_login(alice)
    return web


@pytest.fixture
def bob_web(bob) -> Client:
    web = Client()
    web.force_login(bob)
    return web


def send(client: APIClient, data: bytes = SCRIPT, **fields) -> str:
    form = {"function": "hello", "script": _file(data), **fields}
    answer = client.post("/api/v1/code", form, format="multipart")
    assert answer.status_code == 202, answer.content
    return answer.json()["id"]


def _file(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("run.sh", data)


def decide(web: Client, upload_id: str, decision: str = "approve", sha256=DIGEST):
    return web.post(
        f"/ui/code/{upload_id}/decide", {"decision": decision, "sha256": sha256}
    )


def stored(upload_id: str) -> CodeUpload:
    return CodeUpload.objects.get(id=upload_id)


def make_login_stale(web: Client, seconds_ago: int) -> None:
    session = web.session
    session[SESSION_KEY] = int(time.time()) - seconds_ago
    session.save()


# -- the decision page ----------------------------------------------------------------


def test_a_login_stamps_the_session_with_its_time(alice_web):
    stamp = alice_web.session[SESSION_KEY]
    assert isinstance(stamp, int) and abs(time.time() - stamp) < 5


def test_the_inbox_shows_what_exactly_alice_is_asked_to_approve(uploader, alice_web):
    upload_id = send(uploader, commit="0123abcd", description="greets the world")

    page = alice_web.get("/ui/requests")

    assert page.status_code == 200
    html = page.content.decode()
    assert f'data-id="{upload_id}"' in html
    assert f'<code class="sha256">{DIGEST}</code>' in html
    assert f"{len(SCRIPT)} bytes" in html
    assert "<li><code>run</code></li>" in html
    assert "<strong>hello</strong>" in html
    assert "<strong>ci-build</strong>" in html
    assert '<code class="commit">0123abcd</code>' in html
    assert "from 127.0.0.1" in html
    assert "greets the world" in html
    assert 'id="reauth"' not in html


def test_the_inbox_shows_an_archives_file_names_and_preparation_step(
    uploader, alice_web
):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("run", "tools/build.sh"):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(SCRIPT), 0o755
            archive.addfile(info, io.BytesIO(SCRIPT))
    answer = uploader.post(
        "/api/v1/code",
        {"function": "hello", "archive": _file(buffer.getvalue()), "prepare": "run"},
        format="multipart",
    )
    assert answer.status_code == 202

    html = alice_web.get("/ui/requests").content.decode()

    assert "<li><code>tools/build.sh</code></li>" in html
    assert "Preparation step: <code>run</code>" in html
    assert hashlib.sha256(buffer.getvalue()).hexdigest() in html


def test_bob_does_not_see_alices_upload_in_his_inbox(uploader, bob_web):
    upload_id = send(uploader)
    html = bob_web.get("/ui/requests").content.decode()
    assert upload_id not in html and DIGEST not in html


# -- approving, then deploying ---------------------------------------------------------


def test_approved_code_is_offered_once_downloaded_and_reported_deployed(
    uploader, alice_web, agent
):
    upload_id = send(uploader)

    answer = decide(alice_web, upload_id)

    assert answer.status_code == 302 and answer["Location"] == "/ui/requests"
    assert stored(upload_id).state == "approved"
    assert stored(upload_id).decided_by == "alice"
    [offer] = agent.offers()
    assert offer["upload_id"] == upload_id
    assert offer["sha256"] == DIGEST
    assert offer["format"] == "script" and offer["function"] == "hello"
    assert offer["size"] == len(SCRIPT)

    download = agent.download(offer["id"])
    assert download.status_code == 200
    assert download.content == SCRIPT
    assert download["X-HPCSerA-SHA256"] == DIGEST

    report = agent.report(offer["id"], "deployed")
    assert report.status_code == 200 and report.json()["state"] == "deployed"
    status = uploader.get(f"/api/v1/code/{upload_id}").json()
    assert status["state"] == "approved"
    [deployment] = status["deployments"]
    assert deployment["agent_id"] == agent.id and deployment["state"] == "deployed"
    assert agent.offers() == []


def test_a_stale_login_cannot_approve(uploader, alice_web, agent, settings):
    upload_id = send(uploader)
    make_login_stale(alice_web, settings.HPCSERA["RECENT_LOGIN_SECONDS"] + 1)

    answer = decide(alice_web, upload_id)

    assert answer.status_code == 403
    assert 'id="reauth"' in answer.content.decode()
    assert stored(upload_id).state == "pending"
    assert agent.offers() == []


def test_a_login_just_inside_the_window_may_approve(uploader, alice_web, settings):
    upload_id = send(uploader)
    make_login_stale(alice_web, settings.HPCSERA["RECENT_LOGIN_SECONDS"] - 5)
    assert decide(alice_web, upload_id).status_code == 302
    assert stored(upload_id).state == "approved"


def test_a_stale_login_may_still_deny(uploader, alice_web, settings):
    upload_id = send(uploader)
    make_login_stale(alice_web, settings.HPCSERA["RECENT_LOGIN_SECONDS"] + 1)
    assert decide(alice_web, upload_id, "deny").status_code == 302
    assert stored(upload_id).state == "denied"


def test_approving_after_expiry_is_refused_and_the_bytes_are_deleted(
    uploader, alice_web, agent, settings
):
    upload_id = send(uploader)

    with clock_moved(settings.HPCSERA["CODE_CONSENT_SECONDS"] + 1):
        answer = decide(alice_web, upload_id)

    assert answer.status_code == 409
    assert "expired" in answer.content.decode()
    upload = stored(upload_id)
    assert upload.state == "expired" and bytes(upload.content) == b""
    assert "deleted" in upload.reason
    assert agent.offers() == []


def test_an_upload_expires_unapproved_even_if_nobody_decides(
    uploader, alice_web, settings
):
    upload_id = send(uploader)
    with clock_moved(settings.HPCSERA["CODE_CONSENT_SECONDS"] + 1):
        status = uploader.get(f"/api/v1/code/{upload_id}").json()
    assert status["state"] == "expired" and "deleted" in status["reason"]
    assert bytes(stored(upload_id).content) == b""


def test_bob_cannot_decide_alices_upload(uploader, bob_web):
    upload_id = send(uploader)
    for decision in ("approve", "deny"):
        assert decide(bob_web, upload_id, decision).status_code == 404
    upload = stored(upload_id)
    assert upload.state == "pending" and bytes(upload.content) == SCRIPT


def test_an_approval_is_single_use(uploader, alice_web):
    upload_id = send(uploader)
    assert decide(alice_web, upload_id).status_code == 302
    first = stored(upload_id).decided_at

    for decision in ("approve", "deny"):
        again = decide(alice_web, upload_id, decision)
        assert again.status_code == 409
        assert "already approved" in again.content.decode()
    upload = stored(upload_id)
    assert upload.state == "approved" and upload.decided_at == first
    assert bytes(upload.content) == SCRIPT


def test_an_approval_naming_other_bytes_is_refused(uploader, alice_web, agent):
    upload_id = send(uploader)

    for shown in ("0" * 64, "", DIGEST.upper()):
        answer = decide(alice_web, upload_id, sha256=shown)
        assert answer.status_code == 409
        assert "other bytes" in answer.content.decode()

    assert stored(upload_id).state == "pending"
    assert agent.offers() == []


def test_bytes_changed_in_the_database_before_approval_are_not_approved(
    uploader, alice_web, agent
):
    upload_id = send(uploader)
    CodeUpload.objects.filter(id=upload_id).update(content=b"#!/bin/sh\nrm -rf ~\n")

    answer = decide(alice_web, upload_id, sha256=DIGEST)

    assert answer.status_code == 409 and "other bytes" in answer.content.decode()
    assert stored(upload_id).state == "pending"
    assert agent.offers() == []


def test_denying_deletes_the_bytes_and_offers_nothing(uploader, alice_web, agent):
    upload_id = send(uploader)

    assert decide(alice_web, upload_id, "deny").status_code == 302

    upload = stored(upload_id)
    assert upload.state == "denied" and bytes(upload.content) == b""
    assert "deleted" in upload.reason
    assert agent.offers() == []
    assert decide(alice_web, upload_id).status_code == 409


def test_a_new_upload_for_the_same_function_needs_its_own_approval(
    uploader, alice_web, agent
):
    first = send(uploader)
    assert decide(alice_web, first).status_code == 302
    [offer] = agent.offers()
    assert agent.report(offer["id"], "deployed").status_code == 200

    second = send(uploader, b"#!/bin/sh\necho something else\n")

    assert stored(second).state == "pending"
    assert agent.offers() == []
    Agent.register(agent, "s2")  # not even after a restart
    assert agent.offers() == []


# -- who is offered what ---------------------------------------------------------------


def test_a_token_without_get_code_gets_no_offers(alice, uploader, alice_web):
    upload_id = send(uploader)
    assert decide(alice_web, upload_id).status_code == 302
    plain = Agent(api_client(alice, role_list=[roles.GET_JOB, roles.UPDATE_JOB_STATUS]))

    assert plain.offers() == []
    assert not Deployment.objects.exists()


def test_an_agent_that_did_not_ask_for_deployments_gets_none(
    uploader, alice_web, agent
):
    assert decide(alice_web, send(uploader)).status_code == 302
    assert agent.offers(deploy=False) == []
    assert len(agent.offers()) == 1


def test_an_upload_naming_a_site_goes_only_to_that_sites_agent(alice, alice_web):
    uploader = api_client(alice, role_list=[roles.POST_CODE])
    upload_id = send(uploader, site="site-b")
    assert decide(alice_web, upload_id).status_code == 302
    site_a = Agent(api_client(alice, role_list=AGENT_ROLES), site="site-a")
    site_b = Agent(api_client(alice, role_list=AGENT_ROLES), site="site-b")

    assert site_a.offers() == []
    assert [o["upload_id"] for o in site_b.offers()] == [upload_id]


def test_agents_of_another_tag_or_user_get_nothing(alice, bob, uploader, alice_web):
    assert decide(alice_web, send(uploader)).status_code == 302
    other_tag = Agent(api_client(alice, tag="proj-b", role_list=AGENT_ROLES))
    bobs = Agent(api_client(bob, role_list=AGENT_ROLES))
    assert other_tag.offers() == [] and bobs.offers() == []


def test_one_agent_process_is_offered_a_deployment_once_a_restarted_one_again(
    uploader, alice_web, agent
):
    assert decide(alice_web, send(uploader)).status_code == 302
    [offer] = agent.offers()
    assert agent.offers() == []

    agent.register("s2")

    [again] = agent.offers()
    assert again["id"] == offer["id"]
    assert agent.offers() == []
    assert Deployment.objects.get().session == "s2"


def test_the_long_poll_of_a_replaced_agent_process_takes_no_offer(
    uploader, alice_web, agent
):
    assert decide(alice_web, send(uploader)).status_code == 302
    agent.register("s2")  # a new process started; s1's long-poll is still held
    agent.session = "s1"

    assert agent.offers() == []

    agent.session = "s2"
    [offer] = agent.offers()
    assert Deployment.objects.get(id=offer["id"]).session == "s2"


def test_a_finished_deployment_is_not_offered_to_a_restarted_agent(
    uploader, alice_web, agent
):
    assert decide(alice_web, send(uploader)).status_code == 302
    [offer] = agent.offers()
    assert agent.report(offer["id"], "failed", "no disk").status_code == 200

    agent.register("s2")

    assert agent.offers() == []


def test_reporting_the_same_end_twice_is_fine_another_end_is_409(
    uploader, alice_web, agent
):
    assert decide(alice_web, send(uploader)).status_code == 302
    [offer] = agent.offers()

    assert agent.report(offer["id"], "deployed").status_code == 200
    assert agent.report(offer["id"], "deployed").status_code == 200
    other = agent.report(offer["id"], "failed", "changed my mind")

    assert other.status_code == 409 and other.json()["code"] == "deployment_ended"
    assert Deployment.objects.get().state == "deployed"


def test_a_report_as_the_agent_sends_it_is_accepted(uploader, alice_web, agent):
    # hpcsera_agent.deploy.Result.report(): an empty reason on success.
    assert decide(alice_web, send(uploader)).status_code == 302
    [offer] = agent.offers()
    answer = agent.client.post(
        f"/api/agent/v1/agents/{agent.id}/deployments/{offer['id']}/report",
        {"state": "deployed", "reason": "", "log_tail": ""},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    assert Deployment.objects.get().state == "deployed"


def test_a_report_with_only_its_state_is_accepted(uploader, alice_web, agent):
    assert decide(alice_web, send(uploader)).status_code == 302
    [offer] = agent.offers()
    answer = agent.client.post(
        f"/api/agent/v1/agents/{agent.id}/deployments/{offer['id']}/report",
        {"state": "failed"},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    deployment = Deployment.objects.get()
    assert deployment.state == "failed" and deployment.log_tail == ""


def test_the_bytes_cannot_be_downloaded_after_the_deployment_ended(
    uploader, alice_web, agent
):
    assert decide(alice_web, send(uploader)).status_code == 302
    [offer] = agent.offers()
    assert agent.report(offer["id"], "deployed").status_code == 200

    answer = agent.download(offer["id"])

    assert answer.status_code == 409 and answer.json()["code"] == "deployment_ended"


def test_another_agents_deployment_is_not_found(alice, bob, uploader, alice_web, agent):
    assert decide(alice_web, send(uploader)).status_code == 302
    [offer] = agent.offers()
    site_b = Agent(api_client(alice, role_list=AGENT_ROLES), site="site-b")
    bobs = Agent(api_client(bob, role_list=AGENT_ROLES))

    for stranger in (site_b, bobs):
        assert stranger.download(offer["id"]).status_code == 404
        assert stranger.report(offer["id"], "failed").status_code == 404
    assert Deployment.objects.get(id=offer["id"]).state == "offered"


def test_operators_see_uploads_in_the_admin_but_never_the_code(uploader, alice_web):
    upload_id = send(uploader)
    decide(alice_web, upload_id)
    root = get_user_model().objects.create_superuser("root", password="pw-root-1")
    operator = Client()
    operator.force_login(root)

    listing = operator.get("/admin/consent/codeupload/")
    page = operator.get(f"/admin/consent/codeupload/{upload_id}/change/")

    assert listing.status_code == 200 and DIGEST in listing.content.decode()
    assert page.status_code == 200
    assert SCRIPT.decode() not in page.content.decode()
    assert operator.get("/admin/consent/codeupload/add/").status_code == 403
    assert stored(upload_id).state == CodeUpload.State.APPROVED


def test_a_decision_that_is_neither_approve_nor_deny_changes_nothing(
    uploader, alice_web
):
    upload_id = send(uploader)

    answer = alice_web.post(
        f"/ui/code/{upload_id}/decide", {"decision": "maybe", "sha256": DIGEST}
    )

    assert answer.status_code == 400
    assert stored(upload_id).state == CodeUpload.State.PENDING
    assert bytes(stored(upload_id).content) == SCRIPT


@pytest.mark.parametrize(
    "body",
    [{"state": "installed"}, {"state": "deployed", "reason": "x" * 2001}, {}],
)
def test_a_malformed_deployment_report_is_refused_and_changes_nothing(
    uploader, alice_web, agent, body
):
    decide(alice_web, send(uploader))
    [offer] = agent.offers()

    answer = agent.client.post(
        f"/api/agent/v1/agents/{agent.id}/deployments/{offer['id']}/report",
        body,
        format="json",
    )

    assert answer.status_code == 400 and answer.json()["code"] == "invalid_input"
    assert Deployment.objects.get(id=offer["id"]).state == "offered"
