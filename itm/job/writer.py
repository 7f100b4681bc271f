"""The only writer of MongoDB: a batch's images, line events and per-minute counters.

The writer actor (``MongoWriter``) also keeps the runs' documents, through the run
ledger (``itm.job.ledger``); the documents are built as ``itm.store`` defines them.

Exact with any number of writers on one database (jobs, resumes, Ray replaying a
call after the writer died, a resume racing the writer of the run it resumes),
without transactions:

1. Images are ``$setOnInsert`` upserts keyed by ``md5``: a duplicate never
   overwrites a stored image nor its ``inserted_at``; the write's ``upserted_ids``
   say which images this call stored first.
2. Events are inserted once and never updated; the unique (``run_id``, ``line``)
   keeps a line's first outcome for good. Each event names the write attempt that
   inserted it, its ``tally`` (an ObjectId), and that attempt's lines (``batch``,
   as ranges). All events of a tally share one ``finished_at``, so one minute.
3. A tally is added to its minute once, by one guarded update:
   ``{minute, tallies: {$ne: t}}`` → ``$inc`` of ``success``, ``error``,
   ``images`` (the lines that stored their image first: the API's image count) and
   ``reasons.<reason>``, ``$push`` of ``t``. Tallies stay in their minute for good
   (never pulled), so adding a tally is idempotent whoever adds it and whenever.
   When the update matches nothing (no such minute yet, or it holds the tally), the
   writer creates the empty minute (an upsert on ``minute`` alone, ``$setOnInsert``
   zeros: writers racing to create it all end with the one document) and repeats
   the update, which then adds the tally or finds it there. (One upsert doing both
   would leave the loser of a race a DuplicateKeyError to interpret, in a race that
   a server running one command at a time never produces, so no test could force
   it; every interleaving of these steps can be forced, and ends the same.)
4. The attempt that inserted a tally's events adds it right after. Anyone else who
   meets events whose tally is missing from its minute (a replay of the call after
   the first attempt died, another writer of the same run, a resume) adds it only
   when it is *complete*: every line of its ``batch`` has an event, so no event of
   that tally can appear any more and every adder adds the same amounts.

Not covered: a tally whose insert was cut short by a MongoDB crash (some lines of
its batch never got an event) stays uncounted until a resume finds it complete;
a minute document grows by ~20 bytes per writer call in that minute (16 MiB is
~800,000 calls a minute).

Storage errors other than MongoDB being unreachable (a document too large, a
validation rule) never stop the job: the lines concerned end as ``storage_error``
and the rest of the batch is written.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import gridfs
import ray
from bson import ObjectId
from bson.errors import BSONError
from pymongo import InsertOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError
from ray.actor import ActorHandle
from ray.util.metrics import Counter as MetricCounter

from itm import store
from itm.job.imaging import GrayImage
from itm.job.ledger import RunLedger, utcnow
from itm.job.lineset import LineSet
from itm.job.urls import shown_url
from itm.outcomes import Counts, Failure, Line, Reason
from itm.store import EventDoc, floor_minute

T = TypeVar("T")
# One input line as the writer gets it: ((line number, url), md5, grayscale or failure).
Item = tuple[Line, str | None, GrayImage | Failure]
DUPLICATE_KEY = 11000
STORAGE_ERROR = Reason.STORAGE_ERROR.value


class MongoUnavailable(RuntimeError):
    """MongoDB stayed unreachable for longer than the writer's retry budget."""


@dataclass
class BulkOutcome:
    """What an unordered bulk write did, by index of its operations."""

    upserted: set[int] = field(default_factory=set)
    duplicates: set[int] = field(default_factory=set)  # met an existing document
    refused: dict[int, str] = field(default_factory=dict)  # the database's reason


