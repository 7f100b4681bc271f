"""Which zlib settings for the stored grayscale PNGs: size and time, on real photos.

    python -m benchmarks.bench_png [--images 120] [--repeat 3]

Encodes the grayscale of real photographs (``tests/support/photo_server.py``: scikit-image's
and matplotlib's samples) at canonical sizes, for each zlib level with the default
strategy and with ``Z_RLE`` (what itm uses); prints bytes and encode time relative
to level 6 with the default strategy, Pillow's default.
"""

from __future__ import annotations

import argparse
import io
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from itm.job.imaging import decode, to_gray
from tests.support.photo_server import photo_files, photo_jpeg

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = (6, zlib.Z_DEFAULT_STRATEGY)  # Pillow's default


def inputs(count: int) -> list[np.ndarray]:
    """Grayscale pixels of ``count`` photos at the sizes of the canonical input."""
    sizes = []
    for line in (ROOT / "urls.txt").read_text().splitlines():
        width, height = line.rsplit("/", 2)[1:]
        if width.isdigit() and max(int(width), int(height)) <= 5000:
            sizes.append((int(width), int(height)))
    photos = len(photo_files())
    return [
        to_gray(decode(photo_jpeg(i % photos, *sizes[i % len(sizes)]), 10**8))[0]
        for i in range(count)
    ]


def encode(pixels: np.ndarray, level: int, strategy: int) -> int:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=level, compress_type=strategy)
    return len(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    grays = inputs(args.images)
    raw = sum(gray.size for gray in grays)
    results = {}
    for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_RLE):
        for level in (0, 1, 2, 3, 6, 9):
            started = time.perf_counter()
            for _ in range(args.repeat):
                size = sum(encode(gray, level, strategy) for gray in grays)
            results[level, strategy] = (size, (time.perf_counter() - started) / args.repeat)
    base_size, base_time = results[DEFAULT]
    print(f"{len(grays)} real photos, {raw:,} gray bytes; relative to level 6, default strategy")
    print("level strategy      bytes  of raw  size x  time x")
    for (level, strategy), (size, seconds) in results.items():
        name = "Z_RLE" if strategy == zlib.Z_RLE else "default"
        print(
            f"{level:5d} {name:8s} {size:11,d} {size / raw:7.3f} {size / base_size:7.2f} "
            f"{seconds / base_time:7.2f}"
        )


if __name__ == "__main__":
    main()
