"""A picsum-like server of REAL photographs, in its own process, for benchmarks and tests.

    python -m tests.support.photo_server [--latency 0.1] [--prewarm urls.txt]

``/W/H`` answers 302 to ``/id/<photo>/<W>/<H>.jpg``: one of the sample photos that
scikit-image and matplotlib ship in their wheels, center-cropped and resized to WxH,
JPEG quality 85. Like picsum, a repeated path gets another photo; unlike picsum the
sequence is reproducible (the k-th request of a path always gets the same photo),
so every pipeline of a benchmark downloads exactly the same images. ``/error/…`` is
a 404, sides over 5000 a 400, ``/drip/W/H`` a 200 whose body drips one byte every
0.5 s for ``--drip-seconds`` (a hostile slow server). ``--latency`` is added to every
response. The first line on stdout is the server's URL; it stops when its stdin
closes (its parent went away) or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

from PIL import Image, ImageOps

from tests.support.servers import MAX_SIDE, Handler, LocalServer

SKIMAGE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "motorcycle_left.png",
)
CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "itm-photo-cache"


def photo_files() -> list[Path]:
    """The real photos shipped in the wheels: scikit-image's and matplotlib's."""
    import matplotlib
    import skimage

    data = Path(skimage.__file__).parent / "data"
    files = [data / name for name in SKIMAGE_PHOTOS if (data / name).is_file()]
    return [*files, Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]


@cache
def _photo(index: int) -> Image.Image:
    return Image.open(photo_files()[index]).convert("RGB")


def photo_jpeg(index: int, width: int, height: int) -> bytes:
    """Photo ``index`` center-cropped to WxH, JPEG q85; cached on disk across runs."""
    path = CACHE / f"{index}-{width}x{height}.jpg"
    if path.is_file():
        return path.read_bytes()
    out = io.BytesIO()
    ImageOps.fit(_photo(index), (width, height), Image.Resampling.BICUBIC).save(
        out, format="JPEG", quality=85
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(out.getvalue())
    partial.replace(path)
    return out.getvalue()


def pick(path: str, occurrence: int, photos: int) -> int:
    """The photo of the ``occurrence``-th request of ``path``: random-looking, reproducible."""
    return int(hashlib.md5(f"{path}#{occurrence}".encode()).hexdigest(), 16) % photos


def size_of(parts: list[str]) -> tuple[int, int] | None:
    if len(parts) == 2 and all(part.isdigit() for part in parts):
        return int(parts[0]), int(parts[1])
    return None


class PhotoHandler(Handler):
    def do_GET(self) -> None:
        server: PhotoServer = self.server.owner
        if server.latency:
            time.sleep(server.latency)
        parts = self.path.strip("/").split("/")
        size = size_of(parts[-2:])
        if parts[0] == "error":
            self.reply(404, b"Not found")
        elif parts[0] == "id" and len(parts) == 4 and size_of([parts[2], parts[3][:-4]]):
            body = photo_jpeg(int(parts[1]), int(parts[2]), int(parts[3].removesuffix(".jpg")))
            self.reply(200, body, "image/jpeg")
        elif size and not (0 < size[0] <= MAX_SIDE and 0 < size[1] <= MAX_SIDE):
            self.reply(400, b"Invalid size")
        elif parts[0] == "drip" and size:
            self.drip(server)
        elif size and len(parts) == 2:
            photo = server.next_photo(self.path)
            self.reply(302, headers={"Location": f"/id/{photo}/{size[0]}/{size[1]}.jpg"})
        else:
            self.reply(404, b"Not found")

    def drip(self, server: PhotoServer) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        give_up = time.monotonic() + server.drip_seconds
        while time.monotonic() < give_up and not server.stopping.wait(0.5):
            self.wfile.write(b"\xff")
            self.wfile.flush()
        self.close_connection = True


class PhotoServer(LocalServer):
    def __init__(self, latency: float = 0.0, drip_seconds: float = 60.0) -> None:
        super().__init__(PhotoHandler)
        self.latency = latency
        self.drip_seconds = drip_seconds
        self.photos = len(photo_files())
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()

    def next_photo(self, path: str) -> int:
        with self._lock:
            self._requests[path] += 1
            occurrence = self._requests[path]
        return pick(path, occurrence, self.photos)

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        super().__exit__(*exc)


def prewarm(urls: Path, photos: int) -> int:
    """Encode, in every core, each photo the lines of ``urls`` will get: no pipeline pays it."""
    seen: Counter[str] = Counter()
    wanted = set()
    for line in urls.read_text().splitlines():
        path = "/" + "/".join(line.rsplit("/", 2)[-2:])
        size = size_of(path.strip("/").split("/"))
        if size and "/drip/" not in line and max(size) <= MAX_SIDE:
            seen[path] += 1
            wanted.add((pick(path, seen[path], photos), *size))
    missing = [key for key in wanted if not (CACHE / f"{key[0]}-{key[1]}x{key[2]}.jpg").exists()]
    with ProcessPoolExecutor() as pool:
        list(pool.map(photo_jpeg, *zip(*missing, strict=True), chunksize=16) if missing else [])
    return len(wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per response")
    parser.add_argument("--drip-seconds", type=float, default=60.0)
    parser.add_argument("--prewarm", type=Path, help="URL list whose photos to encode first")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="stop after this long")
    args = parser.parse_args()
    if args.prewarm:
        prewarm(args.prewarm, len(photo_files()))
    with PhotoServer(args.latency, args.drip_seconds) as server:
        print(server.url, flush=True)
        stdin_closed = threading.Thread(target=sys.stdin.read, daemon=True)
        stdin_closed.start()
        stdin_closed.join(args.lifetime)


if __name__ == "__main__":
    main()
