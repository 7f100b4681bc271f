"""The histogram's arithmetic: minutes, windows, zero-filling, totals."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itm.api.histogram import (
    CHART_MINUTES,
    MAX_BUCKETS,
    Bucket,
    Totals,
    Window,
    chart_buckets,
    fill_buckets,
    minute_ticks,
    pad,
    resolve_window,
    tick_labels,
    totals,
    widen,
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


def test_a_short_window_widens_around_its_middle() -> None:
    assert widen(Window(at(0), at(0)), 30) == Window(at(-14), at(15))
    assert widen(Window(at(0), at(9)), 30) == Window(at(-10), at(19))
    assert widen(Window(at(0), at(59)), 30) == Window(at(0), at(59))


def test_a_requested_bound_stays_where_it_was_asked() -> None:
    assert widen(Window(at(0), at(0)), 30, keep_since=True) == Window(at(0), at(29))
    assert widen(Window(at(0), at(0)), 30, keep_until=True) == Window(at(-29), at(0))
    both = Window(at(0), at(0))
    assert widen(both, 30, keep_since=True, keep_until=True) == both


def test_a_widened_window_stays_in_range() -> None:
    assert widen(Window(EARLIEST, EARLIEST), 30) == Window(EARLIEST, EARLIEST + 15 * MINUTE)
    assert widen(Window(LATEST, LATEST), 30) == Window(LATEST - 14 * MINUTE, LATEST)


def test_pad_adds_empty_minutes_around() -> None:
    assert pad([Bucket(at(1), 2, 3)], Window(at(0), at(2))) == [
        Bucket(at(0), 0, 0),
        Bucket(at(1), 2, 3),
        Bucket(at(2), 0, 0),
    ]


def test_a_chart_shows_at_least_its_minutes() -> None:
    one = [Bucket(at(0), 5, 1)]
    drawn = chart_buckets(Window(at(0), at(0)), one, keep_since=False, keep_until=False)
    assert len(drawn) == CHART_MINUTES
    assert drawn[14] == one[0]
    assert totals(drawn) == Totals(5, 1)
    assert chart_buckets(None, [], keep_since=False, keep_until=False) == []


def steps(ticks: list[datetime]) -> set[timedelta]:
    return {b - a for a, b in itertools.pairwise(ticks)}


def test_ticks_name_round_minutes() -> None:
    # A minute's run, widened: 21:33..22:02, ticks every 5 minutes.
    short = Window(
        datetime(2026, 3, 4, 21, 33, tzinfo=UTC), datetime(2026, 3, 4, 22, 2, tzinfo=UTC)
    )
    assert tick_labels(minute_ticks(short)) == [
        "21:35", "21:40", "21:45", "21:50", "21:55", "22:00"
    ]  # fmt: skip
    hour = Window(
        datetime(2026, 3, 4, 20, 48, tzinfo=UTC), datetime(2026, 3, 4, 21, 47, tzinfo=UTC)
    )
    ticks = minute_ticks(hour)
    assert ticks[0] == datetime(2026, 3, 4, 20, 50, tzinfo=UTC)
    assert steps(ticks) == {5 * MINUTE}
    assert ticks[-1] == datetime(2026, 3, 4, 21, 45, tzinfo=UTC)


def test_a_day_is_named_every_two_hours_and_its_midnight_by_date() -> None:
    day = Window(datetime(2026, 3, 3, 21, 48, tzinfo=UTC), datetime(2026, 3, 4, 21, 47, tzinfo=UTC))
    ticks = minute_ticks(day)
    assert ticks[0] == datetime(2026, 3, 3, 22, 0, tzinfo=UTC)
    assert steps(ticks) == {120 * MINUTE}
    labels = tick_labels(ticks)
    assert labels[:3] == ["22:00", "00:00\n2026-03-04", "02:00"]
    assert [label for label in labels if "\n" in label] == ["00:00\n2026-03-04"]


def test_one_minute_asked_for_is_named_at_both_ends() -> None:
    assert minute_ticks(Window(at(0), at(0))) == [at(0), at(1)]


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 60 * 24 * 400), minutes=st.integers(1, MAX_BUCKETS))
def test_ticks_are_few_and_on_round_minutes(start: int, minutes: int) -> None:
    window = Window(at(start), at(start + minutes - 1))
    ticks = minute_ticks(window)
    assert 1 <= len(ticks) <= 13
    assert all(window.since <= tick <= window.until + MINUTE for tick in ticks)
    assert len(steps(ticks)) <= 1
    for step in steps(ticks):
        assert all((tick - tick.replace(hour=0, minute=0)) % step == timedelta(0) for tick in ticks)


minute_offsets = st.integers(min_value=-3000, max_value=3000)


def any_window(test: Callable[..., None]) -> Callable[..., None]:
    """The property ``test`` over generated minutes (offsets, successes, errors) and
    optional bounds, in minutes."""
    return settings(max_examples=200, deadline=None)(
        given(
            docs=st.lists(
                st.tuples(minute_offsets, st.integers(0, 50), st.integers(0, 50)), max_size=30
            ),
            since=st.none() | minute_offsets,
            until=st.none() | minute_offsets,
        )(test)
    )


def window_of(
    docs: list[tuple[int, int, int]], since: int | None, until: int | None
) -> tuple[Window, list[dict]] | None:
    """The window ``resolve_window`` gives generated minutes (offsets, successes, errors)
    and bounds, with those minutes as documents; ``None`` where there is none."""
    if since is not None and until is not None and since > until:
        return None
    offsets = [offset for offset, _, _ in docs]
    window = resolve_window(
        None if since is None else at(since),
        None if until is None else at(until),
        at(min(offsets)) if offsets else None,
        at(max(offsets)) if offsets else None,
    )
    if window is None:
        return None
    return window, [{"minute": at(o), "success": s, "error": e} for o, s, e in docs]


@any_window
def test_buckets_are_contiguous_bounded_and_exact(
    docs: list[tuple[int, int, int]], since: int | None, until: int | None
) -> None:
    case = window_of(docs, since, until)
    if case is None:
        return
    window, mongo_docs = case
    buckets = fill_buckets(window, mongo_docs)
    assert 1 <= len(buckets) <= MAX_BUCKETS
    assert [b.minute for b in buckets] == [window.since + i * MINUTE for i in range(len(buckets))]
    inside = [(s, e) for o, s, e in docs if window.since <= at(o) <= window.until]
    assert totals(buckets) == Totals(sum(s for s, _ in inside), sum(e for _, e in inside))


@any_window
def test_the_minutes_a_chart_adds_are_truly_empty(
    docs: list[tuple[int, int, int]], since: int | None, until: int | None
) -> None:
    """Widening moves only the bounds that came from the data: what it adds has no counts."""
    case = window_of(docs, since, until)
    if case is None:
        return
    window, mongo_docs = case
    drawn = chart_buckets(
        window, fill_buckets(window, mongo_docs), since is not None, until is not None
    )
    shown = Window(drawn[0].minute, drawn[-1].minute)
    assert drawn == fill_buckets(shown, mongo_docs)
    assert shown.since <= window.since and window.until <= shown.until
    if since is None or until is None:
        assert len(drawn) >= CHART_MINUTES
