"""Reading the input file: numbered lines, each with a bounded length, memory flat.

A URL list comes from the web: a line may be megabytes long, or the whole file one
line without a newline. No line is ever read whole into memory: past ``MAX_LINE``
characters the rest of it is skipped, and the URL check refuses what is left.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from pathlib import Path

from itm.outcomes import Line

MAX_LINE = 8192  # characters; a longer line is cut to MAX_LINE + 1 and refused
_SKIP = 1 << 16  # characters read at a time while skipping the rest of a long line


def read_lines(path: Path, done: Container[int]) -> Iterator[Line]:
    """Stream ``(number, text)`` of each line, 1-based, without the numbers ``in done``.

    Lines end at ``\\n`` only, as ``wc -l`` counts them (a stray ``\\r`` inside a line
    stays there, and the URL check refuses it). Bytes that are not UTF-8 become
    U+FFFD, which the URL check refuses too. A line longer than ``MAX_LINE``
    characters comes out cut to ``MAX_LINE + 1`` of them, so that it is refused as
    too long. The text is the line as written, secrets included: it is what is
    fetched; what is stored and shown of it is ``urls.shown_url``.
    """
    with path.open(encoding="utf-8", errors="replace", newline="\n") as stream:
        number = 0
        while text := stream.readline(MAX_LINE + 1):
            number += 1
            if len(text) > MAX_LINE and not text.endswith("\n"):  # too long: skip the rest
                while (rest := stream.readline(_SKIP)) and not rest.endswith("\n"):
                    pass
            else:
                text = text.rstrip("\r\n")
            if number not in done:
                yield number, text


def count_lines(path: Path) -> int:
    """Lines as ``read_lines`` yields them, counted in fixed-size chunks (a file without a
    newline is one line, never read whole)."""
    lines, last = 0, b"\n"
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")
