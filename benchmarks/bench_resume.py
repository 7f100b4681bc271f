"""Resume and retry at scale: the driver's memory on a run of a million lines.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_resume [--lines 1000000] [--undone 20000]
    flock /tmp/itm-bench.lock python -m benchmarks.bench_resume --retry-every 20 [--lines 1000000]

Writes a killed run directly, as the writer leaves it (lines that fail fast: invalid
URLs): every line done but the last ``--undone`` ones, of which one in a hundred is
done too (batches that were in flight). Then resumes it as ``python -m itm.run
--resume`` does (``run_job`` on a local Ray), sampling the driver's RSS, and, as the
baseline in the same process, builds what the driver held before ``start_run``
returned ranges: the list and the set of every done line number.

``--retry-every N``: a finished run instead, every line failed (``invalid_url``, and
``timeout`` for one line in N), its events and totals inserted directly (what the
writer stores, without its counters: minutes of setup instead of half an hour). Then ``python -m
itm.run --retry-failed big --reasons timeout`` as a new run, sampling the driver's
RSS; the baseline, in the same process, is what a retry that loads what it needs
would hold: every failed (line, URL) of the run, as events give them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bson import ObjectId

from benchmarks.bench_memory import rss_mib
from itm import store
from itm.config import Settings
from itm.embedded import EmbeddedMongo
from itm.job.fingerprint import fingerprint
from itm.job.lineset import LineSet
from itm.job.ray_runtime import init_ray
from itm.job.writer import MongoWriter
from itm.outcomes import Counts
from itm.run import run_job
from itm.store import connect

RUN = "big"


@dataclass
class Rss:
    before: float
    peak: float = 0.0
    after: float = 0.0


@contextlib.contextmanager
def sampled_rss() -> Iterator[Rss]:
    """The driver's RSS before, at its peak (sampled every 0.2 s) and after the block."""
    rss = Rss(rss_mib())
    rss.peak = rss.before
    running = True

    def sample() -> None:
        while running:
            rss.peak = max(rss.peak, rss_mib())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield rss
    finally:
        running = False
        sampler.join()
        rss.after = rss_mib()


def killed_run(uri: str, db: str, urls: Path, lines: int, undone: int) -> int:
    """Store the run as a driver killed near its end leaves it; return the lines done.

    Stored directly, as the writer leaves it: the run, its events (a tally per 5,000
    lines, the writer's bookkeeping) and the minute that counted them. Through the
    writer, a million lines take 17-30 min to store here; this takes a few.
    """
    writer = MongoWriter(uri, db)
    writer.start_run(RUN, str(urls), False, fingerprint(urls))
    writer.client.close()
    cut = lines - undone
    done = [*range(1, cut + 1), *range(cut + 100, lines + 1, 100)]
    client = connect(uri)
    now = datetime.now(timezone.utc)
    tallies = []
    for start in range(0, len(done), 5000):
        numbers = done[start : start + 5000]
        tally = ObjectId()
        tallies.append(tally)
        batch = LineSet.of(numbers).ranges
        client[db][store.EVENTS].insert_many(
            [
                store.event_doc(
                    RUN,
                    n,
                    f"not a url {n}",
                    None,
                    now,
                    tally,
                    batch,
                    reason="invalid_url",
                    detail="URL has no host",
                )
                for n in numbers
            ]
        )
    client[db][store.MONITORING].insert_one(
        {
            "minute": store.floor_minute(now),
            "success": 0,
            "error": len(done),
            "images": 0,
            "reasons": {"invalid_url": len(done)},
            "tallies": tallies,
        }
    )
    client.close()
    return len(done)


