"""The transport under ``itm.job.download``: sockets bounded by a deadline, pooled.

- ``Exchange``: one URL's deadline; a watchdog thread (one per process) shuts the
  socket in use down at that deadline, so no read can block past it, however slowly
  the server drips;
- ``request``: HTTP/1.1 (TLS verified against the host name, with the user's trust,
  ``itm.job.trust``) to an address the caller resolved (``itm.job.dns``) and checked,
  so DNS cannot swap it; keep-alive connections are pooled per process and reused
  only when pinned to such an address; the pool is bounded in size and in idle time
  (``_Pool``), whatever the number of hosts;
- no proxy variables, no ``~/.netrc``, no cookies: nothing from the environment or
  from another URL goes into a request.

What to fetch, what to retry and which answers to accept is ``itm.job.download``'s.
Thread-safe.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import os
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from typing import Protocol

from itm.config import Settings
from itm.job.trust import trust
from itm.job.urls import Target
from itm.outcomes import Failure, Reason

USER_AGENT = "itm/0.1"
# A redirect body this small that has already arrived is read, so that the
# connection can carry the next hop; anything else closes it unread.
DRAIN_BYTES = 4096
DRAIN_SECONDS = 0.05
IDLE_SECONDS = 4.0  # an idle pooled connection is closed this long after its last use
SWEEP_SECONDS = 1.0  # the watchdog sweeps the pool at most this often


class Exchange:
    """One URL's exchange with its deadline: the watchdog shuts its socket down then."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self.waited_out = False  # the deadline came while waiting for a host's slot
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False

    def __enter__(self) -> Exchange:
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


# --- one hop: connect (or reuse), send, read the headers ---------------------------


class Connection(http.client.HTTPConnection):
    """HTTP/1.1 to one checked address, whatever the host name resolves to later."""

    context: ssl.SSLContext | None = None  # the trust its certificate was verified with

    def __init__(self, ip: str, port: int, timeout: float, exchange: Exchange) -> None:
        super().__init__(ip, port, timeout=timeout)
        self.ip = ip
        self.exchange = exchange

    def connect(self) -> None:
        super().connect()
        self.exchange.watch(self.sock)


class _TLSConnection(Connection):
    """TLS to the checked address, verified against the host name (SNI and certificate)."""

    context: ssl.SSLContext

    def __init__(
        self,
        ip: str,
        port: int,
        timeout: float,
        exchange: Exchange,
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
        self._idle: dict[_Key, list[Connection]] = {}
        self._since: OrderedDict[Connection, tuple[_Key, float]] = OrderedDict()  # oldest first
        self._sweeping = False  # a sweep is due on the watchdog

    def take(
        self, target: Target, context: ssl.SSLContext | None, addresses: list[str]
    ) -> Connection | None:
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

    def put(self, target: Target, conn: Connection, cap: int) -> None:
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

    def _stale(self, now: float) -> list[Connection]:
        stale = []
        while self._since:
            conn, (_, since) = next(iter(self._since.items()))
            if now - since < IDLE_SECONDS:
                break
            stale.append(self._remove(conn))
        return stale

    def _remove(self, conn: Connection) -> Connection:
        key, _ = self._since.pop(conn)
        idle = self._idle[key]
        idle.remove(conn)
        if not idle:
            del self._idle[key]
        return conn


def _close(conns: list[Connection]) -> None:
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


def request(
    target: Target, addresses: list[str], exchange: Exchange, settings: Settings
) -> tuple[Connection, http.client.HTTPResponse]:
    """GET the hop's path over a pooled connection pinned to one of ``addresses`` (the
    checked ones), or else a new connection to the first of them that answers."""
    context = trust(settings)[0] if target.tls else None
    conn = _POOL.take(target, context, addresses)
    if conn is None:
        conn = _connect(target, context, addresses, exchange, settings)
    else:
        conn.exchange = exchange
        exchange.watch(conn.sock)
    try:
        return conn, _send(conn, target, exchange, settings)
    except BaseException:
        discard(conn, exchange)
        raise


def _send(
    conn: Connection, target: Target, exchange: Exchange, settings: Settings
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


def _connect(
    target: Target,
    context: ssl.SSLContext | None,
    addresses: list[str],
    exchange: Exchange,
    settings: Settings,
) -> Connection:
    """A new connection to the first checked address that answers (TLS with ``context``)."""
    error: OSError = OSError("no address")
    for address in addresses:
        timeout = min(settings.connect_timeout, exchange.remaining())
        conn = (
            _TLSConnection(address, target.port, timeout, exchange, target.host, context)
            if context is not None
            else Connection(address, target.port, timeout, exchange)
        )
        try:
            conn.connect()
            return conn
        except TimeoutError:
            discard(conn, exchange)
            raise Failure(Reason.TIMEOUT, f"no connection within {timeout:g} s") from None
        except OSError as exc:
            discard(conn, exchange)
            error = exc
    raise error


def finish(
    target: Target,
    conn: Connection,
    response: http.client.HTTPResponse,
    exchange: Exchange,
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
    release(target, conn, response, exchange, settings)


def release(
    target: Target,
    conn: Connection,
    response: http.client.HTTPResponse,
    exchange: Exchange,
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
        discard(conn, exchange, response)


def discard(
    conn: Connection, exchange: Exchange, response: http.client.HTTPResponse | None = None
) -> None:
    """Close a connection that may be broken or hold an unread body (after unwatching it,
    so that the watchdog never shuts a socket number that is being reused)."""
    exchange.watch(None)
    if response is not None:
        response.close()
    conn.close()
