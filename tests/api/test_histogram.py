"""The histogram's arithmetic: minutes, windows, zero-filling, totals."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itm.api.histogram import (
    MAX_BUCKETS,
    Bucket,
    Totals,
    Window,
    fill_buckets,
    resolve_window,
    totals,
)
from itm.store import EARLIEST, LATEST, MINUTE, floor_minute, to_utc

UTC = timezone.utc
T0 = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + minutes * MINUTE


def test_floor_minute() -> None:
    assert floor_minute(datetime(2026, 3, 4, 5, 6, 59, 999999)) == T0  # naive is UTC
    assert floor_minute(datetime(2026, 3, 4, 7, 6, 30, tzinfo=timezone(timedelta(hours=2)))) == T0
    assert floor_minute(T0).tzinfo is UTC


def test_to_utc_clamps_what_would_overflow() -> None:
    assert to_utc(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))) == EARLIEST
    assert to_utc(datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-14)))) == LATEST


def test_default_window_covers_the_data() -> None:
    assert resolve_window(None, None, at(0), at(9)) == Window(at(0), at(9))
    assert resolve_window(None, None, None, None) is None


def test_requested_bounds_win() -> None:
    assert resolve_window(at(2), None, at(0), at(9)) == Window(at(2), at(9))
    assert resolve_window(None, at(5), at(0), at(9)) == Window(at(0), at(5))
    assert resolve_window(at(-3), at(20), at(0), at(9)) == Window(at(-3), at(20))
    assert resolve_window(at(2) + timedelta(seconds=59), None, None, None) == Window(at(2), at(2))


def test_a_default_bound_on_the_wrong_side_is_nothing_to_show() -> None:
    assert resolve_window(at(10), None, at(0), at(9)) is None
    assert resolve_window(None, at(-1), at(0), at(9)) is None


def test_since_after_until_is_an_error() -> None:
    with pytest.raises(ValueError, match="since"):
        resolve_window(at(2), at(1), None, None)


def test_long_windows_are_capped() -> None:
    long_ago = at(-10 * MAX_BUCKETS)
    assert resolve_window(None, None, long_ago, at(0)) == Window(at(1 - MAX_BUCKETS), at(0))
    assert resolve_window(long_ago, None, None, at(0)) == Window(
        long_ago, long_ago + (MAX_BUCKETS - 1) * MINUTE
    )
    assert resolve_window(None, None, at(0), at(99), cap=10) == Window(at(90), at(99))


def test_windows_stay_in_range() -> None:
    far = datetime(1, 1, 1, tzinfo=UTC)
    window = resolve_window(far, datetime(9999, 12, 31, tzinfo=UTC), None, None)
    assert window is not None
    assert window.until == LATEST
    assert window.minutes == MAX_BUCKETS
    assert resolve_window(far, None, None, at(0)) == Window(
        EARLIEST, EARLIEST + (MAX_BUCKETS - 1) * MINUTE
    )
    assert resolve_window(far, far + MINUTE, None, None) is None


def test_fill_buckets_zero_fills_and_adds_up() -> None:
    docs = [
        {"minute": at(1), "success": 2, "error": 1, "tallies": ["ignored"]},
        {"minute": at(1) + timedelta(seconds=5), "success": 1},
        {"minute": at(3), "success": 0, "error": 4},
        {"minute": at(7), "success": 9, "error": 9},  # outside the window
    ]
    assert fill_buckets(Window(at(0), at(3)), docs) == [
        Bucket(at(0), 0, 0),
        Bucket(at(1), 3, 1),
        Bucket(at(2), 0, 0),
        Bucket(at(3), 0, 4),
    ]


def test_totals() -> None:
    assert totals([Bucket(at(0), 1, 2), Bucket(at(1), 3, 4)]) == Totals(4, 6)
    assert totals([]) == Totals(0, 0)


minute_offsets = st.integers(min_value=-3000, max_value=3000)


@settings(max_examples=200, deadline=None)
@given(
    docs=st.lists(st.tuples(minute_offsets, st.integers(0, 50), st.integers(0, 50)), max_size=30),
    since=st.none() | minute_offsets,
    until=st.none() | minute_offsets,
)
def test_buckets_are_contiguous_bounded_and_exact(
    docs: list[tuple[int, int, int]], since: int | None, until: int | None
) -> None:
    if since is not None and until is not None and since > until:
        return
    offsets = [offset for offset, _, _ in docs]
    window = resolve_window(
        None if since is None else at(since),
        None if until is None else at(until),
        at(min(offsets)) if offsets else None,
        at(max(offsets)) if offsets else None,
    )
    if window is None:
        return
    mongo_docs = [{"minute": at(o), "success": s, "error": e} for o, s, e in docs]
    buckets = fill_buckets(window, mongo_docs)
    assert 1 <= len(buckets) <= MAX_BUCKETS
    assert [b.minute for b in buckets] == [window.since + i * MINUTE for i in range(len(buckets))]
    inside = [(s, e) for o, s, e in docs if window.since <= at(o) <= window.until]
    assert totals(buckets) == Totals(sum(s for s, _ in inside), sum(e for _, e in inside))
