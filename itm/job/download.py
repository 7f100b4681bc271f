"""Downloading one URL from a server that may be hostile.

Nothing is left to the server:

- one deadline bounds the whole exchange (DNS, connect, TLS, status line, headers,
  every redirect hop, every body, retries): a watchdog thread shuts the socket of
  a URL down at its deadline, so no read can block past it, however slowly the
  server drips;
- redirects are followed hop by hop here; a redirect's body is never read (at most
  a small one that has already arrived, to keep the connection), and every body
  read counts against ``--max-bytes``, decompressed size included;
- each hop's host is resolved (through the process's DNS cache, ``_Resolver``), each
  address checked (``itm.job.urls``), and the connection goes to an address that was
  checked, so DNS cannot swap it; TLS is still verified against the host name, with
  the user's trust (``_trust``);
- no proxy variables, no ``~/.netrc``, no cookies: nothing from the environment or
  from another URL goes into a request;
- with a ``HostHand`` (``--per-host``), each hop first holds a slot of its host,
  waiting for it within the deadline (``itm.job.host_gate``).

Every way a download can fail ends as one ``Failure`` with a stable ``reason``.
Connections are pooled per process, keep-alive, and reused across URLs of the
same host only when pinned to an address this hop checked; the pool is bounded in
size and in idle time (``_Pool``), whatever the number of hosts. Thread-safe.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import heapq
import http.client
import ipaddress
import itertools
import math
import os
import select
import socket
import ssl
import sys
import threading
import time
import zlib
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Protocol

import certifi

from itm.config import Settings
from itm.job.urls import Target, address_refusal, check_url, redirect_url, target_of
from itm.outcomes import Failure, Reason

# Worth another try: the server or the path to it may be fine a moment later.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
BACKOFF = 0.25  # seconds before the first retry; doubles each time
USER_AGENT = "itm/0.1"
# A redirect body this small that has already arrived is read, so that the
# connection can carry the next hop; anything else closes it unread.
DRAIN_BYTES = 4096
DRAIN_SECONDS = 0.05
IDLE_SECONDS = 4.0  # an idle pooled connection is closed this long after its last use
SWEEP_SECONDS = 1.0  # the watchdog sweeps the pool at most this often
DNS_SECONDS = 60.0  # a host's addresses are reused this long (getaddrinfo gives no TTL)
DNS_FAILURE_SECONDS = 5.0  # a failed or unanswered lookup is remembered this long
DNS_HOSTS = 10_000  # hosts remembered at most; the oldest answer goes first
# Trust given the conventional way, in this order of precedence (see ``_trust``).
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")
# The distributions' bundles, for a Python whose OpenSSL looks elsewhere (as truststore).
SYSTEM_BUNDLES = (
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/cert.pem",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/ca-bundle.pem",
)
AddrInfo = tuple[Any, ...]  # one answer of socket.getaddrinfo


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
    with hand, _Exchange(time.monotonic() + settings.deadline, hand) as exchange:
        attempt = 0
        while True:
            try:
                return _attempt(url, exchange, settings)
            except _Transient as transient:
                pause = max(BACKOFF * 2**attempt, transient.wait)
                if attempt == settings.retries or time.monotonic() + pause >= exchange.deadline:
                    raise transient.failure from None
                exchange.hand.leave()
                time.sleep(pause)
                attempt += 1


class _Exchange:
    """One URL's exchange with its deadline: the watchdog shuts its socket down then."""

    def __init__(self, deadline: float, hand: HostHand) -> None:
        self.deadline = deadline
        self.expired = False
        self.hand = hand
        self.waited_out = False  # the deadline came while waiting for a host's token
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False

    def __enter__(self) -> _Exchange:
        _WATCHDOG.add(self, self.deadline)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done, self._sock = True, None

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.expired = True
            raise OSError("deadline reached")
        return left

    def watch(self, sock: socket.socket | None) -> None:
        """The socket in use now (``None``: none). Call before closing or pooling it."""
        with self._lock:
            self._sock = sock
            if sock is not None and self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            if self._sock is not None:
                _shut(self._sock)


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

    def enter(self, host: str, exchange: _Exchange) -> None:
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


