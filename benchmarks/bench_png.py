"""Which zlib level for the stored grayscale PNGs: size and time against Pillow's default.

    python -m benchmarks.bench_png [--repeat 5]

Encodes the grayscale of real photos (matplotlib's samples) and of picsum-like
JPEGs at each level; prints bytes and encode time relative to level 6, Pillow's
default.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import numpy as np

from itm.imaging import decode, encode_png, to_gray
from tests.servers import jpeg

SAMPLES = Path(matplotlib.get_data_path()) / "sample_data"
DEFAULT = 6  # zlib's default, which Pillow uses when no level is given


def inputs() -> list[np.ndarray]:
    files = [(SAMPLES / name).read_bytes() for name in
             ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")]
    files += [jpeg(500, 500, seed) for seed in range(5)] + [jpeg(200, 300, 9)]
    return [to_gray(decode(data, 10**8))[0] for data in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    grays = inputs()
    results = {}
    for level in range(10):
        started = time.perf_counter()
        for _ in range(args.repeat):
            size = sum(len(encode_png(gray, level)) for gray in grays)
        results[level] = (size, (time.perf_counter() - started) / args.repeat)
    base_size, base_time = results[DEFAULT]
    print(f"{len(grays)} images; relative to level {DEFAULT} (Pillow's default)")
    print("level     bytes  size x  time x")
    for level, (size, seconds) in results.items():
        print(f"{level:5d} {size:9,d} {size / base_size:6.2f} {seconds / base_time:7.2f}")


if __name__ == "__main__":
    main()
