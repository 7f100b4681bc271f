"""Memory stays flat however long the input: driver RSS and object store over a long run.

    python -m benchmarks.bench_memory [--lines 20000]

Runs the canonical input repeated to ``--lines`` lines against a local picsum-like
server, sampling the driver's RSS and the object store's use every few batches,
and prints them at each tenth of the run: flat numbers mean that memory does not
grow with the input.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import tempfile
import threading
from itertools import cycle, islice
from pathlib import Path

import ray
from ray._private.internal_api import memory_summary

from itm.config import Settings
from itm.embedded import EmbeddedMongo
from itm.job.lines import read_lines
from itm.job.pipeline import run_pipeline
from itm.job.ray_runtime import init_ray
from itm.job.writer import WriterActor
from itm.outcomes import Counts
from tests.support.servers import PicsumServer, picsum_lines

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def rss_mib() -> float:
    """Resident memory of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def object_store_used() -> float:
    """MiB in the object store now, as Ray's memory summary reports it."""
    summary = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    found = re.search(r"Plasma memory usage (\d+) MiB", summary)
    return float(found.group(1)) if found else float("nan")


def serve_picsum(urls: multiprocessing.Queue) -> None:
    """The image server, in its own process: what it caches must not count as the driver's."""
    with PicsumServer(photos=200) as server:
        urls.put(server.url)
        threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    args = parser.parse_args()
    canonical = (ROOT / "urls.txt").read_text().splitlines()
    server_url: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve_picsum, args=(server_url,), daemon=True)
    server.start()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as uri:
        urls = Path(tmp) / "urls.txt"
        lines = islice(cycle(picsum_lines(server_url.get(timeout=30), canonical)), args.lines)
        urls.write_text("\n".join(lines) + "\n")
        init_ray(None, dashboard=False)
        # The local picsum is on loopback: opt in to private addresses, explicitly.
        settings = Settings(urls=urls, mongo_uri=uri, allow_private_addresses=True)
        writer = WriterActor.remote(uri, settings.db)
        ray.get(writer.start_run.remote("memory", str(urls), False))
        samples: list[tuple[int, float, float]] = []
        seen = Counts()

        def sample(counts: Counts) -> None:
            seen.add(counts)
            if len(samples) == 0 or seen.lines - samples[-1][0] >= args.lines // 50:
                samples.append((seen.lines, rss_mib(), object_store_used()))

        run_pipeline(read_lines(urls, set()), [writer], "memory", settings, sample)
        sample(Counts())
        print(f"{args.lines:,} lines; driver RSS and object store use while they ran")
        print("    lines  driver RSS MiB  object store MiB")
        step = max(1, len(samples) // 10)
        for done, rss, store in [*samples[::step], samples[-1]]:
            print(f"{done:9,d} {rss:15.1f} {store:17.1f}")
        peak_rss = max(rss for _, rss, _ in samples)
        peak_store = max(store for _, _, store in samples)
        first_tenth = [rss for done, rss, _ in samples if done <= args.lines // 10]
        print(
            f"peak: driver RSS {peak_rss:.1f} MiB (first tenth of the run: "
            f"{max(first_tenth):.1f} MiB), object store {peak_store:.1f} MiB; "
            f"peak/first-tenth RSS ratio {peak_rss / max(first_tenth):.2f}"
        )
    server.terminate()


if __name__ == "__main__":
    main()
