"""The address policy and the request target: pure functions, no network."""

from __future__ import annotations

import ipaddress

import pytest

from itm.config import Settings
from itm.job.urls import address_kind, address_refusal, check_url, target_of
from itm.outcomes import Failure

DEFAULTS = Settings()
PRIVATE = Settings(allow_private_addresses=True)
LINK_LOCAL = Settings(allow_link_local_addresses=True)


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:7f00:1::", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("192.0.2.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.255", "carrier-grade NAT"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        # Special-purpose ranges (IANA) that ipaddress's flags miss or might miss.
        ("192.0.0.8", "private"),  # IETF protocol assignments, 192.0.0.0/24
        ("192.0.0.100", "private"),
        ("192.0.0.170", "private"),
        ("198.18.0.1", "private"),  # benchmarking, 198.18.0.0/15
        ("198.19.255.254", "private"),
        ("198.51.100.7", "private"),  # documentation
        ("203.0.113.7", "private"),
        ("192.88.99.1", "reserved"),  # deprecated 6to4 relay anycast
        ("255.0.0.1", "reserved"),  # 240.0.0.0/4
        ("fec0::1", "private"),  # deprecated site-local, fec0::/10
        ("feff:ffff::1", "private"),
        ("3fff::1", "private"),  # documentation, 3fff::/20
        ("3fff:fff:ffff::1", "private"),
        ("2001:db8::1", "private"),  # documentation, 2001:db8::/32
        ("2001:2::1", "private"),  # benchmarking, 2001:2::/48
        ("2001::1", "private"),  # Teredo, in IETF protocol assignments 2001::/23
        ("5f00::1", "reserved"),  # SRv6 segment identifiers, 5f00::/16
        ("100::1", "reserved"),  # discard-only, 100::/64
        ("100:0:0:1::1", "reserved"),  # dummy prefix, 100:0:0:1::/64
        ("64:ff9b:1::1", "reserved"),  # local-use IPv4/IPv6 translation
        ("4000::1", "reserved"),  # not allocated by IANA
        ("::127.0.0.1", "reserved"),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("64:ff9b::808:808", None),
        ("172.32.0.1", None),
        ("3fff:1000::1", None),  # just past 3fff::/20
        ("fe7f::1", "reserved"),  # just below fec0::/10: fe00::/9 is reserved
        ("192.0.1.1", None),  # just past 192.0.0.0/24
        ("2620:4f:8000::1", None),  # AS112: globally reachable
        ("100.128.0.1", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "address, defaults, private, link_local",
    [
        ("8.8.8.8", True, True, True),
        ("127.0.0.1", False, True, False),
        ("10.0.0.1", False, True, False),
        ("100.64.0.1", False, True, False),
        ("169.254.169.254", False, False, True),  # metadata: its own, second flag
        ("0.0.0.0", False, False, False),  # reaches this machine: never
        ("224.0.0.1", False, False, False),
    ],
)
def test_each_flag_lifts_its_own_ranges(
    address: str, defaults: bool, private: bool, link_local: bool
) -> None:
    ip = ipaddress.ip_address(address)
    allowed = [
        address_refusal(ip, settings) is None for settings in (DEFAULTS, PRIVATE, LINK_LOCAL)
    ]
    assert allowed == [defaults, private, link_local]


def test_refusals_say_how_to_allow() -> None:
    assert "--allow-private-addresses" in address_refusal(ipaddress.ip_address("::1"), DEFAULTS)
    metadata = address_refusal(ipaddress.ip_address("169.254.169.254"), PRIVATE)
    assert "--allow-link-local-addresses" in metadata and "credentials" in metadata
    assert "never" in address_refusal(ipaddress.ip_address("0.0.0.0"), PRIVATE)


@pytest.mark.parametrize(
    "line",
    [
        "http://user:secret@example.com/a.jpg",
        "http://user@example.com/a.jpg",
        "https://:secret@example.com/",
        "http://***@example.com/",
        "http://a@b@example.com/",
        # Spellings a browser or a parser takes for userinfo, and passwords with an
        # unencoded delimiter (Python would read a port "p4ss" and quote it).
        "http://user:p4ss/secret@example.com/a.jpg",
        "http://user:p4ss?secret@example.com/",
        "http://user:p4ss#secret@example.com/",
        "//user:secret@example.com/a.jpg",
        "http:user:secret@example.com/a.jpg",
        "http:\\\\user:secret@example.com\\a.jpg",
        "HTTPS:/user:secret@example.com/",
        "http://example.com\\user:secret@example.com/",
    ],
)
def test_credentials_are_refused_and_never_shown(line: str) -> None:
    with pytest.raises(Failure) as caught:
        check_url(line)
    assert caught.value.reason == "invalid_url"
    detail = caught.value.detail
    assert "credentials" in detail and "secret" not in detail and "p4ss" not in detail


@pytest.mark.parametrize(
    "url, tls, host, port, host_header, path",
    [
        ("http://example.com", False, "example.com", 80, "example.com", "/"),
        (
            "HTTPS://Example.COM:8443/a%20b/é.jpg?x=1#frag",
            True,
            "example.com",
            8443,
            "example.com:8443",
            "/a%20b/%C3%A9.jpg?x=1",
        ),
        ("http://[::1]:5000/a.png", False, "::1", 5000, "[::1]:5000", "/a.png"),
        (
            "http://bücher.example/a",
            False,
            "xn--bcher-kva.example",
            80,
            "xn--bcher-kva.example",
            "/a",
        ),
    ],
)
def test_targets(url: str, tls: bool, host: str, port: int, host_header: str, path: str) -> None:
    target = target_of(check_url(url))
    assert (target.tls, target.host, target.port, target.host_header, target.path) == (
        tls,
        host,
        port,
        host_header,
        path,
    )
