"""The per-minute histogram as plain data: windows, zero-filled buckets, totals.

Pure functions, no MongoDB and no drawing, so that the JSON route, the chart and
the dashboard agree on one definition of a minute and of a window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itm.store import EARLIEST, LATEST, MINUTE, floor_minute

# At most one day of minutes per histogram: bounds the query, the chart and the JSON.
MAX_BUCKETS = 24 * 60


@dataclass(frozen=True)
class Bucket:
    """The lines that finished in one UTC minute."""

    minute: datetime
    success: int
    error: int


@dataclass(frozen=True)
class Totals:
    success: int
    error: int


@dataclass(frozen=True)
class Window:
    """An inclusive range of UTC minutes, never longer than ``MAX_BUCKETS``."""

    since: datetime
    until: datetime

    @property
    def minutes(self) -> int:
        return (self.until - self.since) // MINUTE + 1


def _clamp(minute: datetime) -> datetime:
    return min(max(minute, EARLIEST), LATEST)


def resolve_window(
    since: datetime | None,
    until: datetime | None,
    first: datetime | None,
    last: datetime | None,
    cap: int = MAX_BUCKETS,
) -> Window | None:
    """The minutes to show: the requested bounds, else those of the data.

    ``first``/``last`` are the oldest and newest minutes with data (``None`` when
    there is none). The window is clamped to [``EARLIEST``, ``LATEST``]; one longer
    than ``cap`` minutes keeps its end, or its start when only ``since`` was given.
    ``None`` means there is nothing to show: no data and no bounds, a window out of
    range, or a default bound on the wrong side of the requested one.
    ``ValueError`` when ``since`` is after ``until``.
    """
    lo = floor_minute(since) if since is not None else None
    hi = floor_minute(until) if until is not None else None
    if lo is not None and hi is not None and lo > hi:
        raise ValueError("since must not be after until")
    if hi is None:
        hi = last if last is not None else lo
    if lo is None:
        lo = first if first is not None else hi
    if lo is None or hi is None or lo > hi or hi < EARLIEST or lo > LATEST:
        return None
    lo, hi = _clamp(floor_minute(lo)), _clamp(floor_minute(hi))
    if (hi - lo) // MINUTE >= cap:
        if since is not None and until is None:
            hi = lo + (cap - 1) * MINUTE
        else:
            lo = hi - (cap - 1) * MINUTE
    return Window(lo, hi)


def fill_buckets(window: Window, docs: Iterable[Mapping[str, Any]]) -> list[Bucket]:
    """One bucket per minute of ``window``, oldest first, zero where no document says otherwise.

    ``docs`` are ``monitoring`` documents (``minute``, ``success``, ``error``);
    those outside the window are ignored, two for one minute are added up.
    """
    counts: dict[datetime, list[int]] = {}
    for doc in docs:
        minute = floor_minute(doc["minute"])
        if window.since <= minute <= window.until:
            tally = counts.setdefault(minute, [0, 0])
            tally[0] += int(doc.get("success") or 0)
            tally[1] += int(doc.get("error") or 0)
    buckets = []
    minute = window.since
    for _ in range(window.minutes):
        success, error = counts.get(minute, (0, 0))
        buckets.append(Bucket(minute, success, error))
        minute += MINUTE
    return buckets


def totals(buckets: Iterable[Bucket]) -> Totals:
    success = error = 0
    for bucket in buckets:
        success += bucket.success
        error += bucket.error
    return Totals(success, error)
