"""The MongoDB data contract, shared by the writer actor (the only writer) and the API
(a reader), so that both agree on one schema:

- one ``TypedDict`` per collection, with its builder: ``ImageDoc`` (``images``),
  ``EventDoc`` (``events``), ``MinuteDoc`` (``monitoring``), ``RunDoc`` (``runs``),
  and ``MetaDoc`` (``meta``: the schema version);
- the projections the reads use (``fields``: a name that is no field fails on
  import), the sort orders, and the indexes that serve them (``INDEXES``);
- ``SCHEMA_VERSION``, recorded in and checked against a database by ``ensure_indexes``.

The "Data" section of docs/architecture.md says what each field holds
(tests/test_docs.py checks that it names every field, and nothing else).

A line counts in the UTC minute its processing finished: ``floor_minute`` is that
bucketing, for the writer that counts and the API that reads.

No secret is stored: what of a URL is stored goes through ``itm.redaction.redact``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict, TypeVar

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from itm.outcomes import Counts

IMAGES = "images"
EVENTS = "events"
MONITORING = "monitoring"
RUNS = "runs"
META = "meta"
GRAY_BUCKET = "gray"

T = TypeVar("T")

# A document may hold 16 MiB; keep room for the other fields.
MAX_INLINE_PNG = 15 * 1024 * 1024

MINUTE = timedelta(minutes=1)  # the width of a monitoring bucket
# Windows are clamped into this range: nothing itm counted is older than the Unix
# epoch (the API's cursors count milliseconds from it), and the margin below year
# 10000 keeps datetime and matplotlib arithmetic from overflowing, whatever bounds a
# client asks for.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9998, 12, 31, tzinfo=timezone.utc)


def connect(uri: str, timeout_ms: int = 5000, **options: Any) -> MongoClient[dict[str, Any]]:
    """A client that returns tz-aware UTC datetimes and fails fast when nobody answers;
    ``options`` go to ``MongoClient`` as they are."""
    return MongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="itm",
        **options,
    )


class MetaDoc(TypedDict):
    """``meta``: the database's schema version, one document (``_id`` ``"schema"``)."""

    _id: str
    version: int


class _Image(TypedDict):
    md5: str
    width: int
    height: int
    mode: str  # "L", or "LA" when the source has transparency
    source_url: str
    inserted_at: datetime
    run_id: str  # the run and line that stored it first
    line: int


class ImageDoc(_Image, total=False):
    """``images``: one per distinct image, unique on ``md5``, never changed once inserted;
    its PNG is in ``gray`` or, when too large for a document, in the GridFS bucket
    ``gray`` under the id ``gray_id``."""

    gray: bytes
    gray_id: str


class EventDoc(TypedDict):
    """``events``: one per processed input line of a run, inserted once, never updated."""

    run_id: str
    line: int
    url: str
    status: str  # "success" or "error"
    reason: str | None
    detail: str | None
    md5: str | None
    duplicate: bool  # a success whose image was stored before
    finished_at: datetime
    tally: ObjectId  # the write attempt that inserted it (the writer's bookkeeping)
    batch: list[list[int]]  # that attempt's lines, as [first, last] ranges


class RunCountersDoc(TypedDict, total=False):
    """A run's own counters in a minute: ``by_run.<field_key(run id)>``."""

    success: int
    error: int
    duplicates: int
    reasons: dict[str, int]


class _Minute(TypedDict):
    minute: datetime
    success: int
    error: int
    images: int  # the lines that stored their image first: the count of ``images``


class MinuteDoc(_Minute, total=False):
    """``monitoring``: one per UTC minute, unique on ``minute``; its counters only grow,
    and a counter of no line yet is absent."""

    reasons: dict[str, int]  # errors by ``field_key(reason)``
    by_run: dict[str, RunCountersDoc]  # the same counters, per ``field_key(run id)``
    tallies: list[ObjectId]  # the tallies counted here (the writer's bookkeeping)


class FingerprintDoc(TypedDict):
    """What identifies a run's input file: a resume refuses another one."""

    size: int
    head_md5: str
    tail_md5: str


class SessionDoc(TypedDict):
    """The current driver of a run: when it started, with how many lines done."""

    started_at: datetime
    done: int


class InFlightDoc(TypedDict):
    """One of a run's oldest lines in flight: since when its download task has it."""

    line: int
    url: str
    since: datetime


class RunTotalsDoc(TypedDict):
    """A finished run's totals (``Counts.as_totals``)."""

    lines: int
    success: int
    error: int
    duplicates: int
    reasons: dict[str, int]


