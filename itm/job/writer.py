"""The only writer of MongoDB: images, line events, per-minute counters and runs.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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
from itm.job.lineset import LineSet
from itm.job.urls import shown_url
from itm.outcomes import Counts, Failure, Line, Reason
from itm.store import floor_minute

T = TypeVar("T")
# One input line as the writer gets it: ((line number, url), md5, grayscale or failure).
Item = tuple[Line, str | None, GrayImage | Failure]
DUPLICATE_KEY = 11000
MAX_DETAIL = 500
STORAGE_ERROR = Reason.STORAGE_ERROR.value
# What a counted event needs, when it is read back.
EVENT_FIELDS = {
    "_id": 0,
    "line": 1,
    "status": 1,
    "reason": 1,
    "duplicate": 1,
    "tally": 1,
    "finished_at": 1,
    "batch": 1,
}


class MongoUnavailable(RuntimeError):
    """MongoDB stayed unreachable for longer than the writer's retry budget."""


@dataclass
class BulkOutcome:
    """What an unordered bulk write did, by index of its operations."""

    upserted: set[int] = field(default_factory=set)
    duplicates: set[int] = field(default_factory=set)  # met an existing document
    refused: dict[int, str] = field(default_factory=dict)  # the database's reason


def utcnow() -> datetime:
    # MongoDB keeps milliseconds: truncate now, so that what is returned equals what is stored.
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class MongoWriter:
    """Serializes every write of a job; deployed as one Ray actor (see ``WriterActor``)."""

    def __init__(
        self,
        mongo_uri: str,
        db_name: str,
        retry_seconds: float = 60.0,
        minute_seconds: float = 60.0,
    ) -> None:
        self.client = store.connect(mongo_uri)
        self.db = self.client[db_name]
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

    # -- runs ---------------------------------------------------------------------------

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
        """Open (or, with ``resume``, reopen) a run; return the lines that already have an outcome.

        A resume refuses an input whose ``fingerprint`` differs from the run's (unless
        ``force``), and first counts the complete tallies of the run that no minute
        holds yet (a writer that died between its events and its counters). ``total``
        is the lines the run has to process in all (progress); a run that retries
        the failed lines of ``retry_of`` (for ``reasons``, or all) is listed there.
        """

        def start() -> LineSet:
            runs = self.db[store.RUNS]
            now = utcnow()
            if not resume:
                runs.update_one(
                    {"_id": run_id},
                    {
                        "$setOnInsert": {
                            "input": source,
                            "fingerprint": fingerprint,
                            "started_at": now,
                            "finished_at": None,
                            "total": total,
                            "retry_of": retry_of,
                            "reasons": reasons,
                            "retries": [],
                            "minutes": [],
                            "heartbeat": now,
                            "session": {"started_at": now, "done": 0},
                            "in_flight": [],
                        }
                    },
                    upsert=True,
                )
                if retry_of is not None:
                    runs.update_one({"_id": retry_of}, {"$addToSet": {"retries": run_id}})
                return LineSet()
            run = runs.find_one({"_id": run_id}, {"fingerprint": 1})
            if run is None:
                raise ValueError(f"no run {run_id!r} to resume in database {self.db.name!r}")
            known = run.get("fingerprint")
            if known and fingerprint and known != fingerprint and not force:
                raise ValueError(
                    f"{source} is not the file run {run_id} started on (size or content "
                    f"changed: {known} then, {fingerprint} now); resume with the original "
                    "file, or pass --force-resume to resume anyway"
                )
            done = self._settle_run(run_id)
            reopened: dict[str, Any] = {
                "finished_at": None,
                "heartbeat": now,
                "in_flight": [],
                "session": {"started_at": now, "done": len(done)},
            }
            reopened |= {"fingerprint": fingerprint} if fingerprint else {}
            reopened |= {"total": total} if total is not None else {}
            runs.update_one({"_id": run_id}, {"$set": reopened})
            return done

        return self._retrying(start)

    def progress(self, run_id: str, in_flight: list[dict[str, Any]]) -> None:
        """The driver's heartbeat: it is alive, and these lines are its oldest in flight
        (``line``, ``url``, ``since``). A run whose heartbeat stops, unfinished, lost its
        driver."""
        self._retrying(
            lambda: self.db[store.RUNS].update_one(
                {"_id": run_id}, {"$set": {"heartbeat": utcnow(), "in_flight": in_flight}}
            )
        )

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
                # Tallies of writers before this protocol were strings, counted by their own.
                if isinstance(event.get("tally"), ObjectId) and event["tally"] not in tallies:
                    missing.setdefault(event["tally"], event["line"])
                yield event["line"]

        done = LineSet.of(numbers())
        for line in missing.values():
            self._settle(
                run_id,
                self.db[store.EVENTS].find_one({"run_id": run_id, "line": line}, EVENT_FIELDS),
            )
        return done

    def _tallies_of(self, minute: datetime) -> frozenset[Any]:
        doc = self.db[store.MONITORING].find_one({"minute": minute}, {"_id": 0, "tallies": 1})
        return frozenset((doc or {}).get("tallies", ()))

    def finish_run(self, run_id: str) -> Counts:
        """Close a run with its totals, computed from its events (exact even after a resume)."""

        def finish() -> Counts:
            # Alive while the totals are computed (a long run's events take a while).
            self.db[store.RUNS].update_one({"_id": run_id}, {"$set": {"heartbeat": utcnow()}})
            groups = store.by_window(
                self.db,
                run_id,
                lambda window: self.db[store.EVENTS].aggregate(
                    [
                        {"$match": window},
                        {
                            "$group": {
                                "_id": {
                                    "status": "$status",
                                    "reason": "$reason",
                                    "duplicate": "$duplicate",
                                },
                                "n": {"$sum": 1},
                            }
                        },
                    ]
                ),
            )
            counts = Counts.of_events(group["_id"] | {"n": group["n"]} for group in groups)
            totals = counts.as_totals()
            now = utcnow()
            self.db[store.RUNS].update_one(
                {"_id": run_id},
                {"$set": {"finished_at": now, "heartbeat": now, "totals": totals, "in_flight": []}},
            )
            return counts

        return self._retrying(finish)

    # -- one batch of lines ---------------------------------------------------------------

    def write(
        self,
        run_id: str,
        lines: Sequence[Line],
        md5s: Sequence[str | None],
        grays: Sequence[GrayImage | Failure],
        positions: Sequence[int] | None = None,
    ) -> Counts:
        """Store a batch: its new images, one event per line, and the counters.

        ``grays`` is the grayscale of a whole group, of which this writer's lines are
        at ``positions`` (all of it when ``None``): several writers share one group.
        Returns the outcomes of these lines as stored (a replay returns the first ones).
        Three round trips when nothing was there before: images, events, minute (five
        for the first call in a minute, which creates it).
        """
        mine = grays if positions is None else [grays[at] for at in positions]
        items = list(zip(lines, md5s, mine, strict=True))
        return self._retrying(lambda: self._write(run_id, items))

    def _write(self, run_id: str, items: list[Item]) -> Counts:
        now, tally = utcnow(), ObjectId()
        firsts, refused = self._store_images(run_id, items, now)
        batch = LineSet.of(sorted(line for (line, _), _, _ in items)).ranges
        events = []
        for (line, url), md5, gray in items:
            event = {
                "run_id": run_id,
                "line": line,
                "url": shown_url(url),
                "md5": md5,
                "finished_at": now,
                "tally": tally,
                "batch": batch,
            }
            if isinstance(gray, Failure):
                event |= _error(gray.reason, gray.detail)
            elif md5 is not None and md5 in refused:
                event |= _error(STORAGE_ERROR, f"image {md5} not stored: {refused[md5]}") | {
                    "md5": None
                }
            else:
                assert md5 is not None  # a grayscale image comes with its md5
                event |= {
                    "status": "success",
                    "reason": None,
                    "detail": None,
                    "duplicate": firsts[md5] != (run_id, line),
                }
            events.append(event)
        mine, taken = self._insert_events(events)
        stored = list(mine)
        if taken:  # lines that had an event already: a replay, or another writer of the run
            found = list(
                self.db[store.EVENTS].find(
                    {"run_id": run_id, "line": {"$in": sorted(taken)}}, EVENT_FIELDS
                )
            )
            stored += found
            mine += [event for event in found if event["tally"] == tally]
            for event in {event["tally"]: event for event in found}.values():
                if event["tally"] != tally:
                    self._settle(run_id, event)
        self._add(run_id, tally, floor_minute(now, self.minute), mine)
        return Counts.of_events(stored)

    def _insert_events(self, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[int]]:
        """Insert the events; return (those inserted, line numbers that had one already).

        An event the database refuses becomes a bare ``storage_error`` event of its line.
        """
        collection = self.db[store.EVENTS]
        outcome = _bulk(collection, [InsertOne(event) for event in events])
        if outcome.refused:
            bare = [
                events[at] | _error(STORAGE_ERROR, f"event not stored: {why}") | {"md5": None}
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
        mine = [event for at, event in enumerate(events) if at not in skipped]
        return mine, {events[at]["line"] for at in outcome.duplicates}

    def _settle(self, run_id: str, event: dict[str, Any] | None) -> None:
        """Add the tally of ``event`` (inserted by another attempt) if no minute holds it yet
        and it is complete: every line of its batch has an event, so none can still come."""
        if event is None or not isinstance(event.get("tally"), ObjectId):
            return  # a writer before this protocol (string tallies) counted its events itself
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
                EVENT_FIELDS,
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
        self, run_id: str, tally: ObjectId, minute: datetime, events: list[dict[str, Any]]
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
        counts = Counts.of_events(events)
        inc = {"success": counts.success, "error": counts.error}
        inc |= {f"reasons.{store.field_key(reason)}": n for reason, n in counts.reasons.items()}
        mine = f"by_run.{store.field_key(run_id)}"
        inc |= {f"{mine}.{name}": n for name, n in inc.items()}
        inc[f"{mine}.duplicates"] = counts.duplicates
        inc["images"] = counts.success - counts.duplicates  # lines that stored their image
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
                {"$setOnInsert": {"success": 0, "error": 0, "images": 0}},
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
                        "$setOnInsert": {
                            "md5": md5,
                            "width": gray.width,
                            "height": gray.height,
                            "mode": gray.mode,
                            **self._png_field(md5, gray.png),
                            "source_url": shown_url(url),
                            "inserted_at": now,
                            "run_id": run_id,
                            "line": line,
                        }
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
            found = images.find({"md5": {"$in": older}}, {"md5": 1, "run_id": 1, "line": 1})
            firsts |= {doc["md5"]: (doc["run_id"], doc["line"]) for doc in found}
        return firsts, refused

    def _png_field(self, md5: str, png: bytes) -> dict[str, object]:
        """The PNG in the document, or in GridFS when it would not fit in one. It arrives
        as a buffer over the object store (``GrayImage``): one copy, into the bytes that
        BSON takes (binary subtype 0, as ``Binary`` would store it)."""
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


def _error(reason: str, detail: str) -> dict[str, object]:
    return {"status": "error", "reason": reason, "detail": detail[:MAX_DETAIL], "duplicate": False}


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

NODES_PER_WRITER = 4  # --writers 0: one writer for every this many nodes


def writer_count(writers: int, nodes: int) -> int:
    """How many writers a job gets: ``writers``, or with 0 one per ``NODES_PER_WRITER``
    nodes (one on a single machine)."""
    return writers or -(-nodes // NODES_PER_WRITER)


def start_writers(
    mongo_uri: str, db_name: str, retry_seconds: float, count: int
) -> list[ActorHandle[Any]]:
    """The job's writers, spread over the nodes; the md5 space is shared among them in
    the order of the list (``itm.job.pipeline.shard_of``)."""
    spread = WriterActor.options(scheduling_strategy="SPREAD")
    return [spread.remote(mongo_uri, db_name, retry_seconds) for _ in range(count)]
