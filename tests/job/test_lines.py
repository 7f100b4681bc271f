"""Reading the input: numbered lines with a length limit, memory flat on any file."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from itm.job.lines import MAX_LINE, count_lines, read_lines
from itm.job.urls import check_url
from itm.outcomes import Failure


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "urls.txt"
    path.write_bytes(data)
    return path


def test_lines_are_numbered_and_cleaned(tmp_path: Path) -> None:
    urls = write(tmp_path, b"http://a/1\r\n\nhttp://a/\xff\nhttp://u:pw@a/4\nhttp://a/5")
    assert list(read_lines(urls, done=set())) == [
        (1, "http://a/1"),
        (2, ""),
        (3, "http://a/\ufffd"),
        (4, "http://u:pw@a/4"),  # as written: refused by the URL check, stored redacted
        (5, "http://a/5"),
    ]
    assert [number for number, _ in read_lines(urls, done={1, 2, 4})] == [3, 5]
    assert count_lines(urls) == 5


@pytest.mark.parametrize("length", [MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 17 * 2**20])
def test_a_long_line_costs_its_own_line_only(tmp_path: Path, length: int) -> None:
    long = "http://x/" + "é" * (length - 9)
    urls = write(tmp_path, f"http://a/1\n{long}\nhttp://a/3\n".encode())
    lines = list(read_lines(urls, done=set()))
    assert [number for number, _ in lines] == [1, 2, 3] and lines[2][1] == "http://a/3"
    assert count_lines(urls) == 3
    text = lines[1][1]
    if length <= MAX_LINE:
        assert text == long
    else:
        assert text == long[: MAX_LINE + 1]
        with pytest.raises(Failure) as caught:
            check_url(text)
        assert caught.value.reason == "invalid_url" and "line too long" in caught.value.detail


def test_a_file_without_newline_is_never_read_whole(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    with urls.open("wb") as out:
        out.write(b"http://x/")
        for _ in range(200):
            out.write(b"y" * 2**20)  # 200 MB, one line
    tracemalloc.start()
    try:
        assert count_lines(urls) == 1
        ((number, text),) = read_lines(urls, done=set())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert number == 1 and len(text) == MAX_LINE + 1
    assert peak < 8 * 2**20  # a few buffers, never the line
