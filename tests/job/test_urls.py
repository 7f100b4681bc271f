"""The URL check, the address policy and the request target: pure functions, no network.

Only http(s) URLs with a host get past the check.
"""

from __future__ import annotations

import ipaddress

import pytest

from itm.config import Settings
from itm.job.urls import (
    MAX_URL_LENGTH,
    address_kind,
    address_refusal,
    check_url,
    redirect_url,
    shown_url,
    target_of,
)
from itm.outcomes import Failure

DEFAULTS = Settings()
PRIVATE = Settings(allow_private_addresses=True)
LINK_LOCAL = Settings(allow_link_local_addresses=True)


@pytest.mark.parametrize(
    "line, url",
    [
        ("https://picsum.photos/200/300", "https://picsum.photos/200/300"),
        ("  http://127.0.0.1:8080/a.jpg \r\n", "http://127.0.0.1:8080/a.jpg"),
        ("HTTPS://Example.com/x?y=1#z", "HTTPS://Example.com/x?y=1#z"),
        ("http://[::1]:5000/a.png", "http://[::1]:5000/a.png"),
        # An "@" after the host is no userinfo; a token is sent (only its record is redacted).
        (
            "https://cdn.example/logo@2x.png?token=s3cr3t",
            "https://cdn.example/logo@2x.png?token=s3cr3t",
        ),
        ("http://example.com:8080/@alice/a.jpg#x@y", "http://example.com:8080/@alice/a.jpg#x@y"),
    ],
)
def test_accepts_http_and_https(line: str, url: str) -> None:
    assert check_url(line) == url


@pytest.mark.parametrize(
    "line, words",
    [
        ("", "empty"),
        ("   \t", "empty"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://example.com/a.jpg", "scheme 'ftp'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("picsum.photos/200/300", "scheme none"),
        ("//picsum.photos/200/300", "scheme none"),
        ("http://", "no host"),
        ("http:///path", "no host"),
        ("http://host:99999/a", "malformed"),
        ("http://host:abc/a", "malformed"),
        ("http://host:0/a", "port 0"),
        ("http://exa mple.com/a", "whitespace"),
        ("http://example.com/\x00", "control"),
        ("http://example.com/\ufffd", "UTF-8"),
        ("http://example.com/" + "a" * 3000, "longer"),
    ],
)
def test_refuses_everything_else(line: str, words: str) -> None:
    with pytest.raises(Failure) as caught:
        check_url(line)
    assert caught.value.reason == "invalid_url"
    assert words in caught.value.detail


def test_a_line_is_shown_redacted_then_cut() -> None:
    """Redacted before it is cut: a long secret is never half stored."""
    assert shown_url("http://h/a.jpg?token=" + "s" * 5000) == "http://h/a.jpg?token=***"
    assert shown_url("http://h/" + "a" * 5000) == "http://h/" + "a" * (MAX_URL_LENGTH - 9)
    assert shown_url("http://user:pa/ss@h/a.jpg") == "http://***@h/a.jpg"


@pytest.mark.parametrize(
    "location, url, host",
    [
        ("http://bücher.example/x.png", "http://bücher.example/x.png", "xn--bcher-kva.example"),
        ("//bücher.example/a b.png", "http://bücher.example/a%20b.png", "xn--bcher-kva.example"),
        ("/ä b.png?q=ü v", "http://a.example/%C3%A4%20b.png?q=%C3%BC%20v", "a.example"),
        ("c.png", "http://a.example/dir/c.png", "a.example"),
        ("/x.png#top", "http://a.example/x.png#top", "a.example"),
    ],
)
def test_a_redirect_keeps_its_host_for_idna_and_encodes_the_rest(
    location: str, url: str, host: str
) -> None:
    assert redirect_url("http://a.example/dir/page", location) == url
    assert target_of(url).host == host


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "http://user:pw@a.example/", "http://exa mple.com/"]
)
def test_a_redirect_is_checked_as_a_line_is(location: str) -> None:
    with pytest.raises(Failure) as caught:
        redirect_url("http://a.example/", location)
    assert caught.value.reason == "invalid_url"


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
