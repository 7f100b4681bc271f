"""The MongoDB data contract: collection names, indexes and the client settings.

Shared by the writer actor (the only writer) and the API (a reader), so that both
agree on one schema:

- ``images``: one document per distinct image, unique on ``md5``; ``gray`` holds
  the grayscale PNG, or ``gray_id`` names a file of the GridFS bucket ``gray``
  when the PNG is too large for a document.
- ``events``: one document per processed input line, unique on (``run_id``, ``line``);
  inserted once, never updated.
- ``monitoring``: one document per minute, unique on ``minute``: ``success``,
  ``error``, ``reasons`` (errors per reason), ``by_run`` (the same per run, under
  ``field_key(run_id)``, with ``duplicates``); ``tallies`` is the writer's bookkeeping.
- ``runs``: one document per run, ``_id`` is the run id; ``minutes`` lists the
  minutes that hold its counters, so a run's totals are a sum over a few documents.

A line counts in the UTC minute its processing finished: ``floor_minute`` is that
bucketing, for the writer that counts and the API that reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database

IMAGES = "images"
EVENTS = "events"
MONITORING = "monitoring"
RUNS = "runs"
GRAY_BUCKET = "gray"

T = TypeVar("T")

# A document may hold 16 MiB; keep room for the other fields.
MAX_INLINE_PNG = 15 * 1024 * 1024

MINUTE = timedelta(minutes=1)  # the width of a monitoring bucket
# Windows are clamped into this range: nothing itm counted is older than the Unix
# epoch, and the margin below year 10000 keeps datetime and matplotlib arithmetic
# from overflowing, whatever bounds a client asks for.
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


def redact(uri: str) -> str:
    """The URI without its password, for messages and logs."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def ensure_indexes(db: Database[Any]) -> None:
    """Create the indexes the contract relies on (idempotent)."""
    db[IMAGES].create_index([("md5", ASCENDING)], unique=True)
    db[IMAGES].create_index([("inserted_at", DESCENDING), ("md5", DESCENDING)])
    db[EVENTS].create_index([("run_id", ASCENDING), ("line", ASCENDING)], unique=True)
    db[MONITORING].create_index([("minute", ASCENDING)], unique=True)
    db[RUNS].create_index([("started_at", DESCENDING), ("_id", DESCENDING)])


def field_key(name: str) -> str:
    """A reason or a run id as a field name: no dots, no leading ``$``."""
    return name.replace(".", "_").lstrip("$") or "unknown"


WINDOW = 10_000  # line numbers per query when a whole run is read


def events_by_line(
    db: Database[Any], run_id: str, projection: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The run's events in line order, by windows of lines (see ``by_window``)."""
    projection = {"_id": 0, "line": 1, **projection}
    return by_window(
        db,
        run_id,
        lambda window: db[EVENTS].find(window, projection).sort("line", ASCENDING),
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
                sort=[("line", ASCENDING)],
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
