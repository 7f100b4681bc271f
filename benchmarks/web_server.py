"""A web-like image server for ``benchmarks.bench_web``, in its own process.

    python -m benchmarks.web_server [--cert CERT --key KEY]

One threaded server on 127.0.0.1 answers for every host name that resolves there
(the benchmark maps hundreds of names to it). The server holds no workload: each
path says what to answer and after how long, so that every pipeline of a run sees
exactly the same answers, whatever order it asks in:

- ``/p/<photo>/<W>x<H>/<ms>``: 200, photo ``<photo>`` of ``tests/support/photo_server.py``
  (real photographs) center-cropped to WxH, JPEG q85;
- ``/s/<code>/<ms>``: that status, a short text body;
- ``/r/<host>/<ms>/<rest>``: 302 to ``/<rest>`` on ``<host>``, same scheme and port.

Each answer is sent ``<ms>`` milliseconds after its request arrived. With ``--cert``
and ``--key`` it speaks only TLS; the handshake runs in the connection's own thread,
so a slow client holds no other. The first line on stdout is the port; it stops when
its stdin closes (its parent went away).
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time
from functools import cache
from pathlib import Path

from tests.support.photo_server import photo_jpeg
from tests.support.servers import Handler, LocalServer


@cache
def _jpeg(photo: int, width: int, height: int) -> bytes:
    return photo_jpeg(photo, width, height)  # encoded and cached on disk by the benchmark


class WebHandler(Handler):
    def setup(self) -> None:
        tls: ssl.SSLContext | None = self.server.owner.tls
        if tls is not None:
            try:
                self.request = tls.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError) as exc:  # a client that refuses our CA: expected
                self.request.close()
                raise ConnectionAbortedError(exc) from None  # which the server does not log
        super().setup()

    def do_GET(self) -> None:
        arrived = time.monotonic()
        status, body, headers, ms = self.answer(self.server.owner)
        time.sleep(max(0.0, arrived + ms / 1000 - time.monotonic()))
        self.reply(status, body, "image/jpeg" if status == 200 else "text/plain", headers)

    def answer(self, server: WebServer) -> tuple[int, bytes, dict[str, str], int]:
        kind, *args = self.path.strip("/").split("/")
        if kind == "p" and len(args) == 3:
            width, height = map(int, args[1].split("x"))
            return 200, _jpeg(int(args[0]), width, height), {}, int(args[2])
        if kind == "s" and len(args) == 2:
            return int(args[0]), b"no", {}, int(args[1])
        if kind == "r" and len(args) >= 3:
            location = f"{server.scheme}://{args[0]}:{server.port}/{'/'.join(args[2:])}"
            return 302, b"", {"Location": location}, int(args[1])
        return 400, b"Unknown path", {}, 0


class WebServer(LocalServer):
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(WebHandler)
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.port = self.httpd.server_address[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cert", type=Path, help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--key", type=Path, help="PEM private key of --cert")
    args = parser.parse_args()
    tls = None
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
    with WebServer(tls) as server:
        print(server.port, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
