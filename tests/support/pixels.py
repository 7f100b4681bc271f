"""Reading a chart back from its pixels: which colours show, and in which columns."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from itm.api.chart import AXES_PIXELS, DPI, MARGINS, SIZE_INCHES

SIZE = (int(SIZE_INCHES[0] * DPI), int(SIZE_INCHES[1] * DPI))  # of a chart, in pixels
AXES_LEFT = round(SIZE[0] * MARGINS["left"])  # the first pixel column of the x axis


def pixels(png: bytes) -> np.ndarray:
    """The RGB pixels of a chart-sized PNG."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == SIZE
    return np.asarray(image.convert("RGB"))


def near(rgb: np.ndarray, color: str) -> np.ndarray:
    """Where ``rgb`` shows ``color`` (``#rrggbb``), give or take a little."""
    wanted = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
    return np.abs(rgb.astype(int) - wanted).sum(axis=2) < 30


def count_color(rgb: np.ndarray, color: str) -> int:
    return int(near(rgb, color).sum())


def color_runs(rgb: np.ndarray, color: str) -> list[tuple[int, int]]:
    """The [start, end) pixel columns of the x axis where ``color`` shows, run by run:
    one run per bar when bars have gaps between them."""
    shown = near(rgb, color).any(axis=0)[AXES_LEFT : AXES_LEFT + round(AXES_PIXELS)]
    columns = np.flatnonzero(shown) + AXES_LEFT
    if columns.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(columns) > 1)
    starts = [columns[0], *columns[breaks + 1]]
    ends = [*(columns[breaks] + 1), columns[-1] + 1]
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]
