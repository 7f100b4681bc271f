"""The API's reads of MongoDB, as plain data, with no HTTP in them.

Every read is served by an index, or by the per-minute ``monitoring`` documents
(a day of them at most for a histogram): none grows with the number of events
or images. Every function may raise ``PyMongoError``; the API turns it into a
503. The API bounds each request's reads with ``pymongo.timeout`` (which sends
``maxTimeMS`` with every command and times the socket out too); ``gridfs_chunks``
runs after the route returned, so it bounds each chunk read itself.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import pymongo
from gridfs import GridFSBucket, GridOut
from pymongo.database import Database

from itm.api.histogram import Bucket, Totals, Window, fill_buckets, resolve_window
from itm.api.models import RunTotals
from itm.api.runview import sum_counters
from itm.store import (
    BY_MINUTE,
    EARLIEST,
    GRAY_BUCKET,
    IMAGE_CARD,
    IMAGE_PNG,
    IMAGES,
    IMAGES_NEWEST_FIRST,
    MINUTE_BUCKET,
    MINUTES_NEWEST_FIRST,
    MONITORING,
    RUN_VIEW,
    RUNS,
    RUNS_NEWEST_FIRST,
    field_key,
)

MD5_RE = re.compile(r"[0-9a-f]{32}")
RUN_ID_RE = re.compile(r"[^\x00-\x1f]{1,200}")
# A page of images is read from the narrowest window of inserted_at, back from the end of
# the last minute that stored an image (or the cursor), that holds it, before the whole
# collection: SecantusDB 0.7 (the embedded default) reads every document a query matches
# before it applies the limit, so an unbounded newest-first page costs the whole
# collection there; a range of the (inserted_at, md5) index costs what it holds, on
# MongoDB and SecantusDB alike. Any window gives the right page when it holds one (it
# has every newer image); that minute only makes the first one likely to.
PAGE_WINDOWS = tuple(timedelta(seconds=s) for s in (10, 60, 600, 3600, 86400))


def image_exists(db: Database[Any], md5: str) -> bool:
    return db[IMAGES].find_one({"md5": md5}, {"_id": 1}) is not None


def image_png(db: Database[Any], md5: str) -> bytes | GridOut | None:
    """The stored PNG of ``md5``: the bytes of the document, or an open GridFS stream.

    ``None`` for an unknown md5; ``gridfs.errors.NoFile`` when the document
    names a GridFS file that is not there.
    """
    doc = db[IMAGES].find_one({"md5": md5}, IMAGE_PNG)
    if doc is None:
        return None
    if doc.get("gray") is not None:
        return bytes(doc["gray"])
    return GridFSBucket(db, bucket_name=GRAY_BUCKET).open_download_stream(doc["gray_id"])


def gridfs_chunks(stream: GridOut, timeout_s: float) -> Iterator[bytes]:
    """The chunks of a GridFS file, each read within ``timeout_s``, closing it at the end.

    Not ``iter(stream)``: a ``GridOut`` is a file object, which iterates by lines.
    """
    try:
        while True:
            with pymongo.timeout(timeout_s):
                chunk = stream.readchunk()
            if not chunk:
                return
            yield chunk
    finally:
        stream.close()


def encode_cursor(at: datetime, key: str) -> str:
    """An opaque cursor that resumes a newest-first listing right after (``at``, ``key``)."""
    millis = (at - EARLIEST) // timedelta(milliseconds=1)
    return base64.urlsafe_b64encode(f"{millis}.{key}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, key: re.Pattern[str]) -> tuple[datetime, str]:
    """The (date, key) a cursor resumes after: (``inserted_at``, ``md5``) of an image,
    (``started_at``, ``_id``) of a run; ``ValueError`` if malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        millis, value = raw.split(".", 1)
        # BSON datetimes are whole milliseconds, so this is exactly the stored value.
        at = EARLIEST + timedelta(milliseconds=int(millis))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise ValueError("malformed cursor") from exc
    if not key.fullmatch(value):
        raise ValueError("malformed cursor")
    return at, value


