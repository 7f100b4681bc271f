"""The URL check: only http(s) URLs with a host get past it."""

from __future__ import annotations

import pytest

from itm.job.urls import MAX_URL_LENGTH, check_url, redirect_url, shown_url, target_of
from itm.outcomes import Failure


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
