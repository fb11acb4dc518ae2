"""The web UI in a real headless Chromium, logging in through a real OpenID
provider (django-oauth-toolkit, its own process on loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from tests import harness

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("HPCSERA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALICE = ("alice", "correct-horse-alice")


@pytest.fixture(scope="module")
def sso(tmp_path_factory):  # noqa: ANN001, ANN201
    tmp = tmp_path_factory.mktemp("sso")
    port = harness.free_port()
    provider = harness.start_provider(
        tmp, f"http://127.0.0.1:{port}/oidc/callback/", [":".join(ALICE)]
    )
    server = harness.start_server(tmp, port=port, **provider.rp_settings())
    yield server, provider
    server.stop()
    provider.stop()


@pytest.fixture(scope="module")
def page(tmp_path_factory):  # noqa: ANN001, ANN201
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is needed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        context = browser.new_context()
        yield context.new_page()
        browser.close()


def log_in(page, server) -> None:  # noqa: ANN001
    page.goto(server.url + "/ui/")
    page.click("#sso-login")
    page.fill("input[name=username]", ALICE[0])
    page.fill("input[name=password]", ALICE[1])
    page.click("#op-login")
    page.wait_for_url(server.url + "/ui/tokens")


def test_log_in_create_a_token_use_it_revoke_it(sso, page, tmp_path):
    server, _ = sso
    log_in(page, server)
    assert "alice" in page.inner_text("header")

    page.fill("input[name=name]", "laptop")
    page.fill("input[name=tag]", "proj-a")
    page.check("input[value=GET_JobStatus]")
    page.check("input[value=POST_Job]")
    page.select_option("select[name=lifetime]", str(24 * 3600))
    page.click("#new-token button[type=submit]")
    secret = page.inner_text("#token-secret").strip()
    page.screenshot(path=str(tmp_path / "token-created.png"))
    assert secret.startswith("hpcsera_")

    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {secret}"
    assert api.get(server.url + "/api/v1/jobs", timeout=10).status_code == 200

    page.goto(server.url + "/ui/tokens")
    prefix = secret.split("_")[1]
    page.click(f"tr[data-prefix='{prefix}'] button")
    assert "revoked" in page.inner_text(f"tr[data-prefix='{prefix}']")
    answer = api.get(server.url + "/api/v1/jobs", timeout=10)
    assert answer.status_code == 401 and answer.json()["code"] == "token_revoked"

    page.goto(server.url + "/ui/audit")
    audit = page.inner_text("main")
    assert "Token created" in audit and "Token revoked" in audit and "Login" in audit


def test_a_bad_token_form_shows_errors_and_creates_nothing(sso, page):
    server, _ = sso
    page.goto(server.url + "/ui/tokens")
    if "/ui/login" in page.url:
        log_in(page, server)
    before = page.locator("#token-list tr").count()
    page.fill("input[name=tag]", "Not A Tag")
    page.click("#new-token button[type=submit]")
    text = page.inner_text("#new-token")
    assert "1 to 63 characters" in text and "Choose at least one role" in text
    page.goto(server.url + "/ui/tokens")
    assert page.locator("#token-list tr").count() == before
