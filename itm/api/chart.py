"""The monitoring histogram drawn as a PNG, in a process of its own.

Only matplotlib's object API (a ``Figure`` per call, no pyplot): pyplot keeps
global state, which concurrent requests of the API would share. A drawing holds
the GIL far longer than a request takes, so the API hands it to a child process: the replica's event
loop and its other requests (a quick ``503`` included) never wait behind a chart.
"""

from __future__ import annotations

import io
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from itm.api.coalesce import Busy, Coalescer
from itm.api.histogram import Bucket, Window, minute_ticks, tick_labels, totals
from itm.store import MINUTE

SUCCESS_COLOR = "#2e7d32"
ERROR_COLOR = "#c62828"
TITLE = "Input lines processed per minute (UTC)"
SIZE_INCHES = (10.0, 4.0)
DPI = 100
# Fixed margins (fractions of the figure), the legend right of the bars: a layout
# engine ("constrained") would lay the figure out by drawing it once more, +60 % CPU.
MARGINS = {"left": 0.06, "right": 0.86, "bottom": 0.14, "top": 0.86}
AXES_PIXELS = SIZE_INCHES[0] * DPI * (MARGINS["right"] - MARGINS["left"])  # the x axis, wide
BAR_FRACTION = 0.8  # of its minute's slot: the rest is the gap between bars
GAP_FROM_PIXELS = 4.0  # narrower slots get no gap: a day of minutes reads as one area


def bar_fraction(minutes: int) -> float:
    """How much of its minute's slot a bar fills on a chart of ``minutes`` minutes: a
    gap shows between wide bars; sub-pixel gaps would only stripe a long chart."""
    return BAR_FRACTION if AXES_PIXELS / minutes >= GAP_FROM_PIXELS else 1.0


def render_histogram(buckets: Sequence[Bucket], empty_message: str = "no data yet") -> bytes:
    """A PNG of stacked success/error bars, one per bucket; ``empty_message`` when there is none."""
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    figure.subplots_adjust(**MARGINS)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if buckets:
        _draw_bars(axes, buckets)
    else:
        axes.set_axis_off()
        axes.set_title(TITLE)
        axes.text(
            0.5,
            0.5,
            empty_message,
            ha="center",
            va="center",
            fontsize=18,
            color="0.4",
            transform=axes.transAxes,
        )
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


# Spawned, never forked: the API's process runs threads (Ray's, uvicorn's, pymongo's).
_SPAWN = multiprocessing.get_context("spawn")
_painter: ProcessPoolExecutor | None = None  # spawned at the first drawing
_painter_lock = threading.Lock()


def _draw(key: tuple[tuple[Bucket, ...], str]) -> bytes:
    """``render_histogram(*key)`` in the drawing process; a new one after it died."""
    global _painter
    with _painter_lock:
        if _painter is None:
            _painter = ProcessPoolExecutor(1, mp_context=_SPAWN)
        painter = _painter
    try:
        return painter.submit(render_histogram, *key).result()
    except BrokenProcessPool:
        with _painter_lock:
            if _painter is painter:
                _painter = None
        raise Busy("chart drawings: the drawing process stopped, a new one starts") from None


# One drawing at a time (one drawing process), four more may wait; identical requests
# share one drawing, and the last 128 charts (~30 KB each) are remembered, so a
# dashboard reloaded while the counters stand still, or users going back and forth
# over a few hours of windows, cost a query, not a drawing.
charts: Coalescer[tuple[tuple[Bucket, ...], str], bytes] = Coalescer(
    _draw, running=1, waiting=4, cache=128, what="chart drawings"
)


def histogram_png(buckets: Sequence[Bucket], empty_message: str = "no data yet") -> bytes:
    """``render_histogram`` through ``charts``; ``itm.api.coalesce.Busy`` when too many wait."""
    return charts((tuple(buckets), empty_message))


def _bars(
    left: np.ndarray, width: float, bottom: np.ndarray, height: np.ndarray, **style: Any
) -> PolyCollection:
    """All the bars of one series as a single artist: one patch per bar draws many times slower.

    Not antialiased: bars are axis-aligned, and neighbours that touch leave no seam."""
    right = left + width
    top = bottom + height
    corners = np.stack(
        [
            np.stack(pair, axis=-1)
            for pair in ((left, bottom), (left, top), (right, top), (right, bottom))
        ],
        axis=1,
    )
    return PolyCollection(list(corners), linewidths=0, antialiaseds=False, **style)


def _draw_bars(axes: Axes, buckets: Sequence[Bucket]) -> None:
    """Minutes on the x axis: the bar of a minute fills its slot, from the minute's start
    to its end (less a gap), and the ticks name the minutes where they begin."""
    window = Window(buckets[0].minute, buckets[-1].minute)
    slot = np.array([(bucket.minute - window.since) / MINUTE for bucket in buckets])
    success = np.array([bucket.success for bucket in buckets], dtype=float)
    error = np.array([bucket.error for bucket in buckets], dtype=float)
    fraction = bar_fraction(window.minutes)
    left = slot + (1 - fraction) / 2
    zero = np.zeros_like(success)
    for bottom, height, color, label in (
        (zero, success, SUCCESS_COLOR, "success"),
        (success, error, ERROR_COLOR, "error"),
    ):
        axes.add_collection(_bars(left, fraction, bottom, height, facecolors=color, label=label))
    axes.set_xlim(0, window.minutes)
    axes.set_ylim(0, max(1.0, float((success + error).max())) * 1.1)
    ticks = minute_ticks(window)
    axes.set_xticks([(tick - window.since) / MINUTE for tick in ticks], tick_labels(ticks))
    if fraction < 1:  # wide slots: a small tick where each minute begins
        axes.set_xticks(np.arange(window.minutes + 1), minor=True)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("lines")
    axes.grid(axis="y", alpha=0.3)
    total = totals(buckets)
    axes.set_title(
        f"{TITLE}\n{window.since:%Y-%m-%d %H:%M} to {window.until:%Y-%m-%d %H:%M}: "
        f"{total.success} success, {total.error} error",
        fontsize=11,
    )
    axes.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0))  # beside the bars, not on them
