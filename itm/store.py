"""The MongoDB data contract: collection names, indexes and the client settings.

Shared by the writer actor (the only writer) and the API (a reader), so that both
agree on one schema:

- ``images``: one document per distinct image, unique on ``md5``; ``gray`` holds
  the grayscale PNG, or ``gray_id`` names a file of the GridFS bucket ``gray``
  when the PNG is too large for a document.
- ``events``: one document per processed input line, unique on (``run_id``, ``line``);
  inserted once, never updated.
- ``monitoring``: one document per minute, unique on ``minute``: ``success``,
  ``error``, ``reasons`` (errors per reason); ``tallies`` is the writer's bookkeeping.
- ``runs``: one document per run, ``_id`` is the run id.

A line counts in the UTC minute its processing finished: ``floor_minute`` is that
bucketing, for the writer that counts and the API that reads.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database

IMAGES = "images"
EVENTS = "events"
MONITORING = "monitoring"
RUNS = "runs"
GRAY_BUCKET = "gray"

# A document may hold 16 MiB; keep room for the other fields.
MAX_INLINE_PNG = 15 * 1024 * 1024

MINUTE = timedelta(minutes=1)  # the width of a monitoring bucket
# Windows are clamped into this range: nothing itm counted is older than the Unix
# epoch, and the margin below year 10000 keeps datetime and matplotlib arithmetic
# from overflowing, whatever bounds a client asks for.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9998, 12, 31, tzinfo=timezone.utc)


def connect(uri: str, timeout_ms: int = 5000) -> MongoClient[dict[str, Any]]:
    """A client that returns tz-aware UTC datetimes and fails fast when nobody answers."""
    return MongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="itm",
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
