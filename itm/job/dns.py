"""The process's DNS cache, as a crawler keeps one (``resolve``).

An answer is reused for ``DNS_SECONDS``, a failure (or a lookup that outlived a line's
deadline) for ``DNS_FAILURE_SECONDS``. Each lookup runs in a thread of its own, so
that a slow resolver cannot hold a URL past its deadline. It fails closed: no answer,
no connection; and the caller still checks every address it is given.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from typing import Any

from itm.job.transport import Exchange
from itm.job.urls import Target
from itm.outcomes import Failure, Reason

DNS_SECONDS = 60.0  # a host's addresses are reused this long (getaddrinfo gives no TTL)
DNS_FAILURE_SECONDS = 5.0  # a failed or unanswered lookup is remembered this long
DNS_HOSTS = 10_000  # hosts remembered at most; the oldest answer goes first
AddrInfo = tuple[Any, ...]  # one answer of socket.getaddrinfo


def resolve(target: Target, exchange: Exchange) -> list[str]:
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

    def addresses(self, host: str, exchange: Exchange) -> list[str]:
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
