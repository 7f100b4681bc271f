"""A small database that follows the data contract, for the API's tests and benchmark.

The writer actor is the only writer of a real database; this module writes the
same shapes with pymongo (real PNGs made with Pillow, one stored in GridFS) so
that the API can be tested on its own. Every API test gets its data from
``fill``, ``fill_minutes`` (a span of counters) or ``RunningRun`` (a run at work).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import gridfs
import numpy as np
from bson import Binary
from PIL import Image
from pymongo.database import Database

from itm.store import (
    EVENTS,
    GRAY_BUCKET,
    IMAGES,
    MINUTE,
    MONITORING,
    RUNS,
    ensure_indexes,
    field_key,
    floor_minute,
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
    docs = []
    for index, (source, gray) in enumerate(pairs):
        md5 = hashlib.md5(source).hexdigest()
        png = png_bytes(gray)
        doc = {
            "md5": md5,
            "width": gray.width,
            "height": gray.height,
            "mode": gray.mode,
            "source_url": f"https://example.test/{index}.png",
            "run_id": RUN_ID,
            "line": index + 1,
            "inserted_at": START + timedelta(seconds=min(index, 2)),
        }
        if index == len(pairs) - 1:
            gridfs.GridFSBucket(db, bucket_name=GRAY_BUCKET).upload_from_stream_with_id(
                md5, f"{md5}.png", png
            )
            doc["gray_id"] = md5
            data.gridfs_md5 = md5
        else:
            doc["gray"] = Binary(png)
        docs.append(doc)
        data.pngs[md5] = png
        data.sizes[md5] = (gray.width, gray.height)
    db[IMAGES].insert_many(docs)
    data.newest_first = [
        doc["md5"] for doc in sorted(docs, key=lambda d: (d["inserted_at"], d["md5"]), reverse=True)
    ]
    db[MONITORING].insert_many(
        [
            {
                "minute": START + timedelta(minutes=offset),
                "success": success,
                "error": error,
                "reasons": reasons,
                "tallies": ["internal"],
            }  # tallies: the writer's bookkeeping
            for (offset, success, error), reasons in zip(COUNTS, MINUTE_REASONS, strict=True)
        ]
    )
    events = [{"status": "success", "reason": None, "md5": doc["md5"]} for doc in docs]
    events += [{"status": "error", "reason": reason, "md5": None} for reason in REASONS]
    db[EVENTS].insert_many(
        [
            {
                **event,
                "run_id": RUN_ID,
                "line": line,
                "url": f"https://example.test/{line}",
                "detail": "",
                "duplicate": False,
                "finished_at": START,
                "counted": True,
            }
            for line, event in enumerate(events, start=1)
        ]
    )
    db[RUNS].insert_one(
        {
            "_id": RUN_ID,
            "input": "urls.txt",
            "started_at": START,
            "finished_at": START + timedelta(minutes=4),
            "totals": {},
        }
    )
    return data


def fill_minutes(db: Database, last: datetime, minutes: int) -> list[tuple[int, int]]:
    """``minutes`` busy minutes of counters up to ``last`` (each with successes and
    errors, as a long run leaves them); returns their (success, error), oldest first."""
    ensure_indexes(db)
    rng = np.random.default_rng(minutes)
    counts = [(int(rng.integers(200, 560)), int(rng.integers(20, 100))) for _ in range(minutes)]
    first = last - (minutes - 1) * MINUTE
    db[MONITORING].insert_many(
        [
            {"minute": first + i * MINUTE, "success": success, "error": error}
            for i, (success, error) in enumerate(counts)
        ]
    )
    return counts


class RunningRun:
    """A run whose driver is alive, written as the writer actor writes one: its
    document with a heartbeat, its minutes, its counters in each (``by_run``)."""

    def __init__(self, db: Database, run_id: str, total: int) -> None:
        ensure_indexes(db)
        self.db, self.run_id = db, run_id
        now = datetime.now(timezone.utc)
        db[RUNS].insert_one(
            {
                "_id": run_id,
                "input": "urls.txt",
                "started_at": now,
                "finished_at": None,
                "total": total,
                "minutes": [],
                "heartbeat": now,
                "session": {"started_at": now, "done": 0},
                "in_flight": [],
            }
        )

    def count(self, success: int, error: int) -> None:
        """Lines that finished now (the errors timed out): counted in this minute, the
        heartbeat beats."""
        now = datetime.now(timezone.utc)
        minute = floor_minute(now)
        self.db[RUNS].update_one(
            {"_id": self.run_id},
            {"$addToSet": {"minutes": minute}, "$set": {"heartbeat": now}},
        )
        mine = f"by_run.{field_key(self.run_id)}"
        inc = {"success": success, "error": error, "reasons.timeout": error}
        inc |= {f"{mine}.{name}": n for name, n in inc.items()}
        self.db[MONITORING].update_one({"minute": minute}, {"$inc": inc}, upsert=True)

    def finish(self) -> None:
        now = datetime.now(timezone.utc)
        self.db[RUNS].update_one(
            {"_id": self.run_id}, {"$set": {"finished_at": now, "heartbeat": now}}
        )
