"""Which source address the audit log and the consent page show."""

from __future__ import annotations

import ipaddress

import pytest
from django.test import RequestFactory

from tokens.audit import client_ip


@pytest.fixture
def behind_proxy(settings):
    settings.HPCSERA = {
        **settings.HPCSERA,
        "TRUSTED_PROXIES": (ipaddress.ip_network("10.0.0.0/8"),),
    }


def request(remote: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_without_trusted_proxies_the_header_is_ignored(settings):
    settings.HPCSERA = {**settings.HPCSERA, "TRUSTED_PROXIES": ()}
    assert client_ip(request("10.0.0.5", "198.51.100.7")) == "10.0.0.5"


def test_behind_a_trusted_proxy_the_client_it_saw_is_shown(behind_proxy):
    assert client_ip(request("10.0.0.5", "198.51.100.7")) == "198.51.100.7"


def test_an_address_the_client_wrote_itself_is_not_believed(behind_proxy):
    # The client sent "X-Forwarded-For: 192.0.2.1"; the proxy appended its peer.
    shown = client_ip(request("10.0.0.5", "192.0.2.1, 198.51.100.7"))
    assert shown == "198.51.100.7"


def test_chains_of_trusted_proxies_are_walked(behind_proxy):
    assert client_ip(request("10.0.0.5", "198.51.100.7, 10.1.2.3")) == "198.51.100.7"


def test_a_header_from_an_untrusted_peer_is_ignored(behind_proxy):
    assert client_ip(request("203.0.113.9", "198.51.100.7")) == "203.0.113.9"


def test_a_garbled_header_keeps_the_proxys_address(behind_proxy):
    assert client_ip(request("10.0.0.5", "not-an-address")) == "10.0.0.5"


def test_a_bad_setting_is_refused_at_start(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from hpcsera import env

    monkeypatch.setenv("HPCSERA_TRUSTED_PROXIES", "10.0.0.0/8, nonsense")
    with pytest.raises(ImproperlyConfigured, match="nonsense"):
        env.networks("HPCSERA_TRUSTED_PROXIES")
