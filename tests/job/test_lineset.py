"""LineSet, the ranges of line numbers a run has done: a pure data type."""

from __future__ import annotations

import pickle

import pytest

from itm.job.lineset import LineSet


def test_a_lineset_holds_exactly_its_numbers_as_ranges() -> None:
    numbers = [1, 2, 3, 3, 4, 7, 9, 10]
    lines = LineSet.of(numbers)
    assert lines.ranges == [[1, 4], [7, 7], [9, 10]]
    assert len(lines) == 7
    assert [n for n in range(0, 13) if n in lines] == sorted(set(numbers))
    assert "3" not in lines and None not in lines
    assert LineSet(lines.ranges) == lines
    assert pickle.loads(pickle.dumps(lines)) == lines
    assert len(LineSet()) == 0 and 1 not in LineSet()


def test_a_million_contiguous_lines_are_one_range() -> None:
    lines = LineSet.of(iter(range(1, 1_000_001)))
    assert lines.ranges == [[1, 1_000_000]]
    assert 1_000_000 in lines and 1_000_001 not in lines


def test_a_lineset_wants_ascending_numbers() -> None:
    with pytest.raises(ValueError):
        LineSet.of([5, 6, 2])
