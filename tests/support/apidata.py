"""A small database that follows the data contract, for the API's tests and benchmark.

The writer actor is the only writer of a real database; this module builds the
same documents with the contract's builders (``itm.store``) and writes them with
pymongo (real PNGs made with Pillow, one stored in GridFS), counting minutes as the
writer does, so that the API can be tested on its own. Every API test gets its data from
``fill``, ``fill_minutes`` (a span of counters) or ``RunningRun`` (a run at work).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import gridfs
import numpy as np
from bson import ObjectId
from PIL import Image
from pymongo.database import Database

from itm.outcomes import Counts
from itm.store import (
    EMPTY_MINUTE,
    EVENTS,
    GRAY_BUCKET,
    IMAGES,
    MINUTE,
    MONITORING,
    RUNS,
    ImageDoc,
    ensure_indexes,
    event_doc,
    floor_minute,
    image_doc,
    minute_increments,
    run_doc,
)

RUN_ID = "run-api-test"
START = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
# (minute offset from START, success, error); minute 2 has no document: a gap to zero-fill.
COUNTS = [(0, 2, 1), (1, 1, 2), (3, 2, 1)]  # adds up to the events below
# Why each failing line failed; one reason is markup, which the dashboard must escape.
REASONS = ["http_404", "http_404", "timeout", "<b>not_an_image</b>"]
# The errors of each minute of COUNTS by reason, as the writer counts them.
MINUTE_REASONS = [{"http_404": 1}, {"http_404": 1, "timeout": 1}, {"<b>not_an_image</b>": 1}]


@dataclass
class ApiData:
    """What ``fill`` wrote, for the tests to compare with."""

    pngs: dict[str, bytes] = field(default_factory=dict)  # md5 -> stored PNG bytes
    newest_first: list[str] = field(default_factory=list)  # md5s as /images lists them
    gridfs_md5: str = ""
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # md5 -> (width, height)

    @property
    def success(self) -> int:
        return sum(success for _, success, _ in COUNTS)

    @property
    def error(self) -> int:
        return sum(error for _, _, error in COUNTS)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _images(rng: np.random.Generator) -> list[tuple[bytes, Image.Image]]:
    """(source bytes, grayscale image) pairs: L and LA modes, one too noisy to compress."""
    pairs = []
    for width, height, mode in [(64, 48, "L"), (40, 30, "LA"), (32, 32, "L"), (50, 20, "L")]:
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        source = png_bytes(Image.fromarray(rgb, "RGB"))
        gray = Image.fromarray((rgb.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8), "L")
        if mode == "LA":
            gray.putalpha(Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)))
        pairs.append((source, gray))
    # Noise does not compress: this PNG spans several GridFS chunks (255 KiB each).
    noise = Image.fromarray(rng.integers(0, 256, (800, 800), dtype=np.uint8), "L")
    pairs.append((png_bytes(noise.convert("RGB")), noise))
    return pairs


def fill(db: Database) -> ApiData:
    """Write images, monitoring counters, events and a run into ``db``.

    Two images share one ``inserted_at`` so that paging must break the tie on md5;
    the last (large) one is stored in GridFS with ``gray_id``.
    """
    ensure_indexes(db)
    data = ApiData()
    pairs = _images(np.random.default_rng(7))
    docs: list[ImageDoc] = []
    for index, (source, gray) in enumerate(pairs):
        md5 = hashlib.md5(source).hexdigest()
        png = png_bytes(gray)
        in_gridfs = index == len(pairs) - 1
        if in_gridfs:
            gridfs.GridFSBucket(db, bucket_name=GRAY_BUCKET).upload_from_stream_with_id(
                md5, f"{md5}.png", png
            )
            data.gridfs_md5 = md5
        docs.append(
            image_doc(
                md5,
                gray.width,
                gray.height,
                gray.mode,
                f"https://example.test/{index}.png",
                START + timedelta(seconds=min(index, 2)),
                RUN_ID,
                index + 1,
                gray=None if in_gridfs else png,
                gray_id=md5 if in_gridfs else None,
            )
        )
        data.pngs[md5] = png
        data.sizes[md5] = (gray.width, gray.height)
    db[IMAGES].insert_many(docs)
    data.newest_first = [
        doc["md5"] for doc in sorted(docs, key=lambda d: (d["inserted_at"], d["md5"]), reverse=True)
    ]
    db[RUNS].insert_one(run_doc(RUN_ID, "urls.txt", START))
    for (offset, success, error), reasons in zip(COUNTS, MINUTE_REASONS, strict=True):
        # Every success of fill stored its image first: images = success.
        counts = Counts(success=success, error=error, reasons=Counter(reasons))
        count(db, RUN_ID, START + timedelta(minutes=offset), counts)
    tally, batch = ObjectId(), [[1, len(docs) + len(REASONS)]]
    events = [
        event_doc(RUN_ID, line, f"https://example.test/{line}", doc["md5"], START, tally, batch)
        for line, doc in enumerate(docs, start=1)
    ]
    events += [
        event_doc(
            RUN_ID, line, f"https://example.test/{line}", None, START, tally, batch, reason=reason
        )
        for line, reason in enumerate(REASONS, start=len(docs) + 1)
    ]
    db[EVENTS].insert_many(events)
    finished = START + timedelta(minutes=4)
    totals = Counts.of_events(events).as_totals()
    db[RUNS].update_one(
        {"_id": RUN_ID},
        {"$set": {"finished_at": finished, "heartbeat": finished, "totals": totals}},
    )
    return data


def count(db: Database, run_id: str, minute: datetime, counts: Counts) -> None:
    """Add ``counts`` of ``run_id`` to ``minute`` as the writer adds a tally: the run lists
    the minute, which is created empty, then gets the increments and the tally."""
    db[RUNS].update_one({"_id": run_id}, {"$addToSet": {"minutes": minute}})
    db[MONITORING].update_one({"minute": minute}, {"$setOnInsert": EMPTY_MINUTE}, upsert=True)
    db[MONITORING].update_one(
        {"minute": minute},
        {"$inc": minute_increments(run_id, counts), "$push": {"tallies": ObjectId()}},
    )


def fill_minutes(db: Database, last: datetime, minutes: int) -> list[tuple[int, int]]:
    """``minutes`` busy minutes of counters up to ``last`` (each with successes and
    errors, as a long run leaves them); returns their (success, error), oldest first."""
    ensure_indexes(db)
    rng = np.random.default_rng(minutes)
    counts = [(int(rng.integers(200, 560)), int(rng.integers(20, 100))) for _ in range(minutes)]
    first = last - (minutes - 1) * MINUTE
    for i, (success, error) in enumerate(counts):
        counted = Counts(success=success, error=error, reasons=Counter(timeout=error))
        count(db, "run-busy", first + i * MINUTE, counted)
    return counts


class RunningRun:
    """A run whose driver is alive, written as the writer actor writes one: its
    document with a heartbeat, its minutes, its counters in each (``by_run``)."""

    def __init__(self, db: Database, run_id: str, total: int) -> None:
        ensure_indexes(db)
        self.db, self.run_id = db, run_id
        db[RUNS].insert_one(run_doc(run_id, "urls.txt", datetime.now(timezone.utc), total=total))

    def count(self, success: int, error: int) -> None:
        """Lines that finished now (the errors timed out): counted in this minute, the
        heartbeat beats."""
        now = datetime.now(timezone.utc)
        counts = Counts(success=success, error=error, reasons=Counter(timeout=error))
        count(self.db, self.run_id, floor_minute(now), counts)
        self.db[RUNS].update_one({"_id": self.run_id}, {"$set": {"heartbeat": now}})

    def finish(self) -> None:
        now = datetime.now(timezone.utc)
        self.db[RUNS].update_one(
            {"_id": self.run_id}, {"$set": {"finished_at": now, "heartbeat": now}}
        )
