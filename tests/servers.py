"""Real HTTP servers on 127.0.0.1 for the tests and the benchmarks.

``PicsumServer`` behaves like picsum.photos: ``/W/H`` answers 302 to a JPEG of W×H
chosen at random among a few photos, ``/error/…`` is a 404, huge sizes are a 400.
It records the MD5 and bytes of every image it serves, so a test can check the
database against exactly what went over the wire.
"""

from __future__ import annotations

import hashlib
import io
import random
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


class Handler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler; a reply is written in one go."""

    protocol_version = "HTTP/1.1"
    # http.server writes headers and body separately: without this every response
    # waits ~40 ms for a delayed ACK, and a benchmark would measure that.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def reply(self, status: int, body: bytes = b"", content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
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
                self.reply(302, headers={"Location": f"/id/{server.pick()}/{width}/{height}.jpg"})
        else:
            self.reply(404, b"Not found")


class PicsumServer(LocalServer):
    """picsum.photos on loopback, with ``latency`` seconds added to every response."""

    def __init__(self, photos: int = 20, latency: float = 0.0, seed: int = 0) -> None:
        super().__init__(PicsumHandler)
        self.photos = photos
        self.latency = latency
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int, int], bytes] = {}
        self.served: dict[str, bytes] = {}  # md5 → JPEG bytes of every image served

    def pick(self) -> int:
        with self._lock:
            return self._random.randrange(self.photos)

    def image(self, photo_id: int, width: int, height: int) -> bytes:
        key = (photo_id, width, height)
        with self._lock:
            body = self._cache.get(key)
        if body is None:
            out = io.BytesIO()
            photo(photo_id, width, height).save(out, format="JPEG", quality=85)
            body = out.getvalue()
            with self._lock:
                self._cache[key] = body
        with self._lock:
            self.served[hashlib.md5(body).hexdigest()] = body
        return body


def picsum_lines(base: str, canonical: list[str]) -> list[str]:
    """The canonical input with picsum.photos replaced by a local server's address."""
    return [line.replace("https://picsum.photos", base) for line in canonical]