class MongoWriter:
    """Serializes the writes of a job (or of its share of the md5s): the batches, and
    the runs through the ledger; deployed as a Ray actor (see ``WriterActor``)."""

    def __init__(
        self,
        mongo_uri: str,
        db_name: str,
        retry_seconds: float = 60.0,
        minute_seconds: float = 60.0,
    ) -> None:
        self.client = store.connect(mongo_uri)
        self.db = self.client[db_name]
        self.ledger = RunLedger(self.db)
        self.retry_seconds = retry_seconds
        self._listed: set[tuple[str, datetime]] = set()  # (run, minute) the run lists already
        # Tests shorten the "minute" to cross many of them in a few seconds of work.
        self.minute = timedelta(seconds=minute_seconds)
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

    # -- runs: the ledger's, retried ------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        source: str,
        resume: bool,
        fingerprint: dict[str, Any] | None = None,
        force: bool = False,
        total: int | None = None,
        retry_of: str | None = None,
        reasons: list[str] | None = None,
    ) -> LineSet:
        """``RunLedger.start``: a resume first counts what the run left uncounted."""
        return self._retrying(
            lambda: self.ledger.start(
                run_id,
                source,
                resume,
                self._settle_run,
                fingerprint,
                force,
                total,
                retry_of,
                reasons,
            )
        )

    def progress(self, run_id: str, in_flight: list[dict[str, Any]]) -> None:
        """``RunLedger.beat``: the driver is alive, with these lines in flight."""
        self._retrying(lambda: self.ledger.beat(run_id, in_flight))

    def finish_run(self, run_id: str) -> Counts:
        """``RunLedger.finish``: the run closed with its totals."""
        return self._retrying(lambda: self.ledger.finish(run_id))

    # -- one batch of lines ---------------------------------------------------------------

    def _settle_run(self, run_id: str) -> LineSet:
        """The run's done lines, after adding its complete tallies that no minute holds."""
        missing: dict[Any, int] = {}  # tally → one of its lines
        minute: datetime | None = None
        tallies: frozenset[Any] = frozenset()

        def numbers() -> Iterable[int]:
            nonlocal minute, tallies
            for event in store.events_by_line(self.db, run_id, {"tally": 1, "finished_at": 1}):
                this = floor_minute(event["finished_at"], self.minute)
                if this != minute:  # runs are mostly in line order: one read per minute
                    minute, tallies = this, self._tallies_of(this)
                if event["tally"] not in tallies:
                    missing.setdefault(event["tally"], event["line"])
                yield event["line"]

        done = LineSet.of(numbers())
        for line in missing.values():
            self._settle(
                run_id,
                self.db[store.EVENTS].find_one(
                    {"run_id": run_id, "line": line}, store.EVENT_COUNTED
                ),
            )
        return done

    def _tallies_of(self, minute: datetime) -> frozenset[Any]:
        doc = self.db[store.MONITORING].find_one({"minute": minute}, {"_id": 0, "tallies": 1})
        return frozenset((doc or {}).get("tallies", ()))

    def write(
        self,
        run_id: str,
        lines: Sequence[Line],
        md5s: Sequence[str | None],
        *groups: Sequence[GrayImage | Failure],
        positions: Sequence[Sequence[int]] | None = None,
    ) -> Counts:
        """Store a batch: its new images, one event per line, and the counters.

        ``groups`` are the grayscale of whole groups, of which this writer's lines are
        at ``positions`` (one list per group, in the order of ``lines``); without
        ``positions``, one group whose lines are all of ``lines``. So K writers share
        each group, and a writer's batch gathers its share of several groups.
        Returns the outcomes of these lines as stored (a replay returns the first ones).
        Three round trips when nothing was there before: images, events, minute (five
        for the first call in a minute, which creates it).
        """
        if positions is None:
            (mine,) = groups
        else:
            mine = [grays[at] for grays, ats in zip(groups, positions, strict=True) for at in ats]
        items = list(zip(lines, md5s, mine, strict=True))
        return self._retrying(lambda: self._write(run_id, items))

    def _write(self, run_id: str, items: list[Item]) -> Counts:
        now, tally = utcnow(), ObjectId()
        firsts, refused = self._store_images(run_id, items, now)
        batch = LineSet.of(sorted(line for (line, _), _, _ in items)).ranges
        events = []
        for (line, url), md5, gray in items:
            reason, detail, duplicate = None, "", False
            if isinstance(gray, Failure):
                reason, detail = gray.reason, gray.detail
            elif md5 is not None and md5 in refused:
                reason, detail = STORAGE_ERROR, f"image {md5} not stored: {refused[md5]}"
                md5 = None
            else:
                assert md5 is not None  # a grayscale image comes with its md5
                duplicate = firsts[md5] != (run_id, line)
            events.append(
                store.event_doc(
                    run_id,
                    line,
                    shown_url(url),
                    md5,
                    now,
                    tally,
                    batch,
                    reason=reason,
                    detail=detail,
                    duplicate=duplicate,
                )
            )
        mine, taken = self._insert_events(events)
        stored: list[Mapping[str, Any]] = list(mine)
        if taken:  # lines that had an event already: a replay, or another writer of the run
            found = list(
                self.db[store.EVENTS].find(
                    {"run_id": run_id, "line": {"$in": sorted(taken)}}, store.EVENT_COUNTED
                )
            )
            stored += found
            mine += [other for other in found if other["tally"] == tally]
            for other in {other["tally"]: other for other in found}.values():
                if other["tally"] != tally:
                    self._settle(run_id, other)
        self._add(run_id, tally, floor_minute(now, self.minute), mine)
        return Counts.of_events(stored)

    def _insert_events(self, events: list[EventDoc]) -> tuple[list[Mapping[str, Any]], set[int]]:
        """Insert the events; return (those inserted, line numbers that had one already).

        An event the database refuses becomes a bare ``storage_error`` event of its line.
        """
        collection = self.db[store.EVENTS]
        outcome = _bulk(collection, [InsertOne(event) for event in events])
        if outcome.refused:
            bare = [
                store.event_doc(
                    events[at]["run_id"],
                    events[at]["line"],
                    events[at]["url"],
                    None,
                    events[at]["finished_at"],
                    events[at]["tally"],
                    events[at]["batch"],
                    reason=STORAGE_ERROR,
                    detail=f"event not stored: {why}",
                )
                for at, why in outcome.refused.items()
            ]
            retried = _bulk(collection, [InsertOne(event) for event in bare])
            if retried.refused:  # the database refuses even a bare event: nothing can be recorded
                raise RuntimeError(
                    f"MongoDB refuses the events of run {events[0]['run_id']}: {retried.refused}"
                )
            events = [*events, *bare]
            outcome.duplicates |= {len(events) - len(bare) + at for at in retried.duplicates}
        skipped = outcome.duplicates | set(outcome.refused)
        mine: list[Mapping[str, Any]] = [
            event for at, event in enumerate(events) if at not in skipped
        ]
        return mine, {events[at]["line"] for at in outcome.duplicates}

    def _settle(self, run_id: str, event: Mapping[str, Any] | None) -> None:
        """Add the tally of ``event`` (inserted by another attempt) if no minute holds it yet
        and it is complete: every line of its batch has an event, so none can still come."""
        if event is None:
            return
        minute = floor_minute(event["finished_at"], self.minute)
        if event["tally"] in self._tallies_of(minute):
            return
        in_batch = list(
            self.db[store.EVENTS].find(
                {
                    "run_id": run_id,
                    "$or": [
                        {"line": {"$gte": first, "$lte": last}} for first, last in event["batch"]
                    ],
                },
                store.EVENT_COUNTED,
            )
        )
        if len(in_batch) == len(LineSet(event["batch"])):
            self._add(
                run_id,
                event["tally"],
                minute,
                [other for other in in_batch if other["tally"] == event["tally"]],
            )

    def _add(
        self, run_id: str, tally: ObjectId, minute: datetime, events: list[Mapping[str, Any]]
    ) -> None:
        """Add a tally's events to their minute, unless the minute holds the tally already.

        The run's own counters (``by_run``) go in the same guarded update, so they are
        exactly once too; the run lists the minute first, so that a counted minute is
        always listed (listing it twice is harmless).
        """
        if not events:
            return
        if (run_id, minute) not in self._listed:
            self.db[store.RUNS].update_one({"_id": run_id}, {"$addToSet": {"minutes": minute}})
            self._listed.add((run_id, minute))
        inc = store.minute_increments(run_id, Counts.of_events(events))
        update = {"$inc": inc, "$push": {"tallies": tally}}
        guarded = {"minute": minute, "tallies": {"$ne": tally}}
        monitoring = self.db[store.MONITORING]
        result = monitoring.update_one(guarded, update)
        if result.matched_count == 0:  # the minute does not exist yet, or holds the tally
            self._create_minute(minute)
            result = monitoring.update_one(guarded, update)
        if result.modified_count == 0:
            return  # the minute held the tally: counted before
        for (status, reason), n in Counter(
            (event["status"], event["reason"] or "none") for event in events
        ).items():
            self.lines_metric.inc(n, tags={"status": status, "reason": reason})

    def _create_minute(self, minute: datetime) -> None:
        """Create an empty minute, unless it exists: writers that race to create it all
        find one document afterwards (the losers meet it, or its unique index)."""
        with contextlib.suppress(DuplicateKeyError):
            self.db[store.MONITORING].update_one(
                {"minute": minute},
                {"$setOnInsert": store.EMPTY_MINUTE},
                upsert=True,
            )

    def _store_images(
        self, run_id: str, items: list[Item], now: datetime
    ) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
        """Upsert the batch's images; return, per md5, the (run, line) that first stored it,
        and the md5s the database refused, with why.

        One write; the stored images are read back only when some were there before.
        """
        images = self.db[store.IMAGES]
        batch: dict[str, tuple[int, str, GrayImage]] = {}
        for (line, url), md5, gray in items:
            if isinstance(gray, GrayImage) and md5 is not None:
                batch.setdefault(md5, (line, url, gray))
        md5s = list(batch)
        outcome = _bulk(
            images,
            [
                UpdateOne(
                    {"md5": md5},
                    {
                        "$setOnInsert": store.image_doc(
                            md5,
                            gray.width,
                            gray.height,
                            gray.mode,
                            shown_url(url),
                            now,
                            run_id,
                            line,
                            **self._png_field(md5, gray.png),
                        )
                    },
                    upsert=True,
                )
                for md5, (line, url, gray) in batch.items()
            ],
        )
        firsts = {md5s[at]: (run_id, batch[md5s[at]][0]) for at in outcome.upserted}
        refused = {md5s[at]: why for at, why in outcome.refused.items()}
        older = [md5 for md5 in md5s if md5 not in firsts and md5 not in refused]
        if older:  # stored before: by another line, or by an earlier attempt of this call
            found = images.find({"md5": {"$in": older}}, store.IMAGE_FIRST)
            firsts |= {doc["md5"]: (doc["run_id"], doc["line"]) for doc in found}
        return firsts, refused

    def _png_field(self, md5: str, png: bytes) -> dict[str, Any]:
        """The PNG in the document (``gray``), or in GridFS when it would not fit in one
        (``gray_id``): keywords of ``store.image_doc``. It arrives as a buffer over the
        object store (``GrayImage``): one copy, into the bytes that BSON takes."""
        png = bytes(png)
        if len(png) <= store.MAX_INLINE_PNG:
            return {"gray": png}
        return {"gray_id": self._store_large_png(md5, png)}

    def _store_large_png(self, md5: str, png: bytes) -> str:
        """Put a PNG too large for a document in GridFS, under the id ``md5``, once."""
        bucket = gridfs.GridFSBucket(self.db, bucket_name=store.GRAY_BUCKET)
        if self.db[f"{store.GRAY_BUCKET}.files"].find_one({"_id": md5}, {"_id": 1}) is None:
            # Chunks of an upload cut short by a crash would collide with the new ones.
            self.db[f"{store.GRAY_BUCKET}.chunks"].delete_many({"files_id": md5})
            bucket.upload_from_stream_with_id(
                md5, f"{md5}.png", png, metadata={"contentType": "image/png"}
            )
        return md5


