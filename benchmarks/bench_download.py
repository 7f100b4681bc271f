"""Per-URL cost of itm's downloader against the requests session it replaced, on loopback.

Both fetch the canonical input's lines (a 302, then a JPEG; some 404 and 400) from a
local picsum-like server of real photographs (`tests/support/photo_server.py`, JPEG q85 at
the requested size) in its own process, with keep-alive connections: one thread
(the pure per-URL cost) and 16 threads (one download batch). Rounds alternate the
two, so that the machine's noise hits both alike; the medians are compared.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_download
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from itm.config import Settings
from itm.job.download import fetch
from itm.outcomes import Failure
from tests.support.photo_server import PhotoServer
from tests.support.servers import picsum_lines

ROOT = Path(__file__).resolve().parent.parent
# The server is on loopback: opted in to private addresses, explicitly.
SETTINGS = Settings(allow_private_addresses=True)


def serve_picsum(urls: multiprocessing.Queue) -> None:
    """The image server (real photos, JPEG q85 at the requested size) in its own process,
    so that it does not share this one's GIL."""
    with PhotoServer() as server:
        urls.put(server.url)
        threading.Event().wait()


def requests_session() -> requests.Session:
    """The previous downloader: one pooled requests session, streamed bodies."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=16, max_retries=0)
    session.mount("http://", adapter)
    session.max_redirects = SETTINGS.max_redirects
    return session


def with_requests(session: requests.Session) -> Callable[[str], bytes | None]:
    def get(url: str) -> bytes | None:
        with session.get(url, stream=True, timeout=(5, 10)) as response:
            if response.status_code != 200:
                return None
            body = bytearray()
            while chunk := response.raw.read1(65536, decode_content=True):
                body += chunk
            return bytes(body)

    return get


def with_itm(url: str) -> bytes | None:
    try:
        return fetch(url, SETTINGS)
    except Failure:
        return None


def timed(get: Callable[[str], bytes | None], urls: list[str], threads: int) -> float:
    """Seconds per URL over the whole list."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(get, urls))
    assert sum(result is not None for result in results) > len(urls) // 2
    return (time.perf_counter() - started) / len(urls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    queue: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve_picsum, args=(queue,), daemon=True)
    server.start()
    urls = picsum_lines(queue.get(timeout=30), (ROOT / "urls.txt").read_text().splitlines())
    old = with_requests(requests_session())
    print(f"{len(urls)} URLs a round, {args.rounds} rounds; microseconds per URL (median)")
    print("threads  requests       itm   itm/requests")
    try:
        for threads in (1, 16):
            timed(old, urls, threads), timed(with_itm, urls, threads)  # warm both pools
            pairs = [
                (timed(old, urls, threads), timed(with_itm, urls, threads))
                for _ in range(args.rounds)
            ]
            before = statistics.median(pair[0] for pair in pairs)
            after = statistics.median(pair[1] for pair in pairs)
            print(f"{threads:7d} {before * 1e6:9.0f} {after * 1e6:9.0f} {after / before:14.2f}")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
