"""The writer alone against direct bulk writes of the same documents.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_writer [--lines 2048] [--rounds 3]

No Ray and no downloads: ``MongoWriter.write`` is called in a loop on batches of
prepared lines (85% new images, ~28 KB grayscale PNGs cut from a real photo, 15%
errors), against a baseline that writes the same documents with the fewest
round trips a plain script needs: one bulk upsert of the images, one bulk insert
of the events and one ``$inc`` of the minute per batch. Each round runs both on
fresh databases of one SecantusDB server, alternately, and the ratio is taken
within the round (the machine is noisy); the median round is printed, with the
MongoDB commands each side sends per batch.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import matplotlib.cbook
from PIL import Image
from pymongo import UpdateOne, monitoring
from pymongo.database import Database

from itm import store
from itm.embedded import EmbeddedMongo
from itm.job.imaging import GrayImage, grayscale_png
from itm.job.writer import MongoWriter, utcnow
from itm.outcomes import Failure
from itm.store import floor_minute

Batch = tuple[list[tuple[int, str]], list[str | None], list[GrayImage | Failure]]


class CommandCounter(monitoring.CommandListener):
    """Counts the commands (round trips) every client of this process sends."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.sent[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def photo_pngs(count: int) -> list[GrayImage]:
    """Grayscale PNGs of 200x200 crops of a real photo (matplotlib's sample), ~28 KB each."""
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    grays = []
    for n in range(count):
        left, top = (n * 37) % (photo.width - 200), (n * 53) % (photo.height - 200)
        out = io.BytesIO()
        photo.crop((left, top, left + 200, top + 200)).save(out, format="JPEG", quality=85)
        grays.append(grayscale_png(out.getvalue(), 10**8, 1))
    return grays


def make_batches(lines: int, size: int) -> list[Batch]:
    grays = photo_pngs(32)
    batches = []
    for start in range(1, lines + 1, size):
        numbers = range(start, min(start + size, lines + 1))
        batch: Batch = ([], [], [])
        for n in numbers:
            batch[0].append((n, f"http://images.test/{n}/200/200"))
            if n % 7 == 0:
                batch[1].append(None)
                batch[2].append(Failure("http_404", "HTTP 404 Not Found"))
            else:
                batch[1].append(f"{n:032x}")  # every image distinct, as picsum's mostly are
                batch[2].append(grays[n % len(grays)])
        batches.append(batch)
    return batches


def direct(db: Database, run_id: str, batches: list[Batch]) -> None:
    """The baseline: the same documents, three writes per batch, no exactly-once bookkeeping."""
    store.ensure_indexes(db)
    for lines, md5s, grays in batches:
        now = utcnow()
        images, events, outcome = [], [], Counter()
        for (line, url), md5, gray in zip(lines, md5s, grays, strict=True):
            event = {"run_id": run_id, "line": line, "url": url, "md5": md5, "finished_at": now}
            if isinstance(gray, Failure):
                event |= {
                    "status": "error",
                    "reason": gray.reason,
                    "detail": gray.detail,
                    "duplicate": False,
                }
            else:
                event |= {"status": "success", "reason": None, "detail": None, "duplicate": False}
                images.append(
                    UpdateOne(
                        {"md5": md5},
                        {
                            "$setOnInsert": {
                                "md5": md5,
                                "width": gray.width,
                                "height": gray.height,
                                "mode": gray.mode,
                                "gray": gray.png,
                                "source_url": url,
                                "inserted_at": now,
                                "run_id": run_id,
                                "line": line,
                            }
                        },
                        upsert=True,
                    )
                )
            events.append(event)
            outcome[event["status"]] += 1
        if images:
            db[store.IMAGES].bulk_write(images, ordered=False)
        db[store.EVENTS].insert_many(events, ordered=False)
        db[store.MONITORING].update_one(
            {"minute": floor_minute(now)},
            {"$inc": {"success": outcome["success"], "error": outcome["error"]}},
            upsert=True,
        )


def through_writer(writer: MongoWriter, run_id: str, batches: list[Batch]) -> None:
    writer.start_run(run_id, "bench", False)
    for lines, md5s, grays in batches:
        writer.write(run_id, lines, md5s, grays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counter = CommandCounter()
    monitoring.register(counter)  # before any client is made
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as uri:
        client = store.connect(uri)
        print(f"{args.lines} lines a run, {args.rounds} rounds; lines/s, median round")
        print("batch  direct lines/s  writer lines/s  ratio  commands/batch direct  writer")
        for size in (16, 32, 64):  # 32: the default --batch-size
            batches = make_batches(args.lines, size)
            ratios, speeds, commands = [], [], {}
            for round_ in range(args.rounds):
                seconds = {}
                for side in ("direct", "writer"):
                    name = f"bench_{side}_{size}_{round_}"
                    client.drop_database(name)
                    writer = MongoWriter(uri, name) if side == "writer" else None
                    before = sum(counter.sent.values())
                    started = time.perf_counter()
                    if writer is None:
                        direct(client[name], "bench", batches)
                    else:
                        through_writer(writer, "bench", batches)
                    seconds[side] = time.perf_counter() - started
                    commands[side] = (sum(counter.sent.values()) - before) / len(batches)
                    if writer is not None:
                        writer.client.close()
                    client.drop_database(name)
                ratios.append(seconds["direct"] / seconds["writer"])
                speeds.append((args.lines / seconds["direct"], args.lines / seconds["writer"]))
            median = statistics.median(ratios)
            direct_speed, writer_speed = speeds[ratios.index(median)]
            print(
                f"{size:5d} {direct_speed:15.0f} {writer_speed:15.0f} {median:6.2f}x"
                f" {commands['direct']:22.1f} {commands['writer']:7.1f}"
            )
        client.close()


if __name__ == "__main__":
    main()
