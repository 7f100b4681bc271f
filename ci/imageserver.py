"""The image server of ci/container-check.sh: a few fixed images and failures, stdlib only.

    python3 imageserver.py serve [--host 127.0.0.1] [--port 8000] [--lifetime 900]
    python3 imageserver.py md5        # "<md5> <path>" of every image it serves
    python3 imageserver.py urls BASE  # the URL list of the check, for a server at BASE
    python3 imageserver.py expect     # JSON: what a run of that list must store

The images are generated (deterministic PNGs), so the host and a container agree
on their bytes without sharing files. The server stops by itself after --lifetime
seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import struct
import sys
import threading
import zlib


def png(width: int, height: int, seed: int) -> bytes:
    """An RGB PNG with a gradient that depends on ``seed``."""
    rows = b"".join(
        b"\0"
        + bytes(
            channel
            for x in range(width)
            for channel in ((x * seed) % 256, (y * 7 + seed) % 256, (x + y) * seed % 256)
        )
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


IMAGES = {"/img/1.png": png(64, 48, 3), "/img/2.png": png(40, 30, 11)}
TEXT = "/text"  # 200, text/plain: not an image

# The check's input: 6 lines, each with one expected outcome (reason None: success).
LINES = [
    ("{base}/img/1.png", None),
    ("{base}/img/2.png", None),
    ("{base}/img/1.png", None),  # the same bytes again: a duplicate, stored once
    ("{base}/missing.png", "http_404"),
    ("{base}" + TEXT, "not_an_image"),
    ("not a url", "invalid_url"),
]


class Handler(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        if self.path in IMAGES:
            self.reply(200, "image/png", IMAGES[self.path])
        elif self.path == TEXT:
            self.reply(200, "text/plain", b"this is not an image\n")
        else:
            self.reply(404, "text/plain", b"not found\n")

    def reply(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(
            f"imageserver: {self.command} {self.path} {args[1] if len(args) > 1 else ''}",
            file=sys.stderr,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--lifetime", type=float, default=900.0)
    sub.add_parser("md5")
    urls = sub.add_parser("urls")
    urls.add_argument("base")
    sub.add_parser("expect")
    args = parser.parse_args()
    if args.what == "md5":
        for path, body in IMAGES.items():
            print(hashlib.md5(body).hexdigest(), path)
    elif args.what == "expect":
        reasons = [reason for _, reason in LINES if reason]
        md5s = sorted(hashlib.md5(body).hexdigest() for body in IMAGES.values())
        print(
            json.dumps(
                {
                    "lines": len(LINES),
                    "images": md5s,
                    "success": len(LINES) - len(reasons),
                    "reasons": sorted(reasons),
                }
            )
        )
    elif args.what == "urls":
        for line, _ in LINES:
            print(line.format(base=args.base.rstrip("/")))
    else:
        server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
        threading.Timer(args.lifetime, server.shutdown).start()
        print(f"imageserver: on http://{args.host}:{server.server_port}", file=sys.stderr)
        server.serve_forever()


if __name__ == "__main__":
    main()