class _Run(TypedDict):
    _id: str
    input: str  # the input's absolute path
    fingerprint: FingerprintDoc | None
    started_at: datetime
    finished_at: datetime | None
    total: int | None  # lines to process in all
    retry_of: str | None  # the run whose failed lines this one retries
    reasons: list[str] | None  # the reasons it retries (None: every error)
    retries: list[str]  # the runs that retried this one
    minutes: list[datetime]  # the minutes that hold its counters (``by_run``)
    heartbeat: datetime
    session: SessionDoc
    in_flight: list[InFlightDoc]


class RunDoc(_Run, total=False):
    """``runs``: one per run, ``_id`` its id; ``totals`` once it finished."""

    totals: RunTotalsDoc


# Every type of a collection, and the types of its nested documents, by collection.
DOCUMENTS: dict[str, tuple[type, ...]] = {
    META: (MetaDoc,),
    IMAGES: (ImageDoc,),
    EVENTS: (EventDoc,),
    MONITORING: (MinuteDoc, RunCountersDoc),
    RUNS: (RunDoc, FingerprintDoc, SessionDoc, InFlightDoc, RunTotalsDoc),
}

MAX_DETAIL = 500  # characters of an event's ``detail``


def image_doc(
    md5: str,
    width: int,
    height: int,
    mode: str,
    source_url: str,
    inserted_at: datetime,
    run_id: str,
    line: int,
    *,
    gray: bytes | None = None,
    gray_id: str | None = None,
) -> ImageDoc:
    """An image with its PNG in the document (``gray``) or in GridFS (``gray_id``)."""
    doc: ImageDoc = {
        "md5": md5,
        "width": width,
        "height": height,
        "mode": mode,
        "source_url": source_url,
        "inserted_at": inserted_at,
        "run_id": run_id,
        "line": line,
    }
    if gray_id is not None:
        doc["gray_id"] = gray_id
    else:
        assert gray is not None  # an image always has its PNG somewhere
        doc["gray"] = gray  # bytes: BSON binary subtype 0
    return doc


def event_doc(
    run_id: str,
    line: int,
    url: str,
    md5: str | None,
    finished_at: datetime,
    tally: ObjectId,
    batch: list[list[int]],
    *,
    reason: str | None = None,
    detail: str = "",
    duplicate: bool = False,
) -> EventDoc:
    """A line's event: an error when it has a ``reason`` (its ``detail`` cut to
    ``MAX_DETAIL``), else a success, a ``duplicate`` or not."""
    return {
        "run_id": run_id,
        "line": line,
        "url": url,
        "status": "success" if reason is None else "error",
        "reason": reason,
        "detail": None if reason is None else detail[:MAX_DETAIL],
        "md5": md5,
        "duplicate": duplicate and reason is None,
        "finished_at": finished_at,
        "tally": tally,
        "batch": batch,
    }


# A new minute, as created before its first tally is added (``$setOnInsert``).
EMPTY_MINUTE = {"success": 0, "error": 0, "images": 0}


def minute_increments(run_id: str, counts: Counts) -> dict[str, int]:
    """What a tally of ``counts`` adds to its minute (``$inc``): the counters, the
    run's own under ``by_run``, and ``images``."""
    inc = {"success": counts.success, "error": counts.error}
    inc |= {f"reasons.{field_key(reason)}": n for reason, n in counts.reasons.items()}
    mine = f"by_run.{field_key(run_id)}"
    inc |= {f"{mine}.{name}": n for name, n in inc.items()}
    inc[f"{mine}.duplicates"] = counts.duplicates
    inc["images"] = counts.success - counts.duplicates  # lines that stored their image
    return inc


