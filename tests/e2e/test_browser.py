"""The web UI in a real headless Chromium, logging in through a real OpenID
provider (django-oauth-toolkit, its own process on loopback)."""

from __future__ import annotations

import pytest
import requests

from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e


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
    log_in(page, server)
    page.goto(server.url + "/ui/tokens")
    before = page.locator("#token-list tr").count()
    page.fill("input[name=tag]", "Not A Tag")
    page.click("#new-token button[type=submit]")
    text = page.inner_text("#new-token")
    assert "1 to 63 characters" in text and "Choose at least one role" in text
    page.goto(server.url + "/ui/tokens")
    assert page.locator("#token-list tr").count() == before
