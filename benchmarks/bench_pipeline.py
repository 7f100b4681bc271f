"""itm against a plain sequential loop, on the canonical input, in one run.

    python -m benchmarks.bench_pipeline [--latency 0.1] [--lines N]

A local picsum-like server adds ``--latency`` seconds to every response (the
redirect and the image: two per good line). Both sides start from a fresh
database on the same SecantusDB and write the same schema; the baseline reuses
itm's pure steps (fetch, md5, grayscale) so that only the orchestration differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bson import Binary
from pymongo import UpdateOne
from pymongo.database import Database

from itm.config import Settings
from itm.download import fetch
from itm.embedded import EmbeddedMongo
from itm.errors import Failure
from itm.histogram import floor_minute
from itm.imaging import grayscale_png, md5_hex
from itm.lines import read_lines
from itm.ray_runtime import init_ray
from itm.run import run_job
from itm.store import connect, ensure_indexes
from tests.servers import PicsumServer, picsum_lines

ROOT = Path(__file__).resolve().parent.parent


def sequential(urls: Path, db: Database, settings: Settings) -> tuple[int, int]:
    """One URL at a time: download, md5, grayscale, upsert, event, counter."""
    ensure_indexes(db)
    success = error = 0
    for line, text in read_lines(urls, set()):
        now = datetime.now(timezone.utc)
        event = {"run_id": "sequential", "line": line, "url": text, "finished_at": now}
        try:
            data = fetch(text, settings)
            md5 = md5_hex(data)
            gray = grayscale_png(data, settings.max_pixels, settings.png_level)
            result = db.images.bulk_write([UpdateOne({"md5": md5}, {"$setOnInsert": {
                "md5": md5, "width": gray.width, "height": gray.height, "mode": gray.mode,
                "gray": Binary(gray.png), "source_url": text, "inserted_at": now,
            }}, upsert=True)])
            event |= {"status": "success", "md5": md5, "duplicate": not result.upserted_count}
            success += 1
        except Failure as failure:
            event |= {"status": "error", "reason": failure.reason, "detail": failure.detail}
            error += 1
        db.events.insert_one(event)
        db.monitoring.update_one({"minute": floor_minute(now)},
                                 {"$inc": {event["status"]: 1}}, upsert=True)
    return success, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added per response")
    parser.add_argument("--lines", type=int, default=650, help="lines of the canonical input")
    args = parser.parse_args()
    canonical = (ROOT / "urls.txt").read_text().splitlines()[: args.lines]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as uri, \
            PicsumServer(latency=args.latency) as server:
        urls = Path(tmp) / "urls.txt"
        urls.write_text("\n".join(picsum_lines(server.url, canonical)) + "\n")
        client = connect(uri)
        # The local picsum is on loopback: opt in to private addresses, explicitly.
        settings = Settings(urls=urls, mongo_uri=uri, serve=False, dashboard=False,
                            allow_private_addresses=True)

        started = time.perf_counter()
        base_ok, base_err = sequential(urls, client["bench_sequential"], settings)
        baseline = time.perf_counter() - started
        print(f"sequential: {baseline:7.2f} s  ({base_ok} ok, {base_err} errors)")

        started = time.perf_counter()
        init_ray(None, dashboard=False)
        ray_start = time.perf_counter() - started
        totals, seconds = run_job(dataclasses.replace(settings, db="bench_itm"), uri, "bench")
        print(f"itm:        {seconds:7.2f} s  ({totals.success} ok, {totals.error} errors;"
              f" Ray started in {ray_start:.1f} s before)")
        print(f"speed-up:   {baseline / seconds:7.1f}x  (with Ray's start-up: "
              f"{baseline / (seconds + ray_start):.1f}x)")
        assert (totals.success, totals.error) == (base_ok, base_err), "the two runs disagree"


if __name__ == "__main__":
    main()