def _bulk(collection: Collection[Any], ops: list[InsertOne[Any] | UpdateOne]) -> BulkOutcome:
    """An unordered bulk write that reports, instead of raising, what the database refused.

    Only MongoDB being unreachable raises. When the whole write is refused (a document
    too large to send), its operations are retried one by one to find the culprits.
    """
    if not ops:
        return BulkOutcome()
    try:
        upserted = collection.bulk_write(ops, ordered=False).upserted_ids or {}
        return BulkOutcome(upserted=set(upserted))
    except BulkWriteError as exc:
        outcome = BulkOutcome(upserted={doc["index"] for doc in exc.details.get("upserted", [])})
        for error in exc.details["writeErrors"]:
            if error["code"] == DUPLICATE_KEY:
                outcome.duplicates.add(error["index"])
            else:
                outcome.refused[error["index"]] = error["errmsg"]
        return outcome
    except ConnectionFailure:
        raise
    except (PyMongoError, BSONError) as exc:
        if len(ops) == 1:
            return BulkOutcome(refused={0: f"{type(exc).__name__}: {exc}"})
        outcome = BulkOutcome()
        for at, op in enumerate(ops):
            one = _bulk(collection, [op])
            outcome.upserted |= {at} if one.upserted else set()
            outcome.duplicates |= {at} if one.duplicates else set()
            if one.refused:
                outcome.refused[at] = one.refused[0]
        return outcome


# No CPU reserved (a writer waits on MongoDB); restarted and its calls replayed if
# its process dies, which the idempotent writes allow.
# Any: Ray's stubs type an actor's methods without their ``.remote``.
WriterActor: Any = ray.remote(num_cpus=0, max_restarts=10, max_task_retries=10)(MongoWriter)


def writer_count(writers: int, nodes: int) -> int:
    """How many writers a job gets: ``writers``, or with 0 one per node, so one on a
    single machine: a writer stores a few times fewer photos per second than the md5
    and grayscale tasks of a node of a few cores make (docs/scale.md, measured)."""
    return writers or nodes


def start_writers(
    mongo_uri: str, db_name: str, retry_seconds: float, count: int
) -> list[ActorHandle[Any]]:
    """The job's writers, spread over the nodes; the md5 space is shared among them in
    the order of the list (``itm.job.pipeline.shard_of``)."""
    spread = WriterActor.options(scheduling_strategy="SPREAD")
    return [spread.remote(mongo_uri, db_name, retry_seconds) for _ in range(count)]