def run_doc(
    run_id: str,
    source: str,
    now: datetime,
    fingerprint: FingerprintDoc | None = None,
    total: int | None = None,
    retry_of: str | None = None,
    reasons: list[str] | None = None,
) -> RunDoc:
    """A run that starts ``now``, with nothing done yet."""
    return {
        "_id": run_id,
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


def field_key(name: str) -> str:
    """A reason or a run id as a field name: no dots, no leading ``$``."""
    return name.replace(".", "_").lstrip("$") or "unknown"


# -- the reads: projections, sorts and the indexes that serve them ----------------------


def fields(doc_type: type, *names: str) -> dict[str, int]:
    """A projection on ``names`` of ``doc_type`` (without ``_id`` unless named): a name
    that is not a field of the type fails on import, not in a query."""
    known = doc_type.__required_keys__ | doc_type.__optional_keys__  # type: ignore[attr-defined]
    unknown = set(names) - known
    if unknown:
        raise ValueError(f"{doc_type.__name__} has no field {sorted(unknown)}")
    return {"_id": 1 if "_id" in names else 0} | dict.fromkeys(names, 1)


IMAGE_CARD = fields(ImageDoc, "md5", "width", "height", "inserted_at")  # a listing's entry
IMAGE_PNG = fields(ImageDoc, "gray", "gray_id")
IMAGE_FIRST = fields(ImageDoc, "md5", "run_id", "line")  # the line that stored it first
EVENT_COUNTED = fields(  # what the writer needs of an event to count its tally
    EventDoc, "line", "status", "reason", "duplicate", "tally", "finished_at", "batch"
)
MINUTE_BUCKET = fields(MinuteDoc, "minute", "success", "error")  # the histogram's
# A run as the API shows it: all but its fingerprint.
RUN_VIEW = fields(RunDoc, *sorted(RunDoc.__required_keys__ - {"fingerprint"}), "totals")

BY_MD5 = [("md5", ASCENDING)]
IMAGES_NEWEST_FIRST = [("inserted_at", DESCENDING), ("md5", DESCENDING)]
BY_LINE = [("run_id", ASCENDING), ("line", ASCENDING)]
BY_MINUTE = [("minute", ASCENDING)]
MINUTES_NEWEST_FIRST = [("minute", DESCENDING)]  # BY_MINUTE read backwards
RUNS_NEWEST_FIRST = [("started_at", DESCENDING), ("_id", DESCENDING)]
# (collection, keys, unique): every query sorts or matches on one of these.
INDEXES = [
    (IMAGES, BY_MD5, True),
    (IMAGES, IMAGES_NEWEST_FIRST, False),
    (EVENTS, BY_LINE, True),
    (MONITORING, BY_MINUTE, True),
    (RUNS, RUNS_NEWEST_FIRST, False),
]


# -- the version ----------------------------------------------------------------------

# The shape of the documents above. A database records the version it was written in
# (``meta``); one without a record holds what itm 0.1.0 wrote, which is version 1.
SCHEMA_VERSION = 1


class SchemaMismatch(RuntimeError):
    """The database holds documents of another schema version than this itm's."""


def ensure_indexes(db: Database[Any]) -> None:
    """Prepare ``db`` for the contract (idempotent): record its schema version, or refuse
    one of another version, and create the indexes."""
    with contextlib.suppress(DuplicateKeyError):  # a writer that raced to record it
        db[META].update_one(
            {"_id": "schema"}, {"$setOnInsert": {"version": SCHEMA_VERSION}}, upsert=True
        )
    recorded = db[META].find_one({"_id": "schema"})
    version = recorded["version"] if recorded else SCHEMA_VERSION
    if version != SCHEMA_VERSION:
        raise SchemaMismatch(
            f"database {db.name!r} holds documents of schema version {version}; this itm "
            f"reads and writes version {SCHEMA_VERSION}: use another database (--db)"
        )
    for name, keys, unique in INDEXES:
        db[name].create_index(keys, unique=unique)


WINDOW = 10_000  # line numbers per query when a whole run is read


def events_by_line(
    db: Database[Any], run_id: str, projection: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The run's events in line order, by windows of lines (see ``by_window``)."""
    projection = {"_id": 0, "line": 1, **projection}
    return by_window(
        db,
        run_id,
        lambda window: db[EVENTS].find(window, projection).sort(BY_LINE),
    )


def by_window(
    db: Database[Any],
    run_id: str,
    read: Callable[[dict[str, Any]], Iterable[T]],
) -> Iterator[T]:
    """``read`` over the run's events, ``WINDOW`` line numbers per query, in line order.

    No query touches more than a window's events, however long the run: SecantusDB
    fetches and sorts every match of a query before its ``limit`` (a page of a
    million-line run took minutes), and answers nothing else meanwhile, so pymongo's
    heartbeat gives up and cancels the query. An empty window (a gap in the run's
    lines) is followed by a jump to the next line that has an event, or the end.
    """
    after = 0
    while True:
        found = list(read({"run_id": run_id, "line": {"$gt": after, "$lte": after + WINDOW}}))
        yield from found
        after += WINDOW
        if not found:
            following = db[EVENTS].find_one(
                {"run_id": run_id, "line": {"$gt": after}},
                {"_id": 0, "line": 1},
                sort=BY_LINE,
            )
            if following is None:
                return
            after = following["line"] - 1


def to_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # within a day of datetime.min or datetime.max
        return EARLIEST if moment.year == 1 else LATEST


def floor_minute(moment: datetime, width: timedelta = MINUTE) -> datetime:
    """The UTC minute that contains ``moment`` (tests of the writer pass a shorter ``width``)."""
    moment = to_utc(moment)
    return moment - (moment - EARLIEST) % width
