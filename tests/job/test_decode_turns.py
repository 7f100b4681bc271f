"""A batch of small files of many pixels, through a real job, in bounded memory.

A 200 KB PNG holds 49 M RGBA pixels; decoded, converted and encoded it peaks at
about 300 MB. Six of them, one a task, on the session's two CPUs: without the
node's large-decode turn two decode at once; with it, the workers' memory above
where each started stays under what one and a half such decodes take.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import psutil
from PIL import Image
from pymongo.database import Database

from tests.support.corpus import CorpusServer, Sample
from tests.support.jobs import run_itm, write_urls

SIDE = 7000
ONE_DECODE = SIDE * SIDE * 6  # bytes: the decoded RGBA image's share and the LA gray
LIMIT = int(1.5 * ONE_DECODE)


def large_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (SIDE, SIDE), (10, 200, 30, 128)).save(out, format="PNG")
    return out.getvalue()


class Watch(threading.Thread):
    """Samples Ray's workers (this process's descendants) every 20 ms: the largest sum,
    at one instant, of what each worker running ``gray_group`` holds above its resident
    memory when last seen doing anything else (idle, md5)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.before: dict[int, int] = {}
        self.peak = 0

    def run(self) -> None:
        while not self.stop.wait(0.02):
            growth = 0
            for process in psutil.Process().children(recursive=True):
                try:
                    title = " ".join(process.cmdline())
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                if "gray_group" not in title:
                    self.before[process.pid] = rss
                elif process.pid in self.before:
                    growth += max(0, rss - self.before[process.pid])
            self.peak = max(self.peak, growth)


def test_large_decodes_take_turns(
    mongo_uri: str, db: Database, ray_local: None, tmp_path: Path
) -> None:
    data = large_png()
    assert len(data) < 1_000_000
    samples = [Sample(f"large/{n}", "large", data) for n in range(6)]
    watch = Watch()
    watch.start()
    with CorpusServer(samples) as server:
        urls = write_urls(tmp_path, [f"{server.url}/{s.name}" for s in samples])
        assert run_itm(mongo_uri, db.name, urls, "--batch-size", "1") == 0
    watch.stop.set()
    watch.join(5)
    assert [e["status"] for e in db.events.find()] == ["success"] * 6
    assert (db.images.find_one() or {})["mode"] == "LA"
    assert 0.5 * ONE_DECODE < watch.peak < LIMIT, f"{watch.peak / 2**20:.0f} MiB"