def _shut(sock: socket.socket) -> None:
    """Wake any thread blocked on ``sock``. The plain-socket call also works on a TLS
    socket without touching its TLS state, which another thread is using."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Expiring(Protocol):
    def expire(self) -> None:
        """Called by the watchdog thread at the time it was added for."""


class _Watchdog:
    """One thread per process that expires exchanges at their deadlines, and sweeps
    the connection pool."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Expiring]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, item: _Expiring, when: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), item))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="itm-deadline", daemon=True)
                self._thread.start()
            if self._heap[0][2] is item:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            for item in due:  # outside the lock: a sweep takes the pool's lock
                item.expire()

    def forget_thread(self) -> None:
        """In a forked child the thread is gone: the next ``add`` starts one."""
        self._thread = None


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.forget_thread)


def _attempt(url: str, exchange: _Exchange, settings: Settings) -> bytes:
    """One try of the URL, redirects included; every error becomes a ``Failure``.

    Once the deadline has passed, whatever came of the cut connection (a status line
    cut short that still parses, an empty body) is a timeout.
    """
    try:
        body = _follow(url, exchange, settings)
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
            f"TLS certificate refused: {exc.verify_message} (trusted: {_trust(settings)[1]}; "
            "another CA: --ca-bundle or SSL_CERT_FILE)",
        )
    if isinstance(exc, (OSError, http.client.IncompleteRead)):  # refused, reset, closed early
        return _Transient(Failure(Reason.CONNECTION_ERROR, str(exc) or type(exc).__name__))
    if isinstance(exc, (http.client.HTTPException, zlib.error)):
        return Failure(Reason.DOWNLOAD_ERROR, f"malformed answer: {type(exc).__name__} {exc}")
    return Failure(Reason.DOWNLOAD_ERROR, f"{type(exc).__name__}: {exc}")


def _follow(url: str, exchange: _Exchange, settings: Settings) -> bytes:
    """Hop by hop: each hop is resolved, checked and connected to on its own."""
    for _ in range(settings.max_redirects + 1):
        target = target_of(url)
        exchange.hand.enter(target.host, exchange)
        conn, response = _request(target, exchange, settings)
        exchange.hand.answer(response)
        status = response.status
        location = response.getheader("Location") if status in REDIRECTS else None
        if status == 200:
            try:
                body = _read_body(response, settings)
            except BaseException:
                _discard(conn, exchange, response)
                raise
            _release(target, conn, response, exchange, settings)
            return body
        _finish(target, conn, response, exchange, settings)
        if location is None:
            raise _status_failure(response, exchange, settings)
        # Headers arrive as latin-1; a UTF-8 Location is the common case.
        url = redirect_url(url, location.encode("latin-1").decode("utf-8", "replace"))
    raise Failure(Reason.TOO_MANY_REDIRECTS, f"more than {settings.max_redirects} redirects")


