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
  ``run_key(run_id)``, with ``duplicates``); ``tallies`` is the writer's bookkeeping.
- ``runs``: one document per run, ``_id`` is the run id; ``minutes`` lists the
  minutes that hold its counters, so a run's totals are a sum over a few documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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


def connect(uri: str, timeout_ms: int = 5000) -> MongoClient:
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


def ensure_indexes(db: Database) -> None:
    """Create the indexes the contract relies on (idempotent)."""
    db[IMAGES].create_index([("md5", ASCENDING)], unique=True)
    db[IMAGES].create_index([("inserted_at", DESCENDING), ("md5", DESCENDING)])
    db[EVENTS].create_index([("run_id", ASCENDING), ("line", ASCENDING)], unique=True)
    db[MONITORING].create_index([("minute", ASCENDING)], unique=True)
    db[RUNS].create_index([("started_at", DESCENDING), ("_id", DESCENDING)])


def field_key(name: str) -> str:
    """A reason or a run id as a field name: no dots, no leading ``$``."""
    return name.replace(".", "_").lstrip("$") or "unknown"


def events_by_line(db: Database, run_id: str, projection: dict[str, Any],
                   query: dict[str, Any] | None = None, page: int = 50_000) -> Iterator[dict]:
    """The run's events (those matching ``query``) in line order, a page per query.

    Paged on the (``run_id``, ``line``) index: no cursor lives for minutes, and the
    caller holds one page at a time, however long the run.
    """
    after = 0
    while True:
        events = list(db[EVENTS].find(
            {"run_id": run_id, "line": {"$gt": after}, **(query or {})},
            {"_id": 0, "line": 1, **projection},
        ).sort("line", ASCENDING).limit(page))
        yield from events
        if len(events) < page:
            return
        after = events[-1]["line"]