def image_page(
    db: Database[Any], limit: int, after: tuple[datetime, str] | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` images, newest first, after the cursor position; and the next cursor.

    Keyset paging on (``inserted_at``, ``md5``), so a page costs the same however
    deep it is and stays stable while the job inserts. The page is read from the
    narrowest of ``PAGE_WINDOWS`` of ``inserted_at`` that holds it (see there).
    """
    newer: list[dict[str, Any]] = []  # after the cursor, in its own millisecond
    before: dict[str, datetime] = {}
    if after is None:  # the end of the last minute that stored an image
        last = _last_image_minute(db)
        newest = None if last is None else last + timedelta(minutes=1)
    else:
        newest, md5 = after
        newer = _cards(db, {"inserted_at": newest, "md5": {"$lt": md5}}, limit + 1)
        before = {"$lt": newest}
    docs = newer
    for window in (*(PAGE_WINDOWS if newest is not None else ()), None):
        if window is None:
            bounds = before
        else:
            assert newest is not None  # windows are tried only below a newest image
            bounds = {**before, "$gte": newest - window}
        docs = newer + _cards(db, {"inserted_at": bounds} if bounds else {}, limit + 1)
        if len(docs) > limit:
            break
    return cut(docs, limit)


def cut(
    docs: list[dict[str, Any]], limit: int, at: str = "inserted_at", key: str = "md5"
) -> tuple[list[dict[str, Any]], str | None]:
    """The first ``limit`` of ``docs`` (newest first by ``at``, then ``key``: images by
    default), and the cursor after them when ``docs`` holds more."""
    if len(docs) <= limit:
        return docs, None
    last = docs[limit - 1]
    return docs[:limit], encode_cursor(last[at], last[key])


def first_page(
    newest: tuple[list[dict[str, Any]], str | None], limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The first page of ``limit`` images, cut from ``newest``, the first page of at least
    ``limit`` (``image_page(db, n)`` with ``n >= limit``): one read serves every size."""
    docs, after = newest
    return cut(docs, limit) if len(docs) > limit else (docs, after)


def _cards(db: Database[Any], query: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` images of ``query``, newest first: separate index ranges, not an
    ``$or`` (SecantusDB 0.7 scans the collection for one)."""
    return list(db[IMAGES].find(query, IMAGE_CARD).sort(IMAGES_NEWEST_FIRST).limit(limit))


def _last_image_minute(db: Database[Any]) -> datetime | None:
    """The last minute that stored an image (its ``images`` counter is positive): the
    newest images are stored in it or after it.

    Anchors ``PAGE_WINDOWS`` where the images are, even when later runs stored none
    (minutes that only counted errors or duplicates): the first window holds a page.
    """
    doc = db[MONITORING].find_one(
        {"images": {"$gt": 0}},
        {"_id": 0, "minute": 1},
        sort=MINUTES_NEWEST_FIRST,
    )
    return None if doc is None else doc["minute"]


def _edge_minute(db: Database[Any], sort: list[tuple[str, int]]) -> datetime | None:
    doc = db[MONITORING].find_one({}, {"_id": 0, "minute": 1}, sort=sort)
    return None if doc is None else doc["minute"]


def histogram(
    db: Database[Any], since: datetime | None, until: datetime | None
) -> tuple[Window | None, list[Bucket]]:
    """The window to show and its zero-filled buckets (see ``resolve_window``).

    ``ValueError`` when ``since`` is after ``until``.
    """
    first = _edge_minute(db, BY_MINUTE) if since is None else None
    last = _edge_minute(db, MINUTES_NEWEST_FIRST) if until is None else None
    window = resolve_window(since, until, first, last)
    if window is None:
        return None, []
    docs = db[MONITORING].find(
        {"minute": {"$gte": window.since, "$lte": window.until}},
        MINUTE_BUCKET,
    )
    return window, fill_buckets(window, docs)


def summary(db: Database[Any]) -> tuple[Totals, list[tuple[str, int]], int]:
    """All-time successes and errors, errors by reason (most frequent first), and the
    number of images stored.

    Sums the per-minute counters (``reasons`` counts each minute's errors by
    reason, ``images`` the lines that stored their image first): O(minutes), never
    a scan of ``events`` or ``images``.
    """
    facets = list(
        db[MONITORING].aggregate(
            [
                {
                    "$project": {
                        "_id": 0,
                        "success": 1,
                        "error": 1,
                        "images": 1,
                        "reasons": {"$objectToArray": {"$ifNull": ["$reasons", {}]}},
                    }
                },
                {
                    "$facet": {
                        "totals": [
                            {
                                "$group": {
                                    "_id": None,
                                    "success": {"$sum": "$success"},
                                    "error": {"$sum": "$error"},
                                    "images": {"$sum": "$images"},
                                }
                            }
                        ],
                        "reasons": [
                            {"$unwind": "$reasons"},
                            {"$group": {"_id": "$reasons.k", "count": {"$sum": "$reasons.v"}}},
                        ],
                    }
                },
            ]
        )
    )
    sums = facets[0]["totals"] if facets else []
    totals = Totals(sums[0]["success"], sums[0]["error"]) if sums else Totals(0, 0)
    images = sums[0]["images"] if sums else 0
    rows = facets[0]["reasons"] if facets else []
    reasons = sorted(
        ((row["_id"], row["count"]) for row in rows if row["count"]),
        key=lambda pair: (-pair[1], pair[0]),
    )
    return totals, reasons, images


class Dashboard(NamedTuple):
    """What the dashboard shows besides its images: see ``summary``."""

    totals: Totals
    reasons: list[tuple[str, int]]
    images: int
    runs: list[tuple[dict[str, Any], RunTotals]]  # the newest runs, each with its totals
    read_at: datetime  # when the reads began: the page says how old its data is


def dashboard(db: Database[Any], runs: int) -> Dashboard:
    """The all-time totals, errors by reason, images stored, and the newest ``runs`` runs."""
    read_at = datetime.now(timezone.utc)
    totals, reasons, images = summary(db)
    return Dashboard(totals, reasons, images, with_totals(db, run_page(db, runs)[0]), read_at)


def with_totals(
    db: Database[Any], runs: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], RunTotals]]:
    return [(doc, run_totals(db, doc)) for doc in runs]


def run(db: Database[Any], run_id: str) -> dict[str, Any] | None:
    return db[RUNS].find_one({"_id": run_id}, RUN_VIEW)


def run_page(
    db: Database[Any], limit: int, after: tuple[datetime, str] | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` runs, newest first, after the cursor position; and the next cursor.

    Keyset paging on the (``started_at``, ``_id``) index, as ``image_page``. Unlike
    images, runs are few (one per job): no read windows needed.
    """
    query: dict[str, Any] = {}
    if after is not None:
        at, key = after
        query = {"$or": [{"started_at": {"$lt": at}}, {"started_at": at, "_id": {"$lt": key}}]}
    docs = list(db[RUNS].find(query, RUN_VIEW).sort(RUNS_NEWEST_FIRST).limit(limit + 1))
    return cut(docs, limit, "started_at", "_id")


def run_totals(db: Database[Any], run: dict[str, Any]) -> RunTotals:
    """A run's totals: stored when it finished; until then, summed from the minutes it
    lists (its own counters in each, ``by_run``): a few documents, never its events."""
    if run.get("finished_at") is not None and run.get("totals"):
        return RunTotals(**run["totals"])
    key = field_key(run["_id"])
    docs = db[MONITORING].find(
        {"minute": {"$in": run.get("minutes") or []}}, {"_id": 0, f"by_run.{key}": 1}
    )
    return sum_counters(doc.get("by_run", {}).get(key, {}) for doc in docs)
