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
from typing import Any

import pymongo
from gridfs import GridFSBucket, GridOut
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database

from itm.api.histogram import Bucket, Totals, Window, fill_buckets, resolve_window
from itm.store import GRAY_BUCKET, IMAGES, MONITORING

MD5_RE = re.compile(r"[0-9a-f]{32}")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NEWEST_FIRST = [("inserted_at", DESCENDING), ("md5", DESCENDING)]  # matches an index of store
CARD_FIELDS = {"_id": 0, "md5": 1, "width": 1, "height": 1, "inserted_at": 1}
# Of a monitoring document, only its counters: the writer adds bookkeeping fields.
BUCKET_FIELDS = {"_id": 0, "minute": 1, "success": 1, "error": 1}


def image_exists(db: Database[Any], md5: str) -> bool:
    return db[IMAGES].find_one({"md5": md5}, {"_id": 1}) is not None


def image_png(db: Database[Any], md5: str) -> bytes | GridOut | None:
    """The stored PNG of ``md5``: the bytes of the document, or an open GridFS stream.

    ``None`` for an unknown md5; ``gridfs.errors.NoFile`` when the document
    names a GridFS file that is not there.
    """
    doc = db[IMAGES].find_one({"md5": md5}, {"_id": 0, "gray": 1, "gray_id": 1})
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


def encode_cursor(doc: dict[str, Any]) -> str:
    """An opaque cursor that resumes the newest-first listing right after ``doc``."""
    millis = (doc["inserted_at"] - EPOCH) // timedelta(milliseconds=1)
    return base64.urlsafe_b64encode(f"{millis}.{doc['md5']}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (``inserted_at``, ``md5``) a cursor resumes after; ``ValueError`` if malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        millis, md5 = raw.split(".")
        # BSON datetimes are whole milliseconds, so this is exactly the stored value.
        inserted_at = EPOCH + timedelta(milliseconds=int(millis))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise ValueError("malformed cursor") from exc
    if not MD5_RE.fullmatch(md5):
        raise ValueError("malformed cursor")
    return inserted_at, md5


def image_page(
    db: Database[Any], limit: int, after: tuple[datetime, str] | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``limit`` images, newest first, after the cursor position; and the next cursor.

    Keyset paging on (``inserted_at``, ``md5``), so a page costs the same however
    deep it is and stays stable while the job inserts.
    """
    query: dict[str, Any] = {}
    if after is not None:
        at, md5 = after
        query = {"$or": [{"inserted_at": {"$lt": at}}, {"inserted_at": at, "md5": {"$lt": md5}}]}
    docs = list(db[IMAGES].find(query, CARD_FIELDS).sort(NEWEST_FIRST).limit(limit + 1))
    if len(docs) <= limit:
        return docs, None
    return docs[:limit], encode_cursor(docs[limit - 1])


def _edge_minute(db: Database[Any], direction: int) -> datetime | None:
    doc = db[MONITORING].find_one({}, {"_id": 0, "minute": 1}, sort=[("minute", direction)])
    return None if doc is None else doc["minute"]


def histogram(
    db: Database[Any], since: datetime | None, until: datetime | None
) -> tuple[Window | None, list[Bucket]]:
    """The window to show and its zero-filled buckets (see ``resolve_window``).

    ``ValueError`` when ``since`` is after ``until``.
    """
    first = _edge_minute(db, ASCENDING) if since is None else None
    last = _edge_minute(db, DESCENDING) if until is None else None
    window = resolve_window(since, until, first, last)
    if window is None:
        return None, []
    docs = db[MONITORING].find(
        {"minute": {"$gte": window.since, "$lte": window.until}},
        BUCKET_FIELDS,
    )
    return window, fill_buckets(window, docs)


def summary(db: Database[Any]) -> tuple[Totals, list[tuple[str, int]]]:
    """All-time successes and errors, and errors by reason (most frequent first).

    Sums the per-minute counters (``reasons`` counts each minute's errors by
    reason; documents older than it have none): O(minutes), never a scan of
    ``events``.
    """
    facets = list(db[MONITORING].aggregate([
        {"$project": {"_id": 0, "success": 1, "error": 1,
                      "reasons": {"$objectToArray": {"$ifNull": ["$reasons", {}]}}}},
        {"$facet": {
            "totals": [{"$group": {"_id": None, "success": {"$sum": "$success"},
                                   "error": {"$sum": "$error"}}}],
            "reasons": [{"$unwind": "$reasons"},
                        {"$group": {"_id": "$reasons.k", "count": {"$sum": "$reasons.v"}}}],
        }},
    ]))
    sums = facets[0]["totals"] if facets else []
    totals = Totals(sums[0]["success"], sums[0]["error"]) if sums else Totals(0, 0)
    rows = facets[0]["reasons"] if facets else []
    reasons = sorted(((row["_id"], row["count"]) for row in rows if row["count"]),
                     key=lambda pair: (-pair[1], pair[0]))
    return totals, reasons


def image_count(db: Database[Any]) -> int:
    """From the collection's metadata: O(1), however many images there are."""
    return db[IMAGES].estimated_document_count()
