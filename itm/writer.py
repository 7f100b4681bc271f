"""The only writer of MongoDB: images, line events, per-minute counters and runs.

Every method is idempotent, so Ray may replay a call after the actor died midway
(``max_task_retries``) and the database ends the same as with one clean call:

1. images are ``$setOnInsert`` upserts keyed by ``md5``: a duplicate never
   overwrites a stored image nor its ``inserted_at``;
2. events are ``$setOnInsert`` upserts keyed by (``run_id``, ``line``): a line's
   first outcome, its ``finished_at`` and its ``tally`` (the id of the call that
   inserted it) are kept forever;
3. counters: events not yet ``counted`` are grouped by (``tally``, minute) and
   each group is added to its minute with a guarded ``$inc`` that also pushes the
   tally, so a replay finds the tally there and adds nothing; then the events are
   marked ``counted`` and the tallies pulled.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

import gridfs
import ray
from bson import Binary
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError
from ray.util.metrics import Counter as MetricCounter

from itm import store
from itm.errors import Failure
from itm.histogram import floor_minute
from itm.imaging import GrayImage

T = TypeVar("T")
# One input line as the writer gets it: ((line number, url), md5, grayscale or failure).
Item = tuple[tuple[int, str], str | None, GrayImage | Failure]
DUPLICATE_KEY = 11000
MAX_DETAIL = 500


class MongoUnavailable(RuntimeError):
    """MongoDB stayed unreachable for longer than the writer's retry budget."""


@dataclass
class Counts:
    """Outcomes of some lines: what the progress bar and the summary show."""

    success: int = 0
    error: int = 0
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def lines(self) -> int:
        return self.success + self.error

    def add(self, other: Counts) -> None:
        self.success += other.success
        self.error += other.error
        self.duplicates += other.duplicates
        self.reasons.update(other.reasons)

    @classmethod
    def of_events(cls, events: Iterable[dict]) -> Counts:
        """Counts of event documents, or of groups of them that carry their size ``n``."""
        counts = cls()
        for event in events:
            n = event.get("n", 1)
            if event["status"] == "success":
                counts.success += n
                counts.duplicates += n if event.get("duplicate") else 0
            else:
                counts.error += n
                counts.reasons[event["reason"]] += n
        return counts


