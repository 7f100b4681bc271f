"""The API's cost against the database's size: 1,000 events vs 200,000 events.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_api_scale

Generates two databases directly (not by a job), with the same 60 minutes of
per-minute counters: 1,000 events and 100 images, and 200,000 events and 20,000
images. Serves each with plain uvicorn (the app's own cost, without Serve's) and
times ``/``, ``/monitoring?format=json`` and ``/images`` from one client: the
ratio large/small should stay under 2. For reference it also times, with
pymongo, a scan of the events by reason: what the dashboard would cost if it read
the events instead of the per-minute counters.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from bson import ObjectId
from pymongo.database import Database

from benchmarks.bench_api import server_process
from itm.embedded import EmbeddedMongo
from itm.store import (
    EVENTS,
    IMAGES,
    MONITORING,
    RUNS,
    connect,
    ensure_indexes,
    event_doc,
    image_doc,
    run_doc,
)
from tests.support.apidata import png_bytes

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
REASONS = ("http_404", "http_400", "timeout", "not_an_image")
ROUTES = ("/", "/monitoring?format=json", "/images")
SIZES = {"small": (1_000, 100), "large": (200_000, 20_000)}  # name -> (events, images)
BATCH = 10_000


def generate(db: Database, events: int, images: int, minutes: int = 60) -> list[str]:
    """Write ``events`` events (one in ten an error) over ``minutes`` minutes, their
    per-minute counters (with ``reasons``) and ``images`` small images inserted over the
    same minutes, as a job stores them; return the md5s."""
    from PIL import Image

    ensure_indexes(db)
    png = png_bytes(Image.new("L", (8, 8), 128))
    md5s = [hashlib.md5(str(i).encode()).hexdigest() for i in range(images)]
    for first in range(0, images, BATCH):
        db[IMAGES].insert_many(
            [
                image_doc(
                    md5s[i],
                    8,
                    8,
                    "L",
                    f"https://example.test/{i}",
                    START + timedelta(minutes=minutes) * i / images,
                    "bench",
                    i + 1,
                    gray=png,
                )
                for i in range(first, min(first + BATCH, images))
            ]
        )
    counters: dict[int, dict] = {}
    for first in range(0, events, BATCH):
        batch = []
        tally, lines = ObjectId(), [[first + 1, min(first + BATCH, events)]]
        for i in range(first, min(first + BATCH, events)):
            minute = i * minutes // events
            error = i % 10 == 9
            reason = REASONS[i // 10 % len(REASONS)] if error else None
            tally = counters.setdefault(
                minute, {"success": 0, "error": 0, "images": 0, "reasons": {}}
            )
            if error:
                tally["error"] += 1
                tally["reasons"][reason] = tally["reasons"].get(reason, 0) + 1
            else:
                tally["success"] += 1
            batch.append(
                event_doc(
                    "bench",
                    i + 1,
                    f"https://example.test/{i}",
                    None if error else md5s[i % images],
                    START + timedelta(minutes=minute),
                    tally,
                    lines,
                    reason=reason,
                    duplicate=i >= images,
                )
            )
        db[EVENTS].insert_many(batch)
    for i in range(images):  # as the writer counts them: in the minute each was stored
        counters[i * minutes // images]["images"] += 1
    db[MONITORING].insert_many(
        [
            {"minute": START + timedelta(minutes=minute), **tally}
            for minute, tally in sorted(counters.items())
        ]
    )
    run = run_doc("bench", "urls.txt", START) | {"finished_at": START + timedelta(minutes=minutes)}
    db[RUNS].insert_one(run)
    return md5s


def p50_ms(base: str, path: str, requests: int) -> float:
    latencies = []
    with httpx.Client(base_url=base, timeout=60) as http:
        http.get(path)
        for _ in range(requests):
            started = time.perf_counter()
            response = http.get(path)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
    return statistics.median(latencies) * 1000


def events_scan_ms(db: Database) -> float:
    """Errors by reason from the events rather than the minute counters: a scan of every event."""
    started = time.perf_counter()
    list(
        db[EVENTS].aggregate(
            [
                {"$match": {"status": "error"}},
                {"$group": {"_id": "$reason", "count": {"$sum": 1}}},
            ]
        )
    )
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per route and database")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as uri:
        client = connect(uri)
        for name, (events, images) in SIZES.items():
            started = time.perf_counter()
            generate(client[name], events, images)
            print(
                f"{name}: {events:,} events, {images:,} images generated in "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
        scans = {name: events_scan_ms(client[name]) for name in SIZES}
        client.close()
        p50s: dict[tuple[str, str], float] = {}
        for name in SIZES:
            # What a read costs, not a snapshot of it: every request reads MongoDB.
            with server_process("uvicorn", uri, name, api_snapshot_s="0") as (base, _, _):
                for route in ROUTES:
                    p50s[(name, route)] = p50_ms(base, route, args.requests)
                    print(f"  {name:5} {route:26} p50 {p50s[(name, route)]:7.2f} ms", flush=True)
    print("\nlarge / small p50 (target < 2):")
    for route in ROUTES:
        print(
            f"  {route:26} {p50s[('small', route)]:7.2f} ms -> {p50s[('large', route)]:7.2f} ms"
            f"  x{p50s[('large', route)] / p50s[('small', route)]:.2f}"
        )
    print(
        f"  (the old dashboard's events scan: {scans['small']:.1f} ms -> "
        f"{scans['large']:.1f} ms, x{scans['large'] / scans['small']:.0f})"
    )


if __name__ == "__main__":
    main()
