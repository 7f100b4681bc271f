"""One image server on several loopback host names, counting what each host sees.

It listens on one port of 127.0.0.1, 127.0.0.2 and 127.0.0.3 (all loopback on
Linux), and ``localhost`` reaches it too: four hosts for the per-host limit. Per
``Host`` header it records the requests in flight (a request counts from its
arrival until just before its last byte is sent, so a client can never give its
token back before the count dropped) and the highest number seen.

Every answer comes ``latency`` seconds after its request. Paths:

- ``/img/<n>``: a small JPEG;
- ``/to/<host>/<path>``: a redirect to ``<path>`` on ``<host>`` (same port);
- ``/hold/<n>``: a JPEG once ``release`` is set (at most 30 s);
- ``/busy/<code>/<n>?<wait>``: ``<code>`` with ``Retry-After: <wait>`` (``date``: an
  HTTP date 2 s ahead) the first time, a JPEG after;
- ``/status/<code>``: always ``<code>``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from email.utils import formatdate

from pymongo.database import Database

from tests.support.servers import Handler, LocalServer, jpeg

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost")
EXTRA_ADDRESSES = ("127.0.0.2", "127.0.0.3")


class HostHandler(Handler):
    def do_GET(self) -> None:
        server: HostServer = self.server.owner
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        path, _, query = self.path.partition("?")
        with server.cond:
            server.in_flight[host] += 1
            server.peak[host] = max(server.peak[host], server.in_flight[host])
            server.hits[self.path] += 1
            hits = server.hits[self.path]
            server.times.setdefault(self.path, []).append(time.monotonic())
            server.cond.notify_all()
        try:
            status, headers, body = self.answer(server, path, query, hits)
        finally:
            with server.cond:
                server.in_flight[host] -= 1
        self.reply(status, body, "image/jpeg" if status == 200 else "text/plain", headers)

    def answer(
        self, server: HostServer, path: str, query: str, hits: int
    ) -> tuple[int, dict[str, str], bytes]:
        parts = path.strip("/").split("/")
        image = (200, {}, server.jpeg)
        time.sleep(server.latency)
        if parts[0] == "img":
            return image
        if parts[0] == "to":
            return 302, {"Location": f"http://{parts[1]}:{server.port}/{'/'.join(parts[2:])}"}, b""
        if parts[0] == "hold":
            server.release.wait(30)  # bounded: a test that forgets to release still ends
            return image
        if parts[0] == "busy" and hits == 1:
            wait = formatdate(time.time() + 2, usegmt=True) if query == "date" else query
            return int(parts[1]), {"Retry-After": wait}, b"busy"
        if parts[0] == "busy":
            return image
        if parts[0] == "status":
            return int(parts[1]), {}, b"no"
        return 404, {}, b"Not found"


class HostServer(LocalServer):
    """``HostHandler`` on every address of ``HOSTS``, one port."""

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__(HostHandler)
        self.port = self.httpd.server_address[1]
        self.extra = [
            type(self.httpd)((address, self.port), HostHandler) for address in EXTRA_ADDRESSES
        ]
        for httpd in self.extra:
            httpd.owner = self
        # Poll for shutdown every 50 ms, not 0.5 s: three servers stop at every test's end.
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.latency = latency
        self.jpeg = jpeg()
        self.release = threading.Event()
        self.cond = threading.Condition()
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}

    def at(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"

    def wait_in_flight(self, host: str, count: int, timeout: float = 10.0) -> bool:
        """Until ``count`` requests to ``host`` are in flight at once (a gate, not a sleep)."""
        with self.cond:
            return self.cond.wait_for(lambda: self.in_flight[host] >= count, timeout)

    def __enter__(self) -> HostServer:
        for httpd in self.extra:
            threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        for httpd in self.extra:
            httpd.shutdown()
            httpd.server_close()
        super().__exit__(*exc)


def spread_lines(server: HostServer, count: int) -> list[str]:
    """``count`` image URLs over every host; every other one redirects to the next host."""
    lines = []
    for n in range(count):
        host, after = HOSTS[n % len(HOSTS)], HOSTS[(n + 1) % len(HOSTS)]
        path = f"/img/{n}" if n % 2 else f"/to/{after}/img/{n}"
        lines.append(server.at(host, path))
    return lines


def check_polite_run(db: Database, server: HostServer, lines: int, per_host: int) -> None:
    """Every line of a job on ``spread_lines`` stored, and no host saw more than ``per_host``."""
    assert db.events.count_documents({"status": "success"}) == lines
    assert set(server.peak) == set(HOSTS)
    assert max(server.peak.values()) <= per_host, dict(server.peak)
