"""The histogram PNG: a real chart with both series, a readable empty state, thread safety."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import psutil
import pytest

from itm.api.chart import AXES_PIXELS, ERROR_COLOR, SUCCESS_COLOR, histogram_png, render_histogram
from itm.api.coalesce import Busy
from itm.api.histogram import CHART_MINUTES, Bucket, Window, chart_buckets
from itm.store import MINUTE
from tests.support.pixels import AXES_LEFT, color_runs, count_color, pixels

T0 = datetime(2026, 3, 4, 5, 6, tzinfo=timezone.utc)
LEGEND_SWATCH = 300  # pixels: at most what the legend's own patch of a color takes


def buckets(n: int, seed: int = 0) -> list[Bucket]:
    rng = np.random.default_rng(seed)
    return [
        Bucket(T0 + i * MINUTE, int(rng.integers(0, 9)), int(rng.integers(0, 4))) for i in range(n)
    ]


def drawn(minutes: int) -> bytes:
    """The chart of a run of ``minutes`` busy minutes, as the API draws its default window."""
    data = buckets(minutes, seed=minutes)
    data = [Bucket(b.minute, b.success + 1, b.error) for b in data]  # every minute has bars
    window = Window(data[0].minute, data[-1].minute)
    return render_histogram(chart_buckets(window, data, keep_since=False, keep_until=False))


def test_one_minute_is_one_bar_in_its_slot_among_empty_minutes() -> None:
    slot = AXES_PIXELS / CHART_MINUTES
    (bar,) = color_runs(pixels(drawn(1)), SUCCESS_COLOR)
    assert 0.7 * slot <= bar[1] - bar[0] <= slot  # a minute wide, less the gap
    middle = AXES_LEFT + 14.5 * slot  # the 15th of 30 minutes
    assert abs((bar[0] + bar[1]) / 2 - middle) <= 2


def test_an_hour_is_sixty_bars_each_in_its_slot() -> None:
    slot = AXES_PIXELS / 60
    bars = color_runs(pixels(drawn(60)), SUCCESS_COLOR)
    assert len(bars) == 60
    assert all(0.6 * slot <= end - start <= slot for start, end in bars)


def test_a_day_is_one_area_without_stripes() -> None:
    bars = color_runs(pixels(drawn(24 * 60)), SUCCESS_COLOR)
    assert len(bars) == 1
    assert bars[0][1] - bars[0][0] >= AXES_PIXELS - 2


def test_chart_draws_both_series() -> None:
    rgb = pixels(render_histogram(buckets(30)))
    assert count_color(rgb, SUCCESS_COLOR) > 10 * LEGEND_SWATCH
    assert count_color(rgb, ERROR_COLOR) > 3 * LEGEND_SWATCH


def test_a_day_of_minutes_renders() -> None:
    rgb = pixels(render_histogram(buckets(24 * 60)))
    assert count_color(rgb, SUCCESS_COLOR) > 10 * LEGEND_SWATCH


def test_all_zero_buckets_draw_no_bars() -> None:
    rgb = pixels(render_histogram([Bucket(T0, 0, 0), Bucket(T0 + MINUTE, 0, 0)]))
    assert 0 < count_color(rgb, SUCCESS_COLOR) < LEGEND_SWATCH
    assert 0 < count_color(rgb, ERROR_COLOR) < LEGEND_SWATCH


def test_empty_chart_says_so() -> None:
    rgb = pixels(render_histogram([]))
    assert count_color(rgb, SUCCESS_COLOR) == 0
    dark = (rgb.sum(axis=2) < 300).sum()
    assert dark > 200  # the title and the message are there
    assert render_histogram([], empty_message="no data in this window") != render_histogram([])


def test_concurrent_renders_do_not_interfere() -> None:
    inputs = [buckets(20, seed) for seed in range(4)] * 3
    alone = [render_histogram(b) for b in inputs[:4]]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(render_histogram, inputs))
    assert together == alone * 3


def test_histogram_png_draws_each_input_once() -> None:
    first = histogram_png(buckets(10))
    assert first == render_histogram(buckets(10))
    assert histogram_png(buckets(10)) is first
    assert histogram_png(buckets(10, seed=1)) != first


def test_a_drawing_process_that_died_is_a_503_then_replaced() -> None:
    histogram_png(buckets(3, seed=7))  # the drawing process runs
    painters = [
        child
        for child in psutil.Process().children()
        if any("spawn_main" in part for part in child.cmdline())
    ]
    assert len(painters) == 1
    painters[0].kill()
    painters[0].wait(10)
    with pytest.raises(Busy, match="drawing process stopped"):
        histogram_png(buckets(3, seed=8))
    assert pixels(histogram_png(buckets(3, seed=8)))[0, 0].tolist() == [255, 255, 255]
