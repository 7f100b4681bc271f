"""The per-minute histogram as plain data: windows, zero-filled buckets, totals, and
the minutes a chart shows and names.

Pure functions, no MongoDB and no drawing, so that the JSON route, the chart and
the dashboard agree on one definition of a minute and of a window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from itm.store import EARLIEST, LATEST, MINUTE, floor_minute

# At most one day of minutes per histogram: bounds the query, the chart and the JSON.
MAX_BUCKETS = 24 * 60
# The fewest minutes a chart shows: the bars of a short run stand among empty minutes,
# each as wide as its minute, and read as a histogram rather than as one slab.
CHART_MINUTES = 30
# Tick steps of a chart, in minutes: each divides a day, so that ticks fall on round
# times of day (…, 21:45, 21:50, … or 00:00, 02:00, …).
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440)
# The most ticks a chart names: 5-minute ticks for an hour, 2-hour ticks for a day.
MAX_TICKS = 13


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


def widen(
    window: Window, minutes: int, keep_since: bool = False, keep_until: bool = False
) -> Window:
    """``window`` grown to at least ``minutes`` minutes: around its middle, or away from
    the bound to keep (one the user asked for); not at all when both bounds are kept.

    A bound that is not kept came from the data (``resolve_window``), so the minutes
    added beyond it have no counts: they are drawn empty, and truly are.
    """
    missing = minutes - window.minutes
    if missing <= 0 or (keep_since and keep_until):
        return window
    before = 0 if keep_since else missing if keep_until else missing // 2
    since = window.since - before * MINUTE
    until = window.until + (missing - before) * MINUTE
    return Window(_clamp(since), _clamp(until))


def pad(buckets: Iterable[Bucket], window: Window) -> list[Bucket]:
    """``buckets`` with an empty one for each other minute of ``window``."""
    return fill_buckets(window, map(dataclasses.asdict, buckets))


def chart_buckets(
    window: Window | None, buckets: Sequence[Bucket], keep_since: bool, keep_until: bool
) -> list[Bucket]:
    """The buckets a chart draws: those of ``window``, widened to ``CHART_MINUTES``."""
    if window is None:
        return list(buckets)
    return pad(buckets, widen(window, CHART_MINUTES, keep_since, keep_until))


def minute_ticks(window: Window, most: int = MAX_TICKS) -> list[datetime]:
    """The round minutes a chart of ``window`` names: multiples (since midnight UTC) of
    the smallest step of ``TICK_STEPS`` that gives at most ``most`` ticks.

    The axis runs from the start of the first minute to the end of the last one, each
    minute a slot: a tick marks where a minute begins.
    """
    for step in TICK_STEPS:
        ticks = _multiples(window, step)
        if len(ticks) <= most:
            break
    return ticks  # a day's step at the latest: at most two ticks a day


def _multiples(window: Window, step: int) -> list[datetime]:
    """The minutes from the start of ``window`` to the end of its last minute that are
    multiples of ``step`` minutes since midnight."""
    minute_of_day = window.since.hour * 60 + window.since.minute
    tick, end = window.since + (-minute_of_day % step) * MINUTE, window.until + MINUTE
    ticks = []
    while tick <= end:
        ticks.append(tick)
        tick += step * MINUTE
    return ticks


def tick_labels(ticks: Sequence[datetime]) -> list[str]:
    """``HH:MM`` for each tick; a midnight one also names its day (the chart's title
    names the first and last minutes in full)."""
    return [
        f"{tick:%H:%M}\n{tick:%Y-%m-%d}" if tick.hour == tick.minute == 0 else f"{tick:%H:%M}"
        for tick in ticks
    ]