def finished_run(uri: str, db: str, urls: Path, lines: int, every: int) -> int:
    """Store a finished run whose lines all failed, one in ``every`` by timeout; return
    how many did."""
    client = connect(uri)
    store.ensure_indexes(client[db])
    now = datetime.now(timezone.utc)
    timeouts = lines // every
    totals = Counts(error=lines, reasons=Counter(timeout=timeouts, invalid_url=lines - timeouts))
    client[db][store.RUNS].insert_one(
        {
            "_id": RUN,
            "input": str(urls),
            "started_at": now,
            "fingerprint": fingerprint(urls),
            "finished_at": now,
            "totals": totals.as_totals(),
        }
    )
    for start in range(1, lines + 1, 10_000):
        client[db][store.EVENTS].insert_many(
            [
                {
                    "run_id": RUN,
                    "line": n,
                    "url": f"not a url {n}",
                    "status": "error",
                    "reason": "timeout" if n % every == 0 else "invalid_url",
                    "detail": "",
                    "md5": None,
                    "duplicate": False,
                    "finished_at": now,
                }
                for n in range(start, min(start + 10_000, lines + 1))
            ]
        )
    client.close()
    return timeouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--undone", type=int, default=20_000)
    parser.add_argument(
        "--retry-every",
        type=int,
        default=0,
        help="retry the timeouts of a finished run, one line in N",
    )
    args = parser.parse_args()
    # Ray first: on a loaded machine its 30 s start-up limit must not waste the stored run.
    init_ray(None, dashboard=False)
    if args.retry_every:
        return retry(args.lines, args.retry_every)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp) / "mongo") as uri:
        urls = Path(tmp) / "urls.txt"
        urls.write_text("".join(f"not a url {n}\n" for n in range(1, args.lines + 1)))
        started = time.perf_counter()
        done = killed_run(uri, "resume", urls, args.lines, args.undone)
        print(
            f"killed run stored: {done:,} of {args.lines:,} lines done "
            f"({time.perf_counter() - started:.0f} s)"
        )
        settings = dataclasses.replace(
            Settings(),
            urls=urls,
            mongo_uri=uri,
            db="resume",
            resume=RUN,
            batch_size=64,
            serve=False,
        )
        with sampled_rss() as rss:
            totals, seconds = run_job(settings, uri, RUN)
        assert totals.lines == args.lines, totals
        print(
            f"resume: {args.lines - done:,} lines processed in {seconds:.0f} s; driver RSS "
            f"{rss.before:.1f} MiB before, {rss.peak:.1f} MiB peak, {rss.after:.1f} MiB "
            f"after (+{rss.peak - rss.before:.1f} MiB)"
        )
        # The baseline: the done lines as the driver held them before (a list, then a set).
        base = rss_mib()
        numbers = sorted([*range(1, done + 1)])
        as_set = set(numbers)
        held = rss_mib() - base
        print(
            f"baseline: every done line number in the driver (list + set of {len(as_set):,}) "
            f"+{held:.1f} MiB"
        )


def retry(lines: int, every: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp) / "mongo") as uri:
        urls = Path(tmp) / "urls.txt"
        urls.write_text("".join(f"not a url {n}\n" for n in range(1, lines + 1)))
        started = time.perf_counter()
        todo = finished_run(uri, "retry", urls, lines, every)
        print(
            f"finished run stored: {lines:,} failed lines, {todo:,} of them timeouts "
            f"({time.perf_counter() - started:.0f} s)"
        )
        settings = dataclasses.replace(
            Settings(),
            mongo_uri=uri,
            db="retry",
            batch_size=64,
            serve=False,
            retry_failed=RUN,
            reasons="timeout",
        )
        with sampled_rss() as rss:
            totals, seconds = run_job(settings, uri, "retried")
        assert totals.lines == todo, totals
        print(
            f"retry: {todo:,} of {lines:,} lines processed in {seconds:.0f} s "
            f"({todo / seconds:.0f} lines/s); driver RSS {rss.before:.1f} MiB before, "
            f"{rss.peak:.1f} MiB peak, {rss.after:.1f} MiB after "
            f"(+{rss.peak - rss.before:.1f} MiB)"
        )
        base = rss_mib()
        client = connect(uri)
        loaded = [
            (event["line"], event["url"])
            for event in client["retry"][store.EVENTS].find(
                {"run_id": RUN, "status": "error"}, {"_id": 0, "line": 1, "url": 1}
            )
        ]
        print(
            f"baseline: every failed (line, URL) of the run in the driver (a list of "
            f"{len(loaded):,}) +{rss_mib() - base:.1f} MiB"
        )
        client.close()


if __name__ == "__main__":
    main()