def utcnow() -> datetime:
    # MongoDB keeps milliseconds: truncate now, so that what is returned equals what is stored.
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class MongoWriter:
    """Serializes every write of a job; deployed as one Ray actor (see ``WriterActor``)."""

    def __init__(self, mongo_uri: str, db_name: str, retry_seconds: float = 60.0) -> None:
        self.client = store.connect(mongo_uri)
        self.db = self.client[db_name]
        self.retry_seconds = retry_seconds
        self.lines_metric = MetricCounter(
            "itm_lines_total",
            description="Input lines processed by itm, by outcome.",
            tag_keys=("status", "reason"),
        )
        self._retrying(lambda: store.ensure_indexes(self.db))

    def _retrying(self, action: Callable[[], T]) -> T:
        """Run an idempotent action, retrying while MongoDB is unreachable."""
        give_up = time.monotonic() + self.retry_seconds
        pause = 0.2
        while True:
            try:
                return action()
            except ConnectionFailure as exc:
                if time.monotonic() + pause > give_up:
                    raise MongoUnavailable(
                        f"MongoDB unreachable for {self.retry_seconds:g} s: {exc}"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    # -- runs ---------------------------------------------------------------------------

    def start_run(self, run_id: str, source: str, resume: bool) -> list[int]:
        """Open (or, with ``resume``, reopen) a run; return the lines that already have an outcome.

        Resuming first counts any event a killed run stored but did not count yet.
        """

        def start() -> list[int]:
            runs = self.db[store.RUNS]
            if resume:
                if runs.find_one({"_id": run_id}, {"_id": 1}) is None:
                    raise ValueError(f"no run {run_id!r} to resume in database {self.db.name!r}")
                runs.update_one({"_id": run_id}, {"$set": {"finished_at": None}})
                self._count(list(self.db[store.EVENTS].find(
                    {"run_id": run_id, "counted": False},
                    {"status": 1, "reason": 1, "tally": 1, "finished_at": 1},
                )))
                done = self.db[store.EVENTS].find({"run_id": run_id}, {"line": 1, "_id": 0})
                return sorted(event["line"] for event in done)
            runs.update_one(
                {"_id": run_id},
                {"$setOnInsert": {"input": source, "started_at": utcnow(), "finished_at": None}},
                upsert=True,
            )
            return []

        return self._retrying(start)

    def finish_run(self, run_id: str) -> Counts:
        """Close a run with its totals, computed from its events (exact even after a resume)."""

        def finish() -> Counts:
            groups = self.db[store.EVENTS].aggregate([
                {"$match": {"run_id": run_id}},
                {"$group": {"_id": {"status": "$status", "reason": "$reason",
                                    "duplicate": "$duplicate"}, "n": {"$sum": 1}}},
            ])
            counts = Counts.of_events(group["_id"] | {"n": group["n"]} for group in groups)
            totals = {
                "lines": counts.lines, "success": counts.success, "error": counts.error,
                "duplicates": counts.duplicates, "reasons": dict(counts.reasons),
            }
            self.db[store.RUNS].update_one(
                {"_id": run_id}, {"$set": {"finished_at": utcnow(), "totals": totals}}
            )
            return counts

        return self._retrying(finish)

    # -- one batch of lines ---------------------------------------------------------------

    def write(
        self,
        run_id: str,
        lines: Sequence[tuple[int, str]],
        md5s: Sequence[str | None],
        grays: Sequence[GrayImage | Failure],
    ) -> Counts:
        """Store a batch: its new images, one event per line, and the counters.

        Returns the outcomes of these lines as stored (a replay returns the first ones).
        """
        items = list(zip(lines, md5s, grays, strict=True))
        return self._retrying(lambda: self._write(run_id, items))

    def _write(self, run_id: str, items: list[Item]) -> Counts:
        now = utcnow()
        first_line = self._store_images(run_id, items, now)
        tally = uuid.uuid4().hex
        events = self.db[store.EVENTS]
        ops = []
        for (line, url), md5, gray in items:
            event = {
                "run_id": run_id, "line": line, "url": url, "md5": md5,
                "finished_at": now, "counted": False, "tally": tally,
            }
            if isinstance(gray, Failure):
                event |= {"status": "error", "reason": gray.reason,
                          "detail": gray.detail[:MAX_DETAIL], "duplicate": False}
            else:
                event |= {"status": "success", "reason": None, "detail": None,
                          "duplicate": first_line[md5] != (run_id, line)}
            ops.append(UpdateOne({"run_id": run_id, "line": line},
                                 {"$setOnInsert": event}, upsert=True))
        _bulk(events, ops)
        numbers = {line for (line, _), _, _ in items}
        # A range on the unique index, filtered here: far cheaper than $in plus more filters.
        stored = [event for event in events.find(
            {"run_id": run_id, "line": {"$gte": min(numbers), "$lte": max(numbers)}},
            {"line": 1, "status": 1, "reason": 1, "duplicate": 1, "tally": 1,
             "finished_at": 1, "counted": 1},
        ) if event["line"] in numbers]
        self._count([event for event in stored if not event["counted"]])
        return Counts.of_events(stored)

    def _store_images(
        self, run_id: str, items: list[Item], now: datetime
    ) -> dict[str, tuple[str, int]]:
        """Upsert the batch's new images; return, per md5, the (run, line) that first stored it.

        Images already stored are looked up first, so their PNGs are not sent again.
        """
        images = self.db[store.IMAGES]
        batch: dict[str, tuple[int, str, GrayImage]] = {}
        for (line, url), md5, gray in items:
            if isinstance(gray, GrayImage):
                batch.setdefault(md5, (line, url, gray))
        first = self._first_lines(list(batch))
        fresh = {md5: found for md5, found in batch.items() if md5 not in first}
        if fresh:
            _bulk(images, [
                UpdateOne({"md5": md5}, {"$setOnInsert": {
                    "md5": md5, "width": gray.width, "height": gray.height, "mode": gray.mode,
                    **self._png_field(md5, gray.png), "source_url": url, "inserted_at": now,
                    "run_id": run_id, "line": line,
                }}, upsert=True)
                for md5, (line, url, gray) in fresh.items()
            ])
            first |= self._first_lines(list(fresh))  # another job may have won a race
        return first

    def _first_lines(self, md5s: list[str]) -> dict[str, tuple[str, int]]:
        if not md5s:
            return {}
        found = self.db[store.IMAGES].find({"md5": {"$in": md5s}},
                                           {"md5": 1, "run_id": 1, "line": 1})
        return {doc["md5"]: (doc["run_id"], doc["line"]) for doc in found}

    def _png_field(self, md5: str, png: bytes) -> dict[str, object]:
        """The PNG in the document, or in GridFS when it would not fit in one."""
        if len(png) <= store.MAX_INLINE_PNG:
            return {"gray": Binary(png)}
        return {"gray_id": self._store_large_png(md5, png)}

    def _store_large_png(self, md5: str, png: bytes) -> str:
        """Put a PNG too large for a document in GridFS, under the id ``md5``, once."""
        bucket = gridfs.GridFSBucket(self.db, bucket_name=store.GRAY_BUCKET)
        if self.db[f"{store.GRAY_BUCKET}.files"].find_one({"_id": md5}, {"_id": 1}) is None:
            # Chunks of an upload cut short by a crash would collide with the new ones.
            self.db[f"{store.GRAY_BUCKET}.chunks"].delete_many({"files_id": md5})
            bucket.upload_from_stream_with_id(md5, f"{md5}.png", png,
                                              metadata={"contentType": "image/png"})
        return md5

    def _count(self, pending: list[dict]) -> None:
        """Add uncounted events (with their tally and finished_at) to their minutes, once."""
        if not pending:
            return
        groups: dict[tuple[str, datetime], Counter[str]] = {}
        for event in pending:
            minute = floor_minute(event["finished_at"])
            groups.setdefault((event["tally"], minute), Counter())[event["status"]] += 1
        monitoring = self.db[store.MONITORING]
        for (tally, minute), by_status in groups.items():
            # A duplicate key means this minute holds the tally already: a replay.
            with contextlib.suppress(DuplicateKeyError):
                monitoring.update_one(
                    {"minute": minute, "tallies": {"$ne": tally}},
                    {"$inc": {"success": by_status["success"], "error": by_status["error"]},
                     "$push": {"tallies": tally}},
                    upsert=True,
                )
        self.db[store.EVENTS].update_many({"_id": {"$in": [event["_id"] for event in pending]}},
                           {"$set": {"counted": True}})
        tallies = sorted({tally for tally, _ in groups})
        monitoring.update_many({"tallies": {"$in": tallies}},
                               {"$pull": {"tallies": {"$in": tallies}}})
        for event in pending:
            self.lines_metric.inc(tags={"status": event["status"],
                                        "reason": event["reason"] or "none"})


def _bulk(collection: Collection, ops: list[UpdateOne]) -> None:
    """Unordered bulk upserts; a duplicate key only means another upsert won the race."""
    if not ops:
        return
    try:
        collection.bulk_write(ops, ordered=False)
    except BulkWriteError as exc:
        if any(error["code"] != DUPLICATE_KEY for error in exc.details["writeErrors"]):
            raise


# One writer for the whole job: no CPU reserved (it waits on MongoDB); restarted
# and its calls replayed if its process dies, which the idempotent writes allow.
WriterActor = ray.remote(num_cpus=0, max_restarts=10, max_task_retries=10)(MongoWriter)
