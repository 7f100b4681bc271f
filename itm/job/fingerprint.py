"""What identifies an input file for a resume: its size and the MD5 of its two ends.

Cheap at any size (two MiB read), and any edit that adds, removes or reorders lines
changes the size or an end in practice; a rewrite of the middle with the same size
is the one change it misses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MIB = 1024 * 1024


def fingerprint(path: Path) -> dict[str, int | str]:
    """``{"size", "head_md5", "tail_md5"}`` of the file (first and last MiB)."""
    size = path.stat().st_size
    with path.open("rb") as data:
        head = hashlib.md5(data.read(MIB)).hexdigest()
        data.seek(max(0, size - MIB))
        tail = hashlib.md5(data.read(MIB)).hexdigest()
    return {"size": size, "head_md5": head, "tail_md5": tail}
