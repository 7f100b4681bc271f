"""Sets of line numbers kept as sorted ranges: a few numbers for millions of lines.

A run's done lines are nearly always one range from line 1 plus a few lines above it
(the batches in flight when the driver stopped), so a resume sends the driver a few
ranges instead of every number, and a writer call records its own lines in one.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable


class LineSet:
    """An immutable set of line numbers, as inclusive ``[first, last]`` ranges."""

    def __init__(self, ranges: Iterable[Iterable[int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in ranges:
            self._firsts.append(first)
            self._lasts.append(last)

    @classmethod
    def of(cls, numbers: Iterable[int]) -> LineSet:
        """The set of ``numbers``, given in ascending order (repeats allowed); streams them."""
        lines = cls()
        for number in numbers:
            if lines._lasts and number <= lines._lasts[-1] + 1:
                if number < lines._firsts[-1]:
                    raise ValueError("line numbers must come in ascending order")
                lines._lasts[-1] = max(lines._lasts[-1], number)
            else:
                lines._firsts.append(number)
                lines._lasts.append(number)
        return lines

    @property
    def ranges(self) -> list[list[int]]:
        """``[[first, last], ...]``, ascending: how a set is stored in MongoDB."""
        return [[first, last] for first, last in zip(self._firsts, self._lasts, strict=True)]

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        at = bisect_right(self._firsts, number) - 1
        return at >= 0 and number <= self._lasts[at]

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in zip(self._firsts, self._lasts, strict=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LineSet) and self.ranges == other.ranges

    def __repr__(self) -> str:
        return f"LineSet({self.ranges})"
