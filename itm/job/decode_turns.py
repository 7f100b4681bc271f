"""One large decode at a time per node: what bounds a node's memory by pixels, not bytes.

A 200 KB PNG can hold 49 M pixels, and a decode holds the decoded image and its gray
(about 5 bytes a pixel of an opaque source, 6 with alpha): a node whose CPUs each
decoded such a file at once would run out of memory. A decode of more than
``LARGE_PIXELS`` waits for the node's turn, a lock file that every worker process
of the node (every job of its user) shares; smaller ones never wait. So a node
spends at most ``6 B x (--max-pixels + (CPUs - 1) x LARGE_PIXELS)`` on decoding.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LARGE_PIXELS = 16_000_000  # a 4000x4000 photo: about 100 MB at its peak
LOCK = Path(tempfile.gettempdir()) / f"itm-large-decode-{os.getuid()}.lock"


@contextmanager
def decode_turn(pixels: int) -> Iterator[None]:
    """Hold the node's large-decode lock while an image of ``pixels`` is decoded, if large.

    The kernel releases the lock of a process that dies, so a killed worker never
    holds it.
    """
    if pixels <= LARGE_PIXELS:
        yield
        return
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
