"""Resume at scale: the driver's memory when it resumes a run of a million lines.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_resume [--lines 1000000] [--undone 20000]

Writes a killed run directly through ``MongoWriter`` (lines that fail fast: invalid
URLs): every line done but the last ``--undone`` ones, of which one in a hundred is
done too (batches that were in flight). Then resumes it as ``python -m itm.run
--resume`` does (``run_job`` on a local Ray), sampling the driver's RSS, and, as the
baseline in the same process, builds what the driver held before ``start_run``
returned ranges: the list and the set of every done line number.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.bench_memory import rss_mib
from itm.config import Settings
from itm.embedded import EmbeddedMongo
from itm.job.fingerprint import fingerprint
from itm.job.ray_runtime import init_ray
from itm.job.writer import MongoWriter
from itm.outcomes import Failure
from itm.run import run_job

RUN = "big"


def killed_run(uri: str, db: str, urls: Path, lines: int, undone: int) -> int:
    """Store the run as a driver killed near its end leaves it; return the lines done."""
    writer = MongoWriter(uri, db)
    writer.start_run(RUN, str(urls), False, fingerprint(urls))
    cut = lines - undone
    done = [*range(1, cut + 1), *range(cut + 100, lines + 1, 100)]
    failure = Failure("invalid_url", "URL has no host")
    for start in range(0, len(done), 5000):
        numbers = done[start:start + 5000]
        writer.write(RUN, [(n, f"not a url {n}") for n in numbers], [None] * len(numbers),
                     [failure] * len(numbers))
    writer.client.close()
    return len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--undone", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp) / "mongo") as uri:
        urls = Path(tmp) / "urls.txt"
        urls.write_text("".join(f"not a url {n}\n" for n in range(1, args.lines + 1)))
        started = time.perf_counter()
        done = killed_run(uri, "resume", urls, args.lines, args.undone)
        print(f"killed run stored: {done:,} of {args.lines:,} lines done "
              f"({time.perf_counter() - started:.0f} s)")
        init_ray(None, dashboard=False)
        settings = dataclasses.replace(Settings(), urls=urls, mongo_uri=uri, db="resume",
                                       resume=RUN, batch_size=64, serve=False)
        before = rss_mib()
        peak = before
        running = True

        def sample() -> None:
            nonlocal peak
            while running:
                peak = max(peak, rss_mib())
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        totals, seconds = run_job(settings, uri, RUN)
        running = False
        sampler.join()
        after = rss_mib()
        assert totals.lines == args.lines, totals
        print(f"resume: {args.lines - done:,} lines processed in {seconds:.0f} s; driver RSS "
              f"{before:.1f} MiB before, {peak:.1f} MiB peak, {after:.1f} MiB after "
              f"(+{peak - before:.1f} MiB)")
        # The baseline: the done lines as the driver held them before (a list, then a set).
        base = rss_mib()
        numbers = sorted([*range(1, done + 1)])
        as_set = set(numbers)
        held = rss_mib() - base
        print(f"baseline: every done line number in the driver (list + set of {len(as_set):,}) "
              f"+{held:.1f} MiB")


if __name__ == "__main__":
    main()