def _status_failure(
    response: http.client.HTTPResponse, exchange: _Exchange, settings: Settings
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


# --- one hop: resolve, check, connect (or reuse), send, read the headers ---------


class _Connection(http.client.HTTPConnection):
    """HTTP/1.1 to one checked address, whatever the host name resolves to later."""

    context: ssl.SSLContext | None = None  # the trust its certificate was verified with

    def __init__(self, ip: str, port: int, timeout: float, exchange: _Exchange) -> None:
        super().__init__(ip, port, timeout=timeout)
        self.ip = ip
        self.exchange = exchange

    def connect(self) -> None:
        super().connect()
        self.exchange.watch(self.sock)


class _TLSConnection(_Connection):
    """TLS to the checked address, verified against the host name (SNI and certificate)."""

    context: ssl.SSLContext

    def __init__(
        self,
        ip: str,
        port: int,
        timeout: float,
        exchange: _Exchange,
        hostname: str,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(ip, port, timeout, exchange)
        self.hostname = hostname
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(
            self.sock, server_hostname=self.hostname, do_handshake_on_connect=False
        )
        self.exchange.watch(self.sock)  # the handshake too is bounded by the deadline
        self.sock.do_handshake()


_Key = tuple[ssl.SSLContext | None, str, int]  # the TLS trust (None: plain HTTP), host, port


class _Pool:
    """Idle keep-alive connections per (TLS trust, host, port), each pinned to its address.

    Bounded however many hosts a list has: ``cap`` idle connections in all (the least
    recently used closes first), each closed ``IDLE_SECONDS`` after its last use, by
    the next ``take`` or ``put``, or else by the watchdog's sweep (``expire``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[_Key, list[_Connection]] = {}
        self._since: OrderedDict[_Connection, tuple[_Key, float]] = OrderedDict()  # oldest first
        self._sweeping = False  # a sweep is due on the watchdog

    def take(
        self, target: Target, context: ssl.SSLContext | None, addresses: list[str]
    ) -> _Connection | None:
        with self._lock:
            stale = self._stale(time.monotonic())
            idle = self._idle.get((context, target.host, target.port), [])
            conn = next((conn for conn in reversed(idle) if conn.ip in addresses), None)
            if conn is not None:
                self._remove(conn)
        _close(stale)
        if conn is None:
            return None
        if _alive(conn.sock):
            return conn
        conn.close()
        return None

    def put(self, target: Target, conn: _Connection, cap: int) -> None:
        now = time.monotonic()
        with self._lock:
            stale = self._stale(now)
            key = (conn.context, target.host, target.port)
            self._idle.setdefault(key, []).append(conn)
            self._since[conn] = (key, now)
            while len(self._since) > cap:
                stale.append(self._remove(next(iter(self._since))))
            sweep = not self._sweeping
            self._sweeping = True
            oldest = next(iter(self._since.values()))[1]
        _close(stale)
        if sweep:
            _WATCHDOG.add(self, oldest + IDLE_SECONDS)

    def expire(self) -> None:
        """The watchdog's sweep: close what has been idle too long, come back for the rest."""
        now = time.monotonic()
        with self._lock:
            stale = self._stale(now)
            oldest = next(iter(self._since.values()), None)
            self._sweeping = oldest is not None
        _close(stale)
        if oldest is not None:
            _WATCHDOG.add(self, max(oldest[1] + IDLE_SECONDS, now + SWEEP_SECONDS))

    def _stale(self, now: float) -> list[_Connection]:
        stale = []
        while self._since:
            conn, (_, since) = next(iter(self._since.items()))
            if now - since < IDLE_SECONDS:
                break
            stale.append(self._remove(conn))
        return stale

    def _remove(self, conn: _Connection) -> _Connection:
        key, _ = self._since.pop(conn)
        idle = self._idle[key]
        idle.remove(conn)
        if not idle:
            del self._idle[key]
        return conn


def _close(conns: list[_Connection]) -> None:
    for conn in conns:
        conn.close()


_POOL = _Pool()


def _alive(sock: socket.socket | None) -> bool:
    """An idle connection is usable while nothing is readable on it (no EOF, no junk)."""
    if sock is None:
        return False
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return not poll.poll(0)


def _request(
    target: Target, exchange: _Exchange, settings: Settings
) -> tuple[_Connection, http.client.HTTPResponse]:
    addresses = _addresses(target, exchange, settings)
    context = _trust(settings)[0] if target.tls else None
    conn = _POOL.take(target, context, addresses)
    if conn is None:
        conn = _connect(target, context, addresses, exchange, settings)
    else:
        conn.exchange = exchange
        exchange.watch(conn.sock)
    try:
        return conn, _send(conn, target, exchange, settings)
    except BaseException:
        _discard(conn, exchange)
        raise


def _send(
    conn: _Connection, target: Target, exchange: _Exchange, settings: Settings
) -> http.client.HTTPResponse:
    conn.sock.settimeout(min(settings.read_timeout, exchange.remaining()))
    conn.request(
        "GET",
        target.path,
        headers={
            "Host": target.host_header,
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
        },
    )
    return conn.getresponse()


def _addresses(target: Target, exchange: _Exchange, settings: Settings) -> list[str]:
    """The addresses of the hop's host that may be connected to, resolved once."""
    refused: list[tuple[str, str | None]] = []
    allowed: list[tuple[str, str | None]] = []
    for address in _resolve(target, exchange):
        why = address_refusal(ipaddress.ip_address(address), settings)
        (allowed if why is None else refused).append((address, why))
    if allowed:
        return [address for address, _ in allowed]
    address, why = refused[0]
    named = f"{address} is" if address == target.host else f"{target.host} resolves to {address},"
    raise Failure(Reason.BLOCKED_ADDRESS, f"{named} {why}")


def _resolve(target: Target, exchange: _Exchange) -> list[str]:
    """Every address of the host, in the resolver's order. Numeric forms (``127.1``,
    ``2130706433``, ``0x7f.1``) are read without a lookup; a name is looked up
    through the process's cache (``_Resolver``)."""
    try:
        return _sockaddrs(
            socket.getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        )
    except socket.gaierror:
        return _RESOLVER.addresses(target.host, exchange)


class _Lookup:
    """One host's lookup, shared by every thread that asks while it runs or is fresh."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.done = threading.Event()
        self.until = math.inf  # fresh until then (monotonic time)
        self.addresses: list[str] = []
        self.error: str | None = None
        self.abandoned = False  # a line waited for it until its deadline

    def run(self) -> None:
        try:
            self.addresses = _sockaddrs(
                socket.getaddrinfo(self.host, None, type=socket.SOCK_STREAM)
            )
        except (OSError, UnicodeError) as exc:
            self.error = str(exc)
        self.until = time.monotonic() + (DNS_FAILURE_SECONDS if self.error else DNS_SECONDS)
        self.done.set()


class _Resolver:
    """The process's DNS cache, as a crawler keeps one.

    An answer is reused for ``DNS_SECONDS``, a failure (or a lookup that outlived a
    line's deadline) for ``DNS_FAILURE_SECONDS``; threads asking for a host whose lookup
    runs wait for that one. A lookup runs in a thread of its own, so that a slow
    resolver cannot hold a URL past its deadline. It fails closed: no answer, no
    connection; and the caller still checks every address it is given.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lookups: dict[str, _Lookup] = {}  # oldest first
        self.started = 0

    def addresses(self, host: str, exchange: _Exchange) -> list[str]:
        with self._lock:
            lookup = self._lookups.get(host)
            start = lookup is None or lookup.until <= time.monotonic()
            if start:
                self._lookups.pop(host, None)
                if len(self._lookups) >= DNS_HOSTS:
                    del self._lookups[next(iter(self._lookups))]
                lookup = self._lookups[host] = _Lookup(host)
                self.started += 1
        assert lookup is not None
        if start:
            threading.Thread(target=lookup.run, name="itm-dns", daemon=True).start()
        if not lookup.done.is_set():
            if lookup.abandoned:
                raise Failure(
                    Reason.TIMEOUT,
                    f"no DNS answer for {host} within a whole deadline; "
                    f"not asked again for {DNS_FAILURE_SECONDS:g} s",
                )
            if not lookup.done.wait(exchange.remaining()):
                with self._lock:
                    lookup.abandoned = True
                    lookup.until = min(lookup.until, time.monotonic() + DNS_FAILURE_SECONDS)
                exchange.expired = True
                raise OSError(f"no DNS answer for {host}")
        if lookup.error is not None:
            raise Failure(Reason.CONNECTION_ERROR, f"cannot resolve {host}: {lookup.error}")
        return lookup.addresses


_RESOLVER = _Resolver()


def dns_lookups() -> int:
    """Host name lookups this process has started (answers from the cache not counted)."""
    return _RESOLVER.started


def _sockaddrs(infos: list[AddrInfo]) -> list[str]:
    return list(dict.fromkeys(info[4][0] for info in infos))


def _connect(
    target: Target,
    context: ssl.SSLContext | None,
    addresses: list[str],
    exchange: _Exchange,
    settings: Settings,
) -> _Connection:
    """A new connection to the first checked address that answers (TLS with ``context``)."""
    error: OSError = OSError("no address")
    for address in addresses:
        timeout = min(settings.connect_timeout, exchange.remaining())
        conn = (
            _TLSConnection(address, target.port, timeout, exchange, target.host, context)
            if context is not None
            else _Connection(address, target.port, timeout, exchange)
        )
        try:
            conn.connect()
            return conn
        except TimeoutError:
            _discard(conn, exchange)
            raise Failure(Reason.TIMEOUT, f"no connection within {timeout:g} s") from None
        except OSError as exc:
            _discard(conn, exchange)
            error = exc
    raise error


def _trust(settings: Settings) -> tuple[ssl.SSLContext, str]:
    """The TLS context for ``settings``, and the name of the trust it holds.

    The first of: ``--ca-bundle``; ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``,
    ``SSL_CERT_DIR`` (every one that is set); the system's trust store with certifi's
    bundle. A file or directory given replaces the default, as it does for requests,
    pip and OpenSSL.
    """
    if settings.ca_bundle is not None:
        return _context((("--ca-bundle", str(settings.ca_bundle)),))
    return _context(
        tuple((name, os.environ[name]) for name in CA_VARIABLES if os.environ.get(name))
    )


@functools.cache
def _context(sources: tuple[tuple[str, str], ...]) -> tuple[ssl.SSLContext, str]:
    if not sources:
        return _system_context(), "the system's trust store and certifi's bundle"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for name, path in sources:
        try:
            if os.path.isdir(path):
                context.load_verify_locations(capath=path)
            else:
                context.load_verify_locations(cafile=path)
        except (OSError, ValueError) as exc:
            raise Failure(
                Reason.CONNECTION_ERROR, f"cannot load the certificates of {name}={path}: {exc}"
            ) from None
    return context, " and ".join(f"{name}={path}" for name, path in sources)


def _system_context() -> ssl.SSLContext:
    """The operating system's trust store plus certifi's bundle, as pip trusts both.

    On macOS and Windows the system verifies (``truststore``, as pip). Elsewhere the
    store is a bundle file that OpenSSL loads here once per process: truststore would
    load it again for every connection (20 ms of CPU each, measured).
    """
    if sys.platform in ("darwin", "win32"):
        import truststore

        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.set_default_verify_paths()
        if ssl.get_default_verify_paths().cafile is None:
            bundle = next((path for path in SYSTEM_BUNDLES if os.path.isfile(path)), None)
            if bundle is not None:
                context.load_verify_locations(cafile=bundle)
    context.load_verify_locations(cafile=certifi.where())
    return context


# --- after the headers: the body, or the connection back to the pool --------------


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


def _finish(
    target: Target,
    conn: _Connection,
    response: http.client.HTTPResponse,
    exchange: _Exchange,
    settings: Settings,
) -> None:
    """Done with an answer that is not the image: keep the connection only if its
    small body has already arrived; otherwise close it, body unread."""
    if conn.sock is not None and response.length is not None and response.length <= DRAIN_BYTES:
        end = time.monotonic() + DRAIN_SECONDS
        try:
            conn.sock.settimeout(DRAIN_SECONDS)
            while response.length and time.monotonic() < end:
                if not response.read1(DRAIN_BYTES):
                    break
        except (OSError, http.client.HTTPException):
            pass
    _release(target, conn, response, exchange, settings)


def _release(
    target: Target,
    conn: _Connection,
    response: http.client.HTTPResponse,
    exchange: _Exchange,
    settings: Settings,
) -> None:
    exchange.watch(None)
    if response.length == 0:  # read to its end: http.client closes it only at EOF
        response.close()
    if response.isclosed() and conn.sock is not None and not exchange.expired:
        # A download task runs up to `concurrency` threads: keep as many idle connections,
        # every host together.
        _POOL.put(target, conn, settings.concurrency)
    else:
        _discard(conn, exchange, response)


def _discard(
    conn: _Connection, exchange: _Exchange, response: http.client.HTTPResponse | None = None
) -> None:
    """Close a connection that may be broken or hold an unread body (after unwatching it,
    so that the watchdog never shuts a socket number that is being reused)."""
    exchange.watch(None)
    if response is not None:
        response.close()
    conn.close()
