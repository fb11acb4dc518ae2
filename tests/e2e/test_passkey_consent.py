"""Approving runs with a passkey, from end to end: alice registers a passkey
in Chromium (a virtual authenticator, over CDP), pins its public key in a real
agent's config (verify = "passkey"), and approves a run with it. An approval
signed only with the server's key runs nothing on that agent.

WebAuthn needs a secure context and a domain as RP id, so the browser reaches
this server as http://localhost:<port>, not 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests import harness
from tests.e2e.conftest import ALICE, log_in
from tests.e2e.test_code_consent import (
    Owner,
    start_agent,
    wait_offered,
    wait_terminal,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def localhost_sso(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sso-localhost")
    port = harness.free_port()
    provider = harness.start_provider(
        tmp, f"http://localhost:{port}/oidc/callback/", [":".join(ALICE)]
    )
    server = harness.start_server(tmp, port=port, **provider.rp_settings())
    yield server, dataclasses.replace(server, url=f"http://localhost:{port}")
    server.stop()
    provider.stop()


@pytest.fixture
def browser_page(page):
    """A fresh browser context (own cookies) with a virtual authenticator."""
    context = page.context.browser.new_context()
    fresh = context.new_page()
    cdp = context.new_cdp_session(fresh)
    cdp.send("WebAuthn.enable")
    cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    yield fresh
    context.close()


def add_passkey(page, browser_url: str) -> str:
    page.goto(browser_url + "/ui/passkeys")
    page.click("#add-passkey")
    page.wait_for_selector("tr.passkey pre.public-key", timeout=30_000)
    return page.locator("tr.passkey pre.public-key").first.inner_text().strip()


def decide_run(page, browser_url: str, function: str, button: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        page.goto(browser_url + "/ui/requests")
        forms = page.locator("form.run", has_text=function)
        if forms.count():
            break
        assert time.monotonic() < deadline, "no run request appeared"
        time.sleep(0.3)
    run_id = forms.first.get_attribute("data-id")
    forms.first.locator(button).click()
    page.wait_for_function(
        "id => !document.querySelector(`form.run[data-id='${id}']`)",
        arg=run_id,
        timeout=30_000,
    )


def test_a_passkey_approval_runs_and_a_server_key_approval_does_not(
    localhost_sso, browser_page, tmp_path
):
    server, seen_by_browser = localhost_sso
    page = browser_page
    log_in(page, seen_by_browser)
    pem = add_passkey(page, seen_by_browser.url)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    pinned = tmp_path / "passkey.pem"
    pinned.write_text(pem + "\n")
    owner = Owner(server, page, "run-passkey")
    consent_table = (
        '[consent]\nmode = "all"\nverify = "passkey"\n'
        f'passkey_public_key_file = "{pinned}"\nrp_id = "localhost"\n'
        f'origin = "{seen_by_browser.url}"\nwait_seconds = 60\n'
    )
    agent, functions = start_agent(owner, tmp_path, "passkeyed", consent_table)
    marker = tmp_path / "ran"
    harness.install_function(functions, "touch", f"#!/bin/sh\ntouch {marker}\n")
    try:
        wait_offered(owner, "touch")
        call = owner.api.post(server.url + "/alice/async-function/touch", timeout=30)
        decide_run(page, seen_by_browser.url, "touch", "button.approve-passkey")
        status = wait_terminal(owner, call.json()["status_url"])
        assert status["state"] == "succeeded", status
        assert marker.exists()

        marker.unlink()
        call = owner.api.post(server.url + "/alice/async-function/touch", timeout=30)
        decide_run(page, seen_by_browser.url, "touch", "button[value=approve]")
        status = wait_terminal(owner, call.json()["status_url"])
        assert status["state"] == "failed"
        assert "not signed with a passkey" in status["reason"]
        assert not marker.exists()
    finally:
        agent.stop()
