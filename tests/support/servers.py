"""Real HTTP servers on 127.0.0.1 for the tests and the benchmarks.

``PicsumServer`` behaves like picsum.photos: ``/W/H`` answers 302 to a JPEG of WxH
chosen at random among a few photos, ``/error/…`` is a 404, huge sizes are a 400.
It records the MD5 and bytes of every image it serves, so a test can check the
database against exactly what went over the wire.
"""

from __future__ import annotations

import hashlib
import io
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import numpy as np
from PIL import Image

MAX_SIDE = 5000


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many clients connect at once in a benchmark

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up mid-answer (a size limit, a timeout) is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler; a reply is written in one go."""

    protocol_version = "HTTP/1.1"
    # http.server writes headers and body separately: without this every response
    # waits ~40 ms for a delayed ACK, and a benchmark would measure that.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class LocalServer:
    """Run a handler class on a free loopback port in a thread; stop on exit."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.owner = self  # lets handlers reach the server object's state
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def photo(seed: int, width: int, height: int) -> Image.Image:
    """A smooth, photo-like RGB picture: JPEG sizes like real photos, cheap to make."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


class PicsumHandler(Handler):
    def do_GET(self) -> None:
        server: PicsumServer = self.server.owner
        server.open.wait(30)  # bounded: a test that forgets to reopen still ends
        if server.latency:
            time.sleep(server.latency)
        parts = self.path.strip("/").split("/")
        if parts[0] == "error":
            self.reply(404, b"Not found")
        elif parts[0] == "id" and len(parts) == 4:
            body = server.image(int(parts[1]), int(parts[2]), int(parts[3].removesuffix(".jpg")))
            self.reply(200, body, "image/jpeg")
        elif len(parts) == 2 and all(p.isdigit() for p in parts):
            width, height = int(parts[0]), int(parts[1])
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                self.reply(400, b"Invalid size")
            else:
                photo_id = server.pick(self.path)
                self.reply(302, headers={"Location": f"/id/{photo_id}/{width}/{height}.jpg"})
        else:
            self.reply(404, b"Not found")


class PicsumServer(LocalServer):
    """picsum.photos on loopback, with ``latency`` seconds added to every response.

    ``deterministic``: a path always gets the same photo, so that two runs of one
    input store exactly the same images. Clearing ``open`` holds every response until
    it is set again: a test can stall a job at a chosen point.
    """

    def __init__(
        self, photos: int = 20, latency: float = 0.0, seed: int = 0, deterministic: bool = False
    ) -> None:
        super().__init__(PicsumHandler)
        self.photos = photos
        self.latency = latency
        self.deterministic = deterministic
        self.open = threading.Event()
        self.open.set()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int, int], bytes] = {}
        self.served: dict[str, bytes] = {}  # md5 → JPEG bytes of every image served

    def pick(self, path: str) -> int:
        if self.deterministic:
            return int(hashlib.md5(path.encode()).hexdigest(), 16) % self.photos
        with self._lock:
            return self._random.randrange(self.photos)

    def image(self, photo_id: int, width: int, height: int) -> bytes:
        key = (photo_id, width, height)
        with self._lock:
            body = self._cache.get(key)
        if body is None:
            body = jpeg(width, height, seed=photo_id)
        with self._lock:
            self._cache[key] = body
            self.served[hashlib.md5(body).hexdigest()] = body
        return body


def picsum_lines(base: str, canonical: list[str]) -> list[str]:
    """The canonical input with picsum.photos replaced by a local server's address."""
    return [line.replace("https://picsum.photos", base) for line in canonical]


def jpeg(width: int = 64, height: int = 48, seed: int = 1) -> bytes:
    out = io.BytesIO()
    photo(seed, width, height).save(out, format="JPEG", quality=85)
    return out.getvalue()


def bomb_png(side: int = 20_000) -> bytes:
    """A small PNG whose header claims side x side pixels."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    return out.getvalue()


class FaultHandler(Handler):
    """One path per way a download can go wrong (and one that goes right)."""

    def do_GET(self) -> None:
        server: FaultServer = self.server.owner
        path = self.path.split("?")[0]
        with server.lock:
            server.hits[path] = server.hits.get(path, 0) + 1
            hits = server.hits[path]
        if path == "/ok.jpg":
            self.reply(200, server.jpeg, "image/jpeg")
        elif path.startswith("/status/"):
            self.reply(int(path.removeprefix("/status/")), b"no")
        elif path.startswith("/flaky/"):  # /flaky/<code>/<n>: fails n times, then serves
            code, failures = map(int, path.split("/")[2:4])
            if hits <= failures:
                self.reply(code, b"try again")
            else:
                self.reply(200, server.jpeg, "image/jpeg")
        elif path == "/slow-body":  # each byte in time for the read timeout, never done
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                if server.stopping.wait(0.1):
                    return
                self.wfile.write(b"x")
                self.wfile.flush()
        elif path == "/stall":  # headers, then silence
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            server.stopping.wait(10)
        elif path == "/big":
            self.reply(200, b"\0" * server.big, "image/jpeg")
        elif path == "/big-no-length":  # close-delimited body, no Content-Length
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(server.big // 65536 + 1):
                self.wfile.write(b"\0" * 65536)
            self.close_connection = True
        elif path == "/loop":
            self.reply(302, headers={"Location": "/loop"})
        elif path == "/to-file":
            self.reply(302, headers={"Location": "file:///etc/passwd"})
        elif path == "/html":
            self.reply(200, b"<!doctype html><title>Not an image</title>", "text/html")
        elif path == "/svg":
            self.reply(
                200,
                b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
                "image/svg+xml",
            )
        elif path == "/truncated.jpg":
            self.reply(200, server.jpeg[: len(server.jpeg) // 2], "image/jpeg")
        elif path == "/bomb.png":
            self.reply(200, server.bomb, "image/png")
        elif path == "/reset":  # close the connection without an answer
            self.close_connection = True
        else:
            self.reply(404, b"Not found")


class FaultServer(LocalServer):
    def __init__(self, big: int = 2_000_000) -> None:
        super().__init__(FaultHandler)
        self.big = big
        self.jpeg = jpeg()
        self.bomb = bomb_png()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.hits: dict[str, int] = {}

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        super().__exit__(*exc)


class RecordingHandler(PicsumHandler):
    """``PicsumHandler`` that records the first hop of every line (its own path)."""

    def do_GET(self) -> None:
        if not self.path.startswith("/id/"):  # a redirect's target is no line of its own
            self.record()
        super().do_GET()

    def record(self) -> None:
        server: RecordingPicsum = self.server.owner
        with server.asked_lock:
            server.asked.append(self.path)


class RecordingPicsum(PicsumServer):
    """A picsum that records the path of every line asked of it (redirects aside)."""

    def __init__(self, photos: int = 4, handler: type[RecordingHandler] = RecordingHandler) -> None:
        super().__init__(photos=photos)
        self.httpd.RequestHandlerClass = handler
        self.asked_lock = threading.Lock()
        self.asked: list[str] = []

    def take(self) -> list[str]:
        """The paths asked since the last ``take``, sorted."""
        with self.asked_lock:
            asked, self.asked = self.asked, []
        return sorted(asked)
