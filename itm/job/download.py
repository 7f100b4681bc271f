"""Downloading one URL from a server that may be hostile: what to fetch and accept.

Nothing is left to the server:

- one deadline bounds the whole exchange (DNS, connect, TLS, status line, headers,
  every redirect hop, every body, retries): ``itm.job.transport`` shuts the socket
  of a URL down at its deadline;
- redirects are followed hop by hop here; a redirect's body is never read (at most
  a small one that has already arrived, to keep the connection), and every body
  read counts against ``--max-bytes``, decompressed size included;
- each hop's host is resolved (``itm.job.dns``), each address checked
  (``itm.job.urls``), and the connection goes to an address that was checked, so
  DNS cannot swap it; TLS is still verified against the host name;
- only transient faults are tried again, never past the deadline;
- with a ``HostHand`` (``--per-host``), each hop first holds a slot of its host,
  waiting for it within the deadline (``itm.job.host_gate``).

Every way a download can fail ends as one ``Failure`` with a stable ``reason``.
Thread-safe.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import ssl
import time
import zlib
from datetime import datetime, timezone
from typing import Protocol

from itm.config import Settings
from itm.job import dns, transport
from itm.job.trust import trust
from itm.job.urls import Target, address_refusal, check_url, redirect_url, target_of
from itm.outcomes import Failure, Reason

# Worth another try: the server or the path to it may be fine a moment later.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
BACKOFF = 0.25  # seconds before the first retry; doubles each time


class _Transient(Exception):
    """A failure that a retry may cure; ``wait`` is the server's Retry-After, if any."""

    def __init__(self, failure: Failure, wait: float = 0.0) -> None:
        super().__init__(failure)
        self.failure = failure
        self.wait = wait


