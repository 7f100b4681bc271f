"""Checking an input line before anything is fetched: http(s) URLs only."""

from __future__ import annotations

from urllib.parse import urlsplit

from itm.errors import Failure

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")


def check_url(line: str) -> str:
    """Return the URL of an input line, or raise ``Failure("invalid_url", …)``.

    Only absolute http and https URLs with a host pass; ``file://`` and every other
    scheme are refused here, so they are never opened.
    """
    url = line.strip()
    if not url:
        raise Failure("invalid_url", "empty line")
    if len(url) > MAX_URL_LENGTH:
        raise Failure("invalid_url", f"URL longer than {MAX_URL_LENGTH} characters")
    if "\ufffd" in url:
        raise Failure("invalid_url", "line is not valid UTF-8")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise Failure("invalid_url", "URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise Failure("invalid_url", f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"'{scheme}'" if scheme else "none"
        raise Failure("invalid_url", f"scheme {shown} is not http or https")
    if not parts.hostname:
        raise Failure("invalid_url", "URL has no host")
    if port == 0:
        raise Failure("invalid_url", "port 0")
    return url
