"""A hostile HTTP server on 127.0.0.1: one path per way a server can try to hang,
exhaust or trick a downloader. Every endless answer stops when the client hangs up
or the server stops, so nothing outlives a test.
"""

from __future__ import annotations

import functools
import gzip
import threading
import time
from email.utils import formatdate
from urllib.parse import unquote

from tests.support.servers import Handler, LocalServer, jpeg

DRIP = 0.2  # seconds between two bytes of a dripping answer
BLOCK = b"\0" * 65536


@functools.cache
def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped: about a thousandth of that on the wire."""
    return gzip.compress(b"\0" * size, compresslevel=9)


class HostileHandler(Handler):
    def setup(self) -> None:
        super().setup()
        server: HostileServer = self.server.owner
        with server.lock:
            server.connections += 1

    def do_GET(self) -> None:
        server: HostileServer = self.server.owner
        path, _, query = self.path.partition("?")
        with server.lock:
            server.hits[path] = server.hits.get(path, 0) + 1
            server.times.setdefault(path, []).append(time.monotonic())
            hits = server.hits[path]
        try:
            self.answer(server, path, query, hits)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client gave up: that is the point

    def answer(self, server: HostileServer, path: str, query: str, hits: int) -> None:
        if path == "/ok.jpg":
            self.reply(200, server.jpeg, "image/jpeg")
        elif path == "/gzip.jpg":  # a real image, gzip-encoded on the wire
            self.reply(200, gzip.compress(server.jpeg), "image/jpeg", {"Content-Encoding": "gzip"})
        elif path == "/to":  # /to?<url>: a redirect anywhere (bücher: UTF-8, as sent)
            self.reply(302, headers={"Location": raw(query)})
        elif path == "/drip-status":
            self.drip(server, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        elif path == "/drip-headers":
            self.drip(
                server,
                b"HTTP/1.1 200 OK\r\n"
                + b"".join(b"X-Slow-%d: y\r\n" % n for n in range(1000))
                + b"\r\n",
            )
        elif path == "/drip-body":
            self.head(200, {"Content-Length": "1000", "Content-Type": "image/jpeg"})
            self.drip(server, b"x" * 1000)
        elif path == "/drip-redirect-body":  # small enough to be worth draining
            self.head(302, {"Location": "/ok.jpg", "Content-Length": "1000"})
            self.drip(server, b"x" * 1000)
        elif path == "/endless-redirect-body":
            self.head(302, {"Location": "/ok.jpg", "Connection": "close"})
            self.flood(server, None)
        elif path == "/big-redirect":  # 300 MB declared, and sent
            self.head(302, {"Location": "/ok.jpg", "Content-Length": str(300 * 2**20)})
            self.flood(server, 300 * 2**20)
        elif path == "/big-redirect-no-length":
            self.head(302, {"Location": "/ok.jpg", "Connection": "close"})
            self.flood(server, 300 * 2**20)
        elif path == "/gzip-bomb-redirect":
            self.head(
                302,
                {
                    "Location": "/ok.jpg",
                    "Content-Encoding": "gzip",
                    "Content-Length": str(len(server.bomb)),
                },
            )
            self.wfile.write(server.bomb)
        elif path == "/gzip-bomb":
            self.reply(200, server.bomb, "image/jpeg", {"Content-Encoding": "gzip"})
        elif path == "/retry-after":  # 503 once, with Retry-After <query> (seconds or "date")
            if hits > 1:
                self.reply(200, server.jpeg, "image/jpeg")
            else:
                wait = formatdate(time.time() + 2, usegmt=True) if query == "date" else query
                self.reply(503, b"busy", headers={"Retry-After": raw(wait)})
        elif path == "/length":  # the image, its Content-Length header <query>, then EOF
            self.head(200, {"Content-Length": raw(query), "Connection": "close"})
            self.wfile.write(server.jpeg)
            self.close_connection = True
        else:
            self.reply(404, b"Not found")

    def head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def drip(self, server: HostileServer, data: bytes) -> None:
        """``data`` one byte at a time, raw (status line and headers included)."""
        for byte in data:
            if server.stopping.wait(DRIP):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
        self.close_connection = True

    def flood(self, server: HostileServer, size: int | None) -> None:
        """``size`` bytes as fast as the client takes them (endless for ``None``)."""
        sent = 0
        try:
            while (size is None or sent < size) and not server.stopping.is_set():
                self.wfile.write(BLOCK)
                sent += len(BLOCK)
        finally:
            with server.lock:
                server.flooded[self.path] = sent
        self.close_connection = True


def raw(query: str) -> str:
    """A header value from a query: its %XX escapes are written as those bytes
    (``%B2``: the latin-1 ``²``; ``%C3%BC``: the UTF-8 ``ü``)."""
    return unquote(query, encoding="latin-1")


class HostileServer(LocalServer):
    """Counts connections and requests per path (with their times), to show what a
    client did and did not do."""

    def __init__(self) -> None:
        super().__init__(HostileHandler)
        self.jpeg = jpeg()
        self.bomb = gzip_bomb(16 * 2**20)  # 16 KiB on the wire
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.connections = 0
        self.hits: dict[str, int] = {}
        self.flooded: dict[str, int] = {}  # bytes of an endless or huge body the client took
        self.times: dict[str, list[float]] = {}

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        super().__exit__(*exc)