class HostGate(Protocol):
    """Per-host slots shared by every download of the run (``itm.job.host_gate``)."""

    per_host: int

    def take(self, host: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for a slot of ``host``; False if none came."""

    def give_back(self, host: str, statuses: list[int], retry_after: float | None) -> None:
        """Free a slot of ``host``, reporting the host's answers while it was held."""


def first_host(line: str) -> str | None:
    """The host the first hop of ``line`` talks to, as ``HostHand`` names it; ``None`` for
    a line that is no URL to fetch."""
    try:
        return target_of(check_url(line)).host
    except Failure:
        return None


def fetch(line: str, settings: Settings, hand: HostHand | None = None) -> bytes:
    """The body of the URL on ``line``, or raise ``Failure``.

    Retries only transient faults (connection errors, 429, 502, 503, 504), with
    exponential backoff or the server's ``Retry-After``, and never past the URL's
    deadline: a wait that would end past it fails at once. With a ``hand`` (the
    calling thread's, under ``--per-host``), every hop holds a slot of its host
    (waiting for it counts against the deadline); none is held during a pause
    between two tries, nor after the URL.
    """
    url = check_url(line)
    hand = hand or HostHand(None)
    with hand, transport.Exchange(time.monotonic() + settings.deadline) as exchange:
        attempt = 0
        while True:
            try:
                return _attempt(url, exchange, hand, settings)
            except _Transient as transient:
                pause = max(BACKOFF * 2**attempt, transient.wait)
                if attempt == settings.retries or time.monotonic() + pause >= exchange.deadline:
                    raise transient.failure from None
                hand.leave()
                time.sleep(pause)
                attempt += 1


class HostHand:
    """The per-host slot one download thread holds (``--per-host``), if any.

    A hop to another host gives this host's slot back and takes that host's; the slot
    goes back when the URL is done, or before a pause between two tries. Every answer
    of the host goes back with it, so that a refusing host is backed off.
    """

    def __init__(self, gate: HostGate | None) -> None:
        self.gate = gate
        self.host: str | None = None
        self.statuses: list[int] = []  # the host's answers while the slot was held
        self.retry_after: float | None = None

    def __enter__(self) -> HostHand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()

    def enter(self, host: str, exchange: transport.Exchange) -> None:
        """Hold a slot of ``host``, or raise a timeout once the deadline comes first."""
        if self.gate is None or host == self.host:
            return
        self.leave()
        asked = time.monotonic()
        seconds = exchange.deadline - asked
        if seconds > 0 and self.gate.take(host, seconds):
            self.host = host
            return
        exchange.waited_out = True
        raise Failure(
            Reason.TIMEOUT,
            f"waited {time.monotonic() - asked:.1f} s for one of the "
            f"{self.gate.per_host} download slots of {host} (--per-host), in vain "
            "within the deadline",
        )

    def answer(self, response: http.client.HTTPResponse) -> None:
        if self.host is None:
            return
        self.statuses.append(response.status)
        if response.status in TRANSIENT_STATUSES:
            self.retry_after = retry_after(response.getheader("Retry-After"))

    def leave(self) -> None:
        """Give the slot back, if any."""
        if self.gate is not None and self.host is not None:
            self.gate.give_back(self.host, self.statuses, self.retry_after)
        self.host, self.statuses, self.retry_after = None, [], None


def _attempt(url: str, exchange: transport.Exchange, hand: HostHand, settings: Settings) -> bytes:
    """One try of the URL, redirects included; every error becomes a ``Failure``.

    Once the deadline has passed, whatever came of the cut connection (a status line
    cut short that still parses, an empty body) is a timeout.
    """
    try:
        body = _follow(url, exchange, hand, settings)
    except (Failure, _Transient) as exc:
        failure: Exception | None = exc
    except Exception as exc:  # a hostile answer must cost its own line only
        failure = _failure_of(exc, settings)
    else:
        failure = None
    if exchange.expired and not exchange.waited_out:
        raise Failure(
            Reason.TIMEOUT, f"no complete answer within the {settings.deadline:g} s deadline"
        ) from None
    if failure is not None:
        raise failure from None
    return body


def _failure_of(exc: Exception, settings: Settings) -> Failure | _Transient:
    if isinstance(exc, TimeoutError):
        return Failure(Reason.TIMEOUT, f"no data for {settings.read_timeout:g} s")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(
            Reason.CONNECTION_ERROR,
            f"TLS certificate refused: {exc.verify_message} "
            f"(trusted: {trust(settings)[1]}; another CA: --ca-bundle or SSL_CERT_FILE)",
        )
    if isinstance(exc, (OSError, http.client.IncompleteRead)):  # refused, reset, closed early
        return _Transient(Failure(Reason.CONNECTION_ERROR, str(exc) or type(exc).__name__))
    if isinstance(exc, (http.client.HTTPException, zlib.error)):
        return Failure(Reason.DOWNLOAD_ERROR, f"malformed answer: {type(exc).__name__} {exc}")
    return Failure(Reason.DOWNLOAD_ERROR, f"{type(exc).__name__}: {exc}")


def _follow(url: str, exchange: transport.Exchange, hand: HostHand, settings: Settings) -> bytes:
    """Hop by hop: each hop is resolved, checked and connected to on its own."""
    for _ in range(settings.max_redirects + 1):
        target = target_of(url)
        hand.enter(target.host, exchange)
        addresses = _addresses(target, exchange, settings)
        conn, response = transport.request(target, addresses, exchange, settings)
        hand.answer(response)
        status = response.status
        location = response.getheader("Location") if status in REDIRECTS else None
        if status == 200:
            try:
                body = _read_body(response, settings)
            except BaseException:
                transport.discard(conn, exchange, response)
                raise
            transport.release(target, conn, response, exchange, settings)
            return body
        transport.finish(target, conn, response, exchange, settings)
        if location is None:
            raise _status_failure(response, exchange, settings)
        # Headers arrive as latin-1; a UTF-8 Location is the common case.
        url = redirect_url(url, location.encode("latin-1").decode("utf-8", "replace"))
    raise Failure(Reason.TOO_MANY_REDIRECTS, f"more than {settings.max_redirects} redirects")


def _status_failure(
    response: http.client.HTTPResponse, exchange: transport.Exchange, settings: Settings
) -> Failure | _Transient:
    code = response.status
    failure = Failure(Reason.http(code), f"HTTP {code} {response.reason or ''}".strip())
    if code not in TRANSIENT_STATUSES:
        return failure
    wait = retry_after(response.getheader("Retry-After"))
    if wait is None:
        return _Transient(failure)
    if time.monotonic() + wait >= exchange.deadline:
        return Failure(
            failure.reason,
            f"{failure.detail}; Retry-After {wait:g} s is past "
            f"the {settings.deadline:g} s deadline",
        )
    return _Transient(failure, wait)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), if valid."""
    value = (value or "").strip()
    if (seconds := _digits(value)) is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _digits(value: str) -> int | None:
    """The number a header spells in ASCII digits, if that is all it is (``str.isdigit``
    also takes ``²``, which ``int`` refuses)."""
    return int(value) if value.isascii() and value.isdigit() else None


def _addresses(target: Target, exchange: transport.Exchange, settings: Settings) -> list[str]:
    """The addresses of the hop's host that may be connected to, resolved once."""
    refused: list[tuple[str, str | None]] = []
    allowed: list[tuple[str, str | None]] = []
    for address in dns.resolve(target, exchange):
        why = address_refusal(ipaddress.ip_address(address), settings)
        (allowed if why is None else refused).append((address, why))
    if allowed:
        return [address for address, _ in allowed]
    address, why = refused[0]
    named = f"{address} is" if address == target.host else f"{target.host} resolves to {address},"
    raise Failure(Reason.BLOCKED_ADDRESS, f"{named} {why}")


# --- after the headers: the body ---------------------------------------------------


def _read_body(response: http.client.HTTPResponse, settings: Settings) -> bytes:
    """Stream the body, counting decoded bytes against the limit (Content-Length is only a hint)."""
    limit = settings.max_bytes
    declared = _digits(response.getheader("Content-Length", ""))
    if declared is not None and declared > limit:
        raise Failure(Reason.TOO_LARGE, f"Content-Length {declared:,} is over {limit:,} bytes")
    decoder = _decoder(response.getheader("Content-Encoding"))
    body = bytearray()
    # read1 returns whatever has arrived; the watchdog bounds the wait for it.
    while chunk := response.read1(CHUNK):
        if decoder is not None:  # never more than the room left, plus one byte to tell
            chunk = decoder.decompress(chunk, limit - len(body) + 1)
        body += chunk
        if len(body) > limit:
            raise Failure(
                Reason.TOO_LARGE,
                f"body is over {limit:,} bytes"
                + (" once decompressed" if decoder is not None else ""),
            )
    if response.length:  # the connection ended before the Content-Length did
        raise http.client.IncompleteRead(b"", response.length)
    return bytes(body)


def _decoder(encoding: str | None) -> zlib._Decompress | None:
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
    raise Failure(Reason.DOWNLOAD_ERROR, f"Content-Encoding {encoding!r} is not supported")
