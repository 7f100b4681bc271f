"""What may be fetched: the URL check of an input line, and the address policy.

Pure functions, no network: the downloader resolves each host once, asks
``address_refusal`` about every address, and connects only to one that passed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from requests.utils import requote_uri

from itm.config import Settings
from itm.job.lines import MAX_LINE
from itm.outcomes import Failure, Reason
from itm.redaction import has_userinfo, redact

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host": 0.0.0.0 reaches localhost
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Special-purpose ranges (IANA's registries) that ``ipaddress``'s flags call global.
_SPECIAL: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(network), kind)
    for network, kind in (
        ("192.0.0.0/24", "private"),  # IETF protocol assignments (DS-Lite, dummy, PCP...)
        ("192.88.99.0/24", "reserved"),  # deprecated 6to4 relay anycast (RFC 7526)
        ("fec0::/10", "private"),  # deprecated site-local: the intranet range before fc00::/7
        ("3fff::/20", "private"),  # documentation (RFC 9637), as 2001:db8::/32 is
        ("5f00::/16", "reserved"),  # SRv6 segment identifiers (RFC 9602)
        ("100:0:0:1::/64", "reserved"),  # dummy prefix (RFC 9780)
    )
)
PRIVATE_FLAG = "--allow-private-addresses (ITM_ALLOW_PRIVATE_ADDRESSES=1)"
LINK_LOCAL_FLAG = "--allow-link-local-addresses (ITM_ALLOW_LINK_LOCAL_ADDRESSES=1)"


def shown_url(line: str) -> str:
    """A line as itm stores and serves it: its secrets masked (``redaction.redact``), cut to
    ``MAX_URL_LENGTH`` characters. The URL fetched is the line itself.

    Redacted before it is cut, so that no secret is half kept; of a longer line, only
    the ``MAX_LINE + 1`` characters that ``read_lines`` keeps are looked at.
    """
    return redact(line[: MAX_LINE + 1])[:MAX_URL_LENGTH]


def check_url(line: str) -> str:
    """Return the URL of an input line, or raise ``Failure(Reason.INVALID_URL, …)``.

    Only absolute http and https URLs with a host pass; ``file://`` and every other
    scheme are refused here, so they are never opened. So are URLs carrying
    ``user:password@``, in any spelling (``redaction.has_userinfo``): itm never sends
    credentials found in a list, and no detail quotes a piece of them.
    """
    if len(line) > MAX_LINE:
        raise Failure(Reason.INVALID_URL, f"line too long: over {MAX_LINE:,} characters")
    url = line.strip()
    if not url:
        raise Failure(Reason.INVALID_URL, "empty line")
    if len(url) > MAX_URL_LENGTH:
        raise Failure(Reason.INVALID_URL, f"URL longer than {MAX_URL_LENGTH} characters")
    if "\ufffd" in url:
        raise Failure(Reason.INVALID_URL, "line is not valid UTF-8")
    if has_userinfo(url):
        raise Failure(
            Reason.INVALID_URL,
            "URL carries user:password@ credentials: itm never sends them "
            "(and stores the line with *** in their place)",
        )
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise Failure(Reason.INVALID_URL, "URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise Failure(Reason.INVALID_URL, f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"'{scheme}'" if scheme else "none"
        raise Failure(Reason.INVALID_URL, f"scheme {shown} is not http or https")
    if not parts.hostname:
        raise Failure(Reason.INVALID_URL, "URL has no host")
    if port == 0:
        raise Failure(Reason.INVALID_URL, "port 0")
    return url


@dataclass(frozen=True)
class Target:
    """Where one request goes: the host to resolve, and what to send it."""

    tls: bool
    host: str  # ASCII (IDNA) host name or address literal, without brackets
    port: int
    host_header: str
    path: str  # path and query, percent-encoded; the fragment stays home


def target_of(url: str) -> Target:
    """The request for a URL that ``check_url`` accepted."""
    parts = urlsplit(url)
    try:
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise Failure(Reason.INVALID_URL, f"host name is not valid: {exc}") from None
    tls = parts.scheme.lower() == "https"
    port = parts.port or (443 if tls else 80)
    literal = f"[{host}]" if ":" in host else host
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        tls, host, port, literal + (f":{parts.port}" if parts.port else ""), requote_uri(path)
    )


def redirect_url(url: str, location: str) -> str:
    """The checked URL a redirect's ``Location`` leads to from ``url``.

    The host is left as it is, so that ``target_of`` IDNA-encodes it as it does an
    input line's (``bücher.example``, not ``b%C3%BCcher.example``); the rest is
    percent-encoded where a server left it raw (spaces happen).
    """
    parts = urlsplit(urljoin(url, location))
    return check_url(
        urlunsplit(
            parts._replace(
                path=requote_uri(parts.path),
                query=requote_uri(parts.query),
                fragment=requote_uri(parts.fragment),
            )
        )
    )


def address_refusal(address: IPAddress, settings: Settings) -> str | None:
    """``None`` when itm may connect to ``address``; otherwise why not, and the flag to allow it.

    Only globally routable addresses pass by default. IPv6 forms that carry an IPv4
    address (``::ffff:127.0.0.1``, NAT64, 6to4) are judged by that address.
    """
    kind = address_kind(address)
    if kind is None:
        return None
    an = "an" if kind[0] in "aeiou" else "a"
    if kind in ("loopback", "private", "carrier-grade NAT"):
        if settings.allow_private_addresses:
            return None
        return f"{an} {kind} address; allow with {PRIVATE_FLAG}"
    if kind == "link-local":
        if settings.allow_link_local_addresses:
            return None
        return (
            f"a link-local address (where cloud metadata services hand out credentials); "
            f"allow with {LINK_LOCAL_FLAG}"
        )
    return f"{an} {kind} address, never fetched"


def address_kind(address: IPAddress) -> str | None:
    """The kind of a non-public address (``loopback``, ``private``…), ``None`` if public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_kind(embedded)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address in _SHARED:
        return "carrier-grade NAT"
    for network, kind in _SPECIAL:
        if address in network:
            return kind
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "private"
    return None
