"""The SSRF guard on callback URLs. Nothing here connects anywhere: literal
addresses are checked as they are, names go through a stand-in resolver."""

from __future__ import annotations

import pytest

from jobs import ssrf

pytestmark = pytest.mark.django_db


def resolver_of(*addresses: str) -> ssrf.Resolver:
    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


@pytest.fixture
def no_loopback(settings):
    settings.HPCSERA = {**settings.HPCSERA, "CALLBACK_ALLOW_LOOPBACK": False}


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://127.8.9.10:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.10.1/hook", "link_local"),
        ("http://[fe80::1]/hook", "link_local"),
        ("http://10.1.2.3/hook", "private"),
        ("http://172.16.0.9/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://[fc00::5]/hook", "private"),
        ("http://[fd12:3456::1]/hook", "private"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[ff02::1]/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[::]/hook", "unspecified"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://100.64.0.1/hook", "not_global"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fd00:ec2::254]/latest", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://[2002:a9fe:a9fe::1]/", "metadata"),
        ("http://[2002:a00:1::1]/", "private"),
        ("http://[64:ff9b::a9fe:a9fe]/", "reserved"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://METADATA.google.internal./x", "metadata"),
    ],
)
def test_it_refuses_each_kind_of_internal_address(no_loopback, url, reason):
    with pytest.raises(ssrf.Refused) as refused:
        ssrf.check(url, resolver_of("93.184.215.14"))
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.7", "private"),
        ("169.254.169.254", "metadata"),
        ("fe80::1%eth0", "link_local"),
    ],
)
def test_it_refuses_a_name_that_resolves_to_an_internal_address(
    no_loopback, address, reason
):
    with pytest.raises(ssrf.Refused) as refused:
        ssrf.check("https://hooks.example.org/x", resolver_of(address))
    assert refused.value.reason == reason


def test_one_internal_address_among_public_ones_is_enough_to_refuse(no_loopback):
    with pytest.raises(ssrf.Refused) as refused:
        ssrf.check(
            "https://hooks.example.org/x", resolver_of("93.184.215.14", "10.0.0.1")
        )
    assert refused.value.reason == "private"


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://hooks.example.org/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://hooks.example.org/", "scheme"),
        ("https://user:pw@hooks.example.org/x", "userinfo"),
        ("https://user@hooks.example.org/x", "userinfo"),
        ("https:///x", "malformed"),
        ("https://hooks.example.org:99999/x", "malformed"),
        ("https://hooks.example.org/a b", "malformed"),
        ("", "malformed"),
    ],
)
def test_it_refuses_other_schemes_credentials_and_malformed_urls(url, reason):
    with pytest.raises(ssrf.Refused) as refused:
        ssrf.check(url, resolver_of("93.184.215.14"))
    assert refused.value.reason == reason


def test_a_name_that_does_not_resolve_is_refused():
    with pytest.raises(ssrf.Refused) as refused:
        ssrf.check("https://nowhere.invalid/x", resolver_of())
    assert refused.value.reason == "unresolvable"


def test_a_public_name_is_pinned_to_the_address_that_was_checked():
    target = ssrf.check(
        "https://Hooks.Example.org:8443/in?x=1", resolver_of("93.184.215.14")
    )
    assert target == ssrf.Target(
        "https", "hooks.example.org", 8443, "/in?x=1", "93.184.215.14"
    )


def test_the_loopback_setting_lets_only_loopback_through(settings):
    settings.HPCSERA = {**settings.HPCSERA, "CALLBACK_ALLOW_LOOPBACK": True}
    assert ssrf.check("http://127.0.0.1:9/x").address == "127.0.0.1"
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://[fe80::1]/"):
        with pytest.raises(ssrf.Refused):
            ssrf.check(url)
