"""How lines flow through the pipeline: groups, chunks, and the driver's backstop."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import pytest
import ray
from pymongo.database import Database

from itm.config import Settings
from itm.job import pipeline
from itm.job.lines import read_lines
from itm.job.pipeline import Downloaded, _chunks, groups, run_pipeline
from itm.job.writer import WriterActor
from tests.support.jobs import write_urls
from tests.support.servers import FaultServer


def finished(number: int, size: int = 10) -> tuple[tuple[int, str], Downloaded]:
    return (number, f"u{number}"), Downloaded(np.zeros(size, dtype=np.uint8))


def test_a_group_goes_on_when_full_or_when_its_first_line_waited() -> None:
    done: queue.SimpleQueue = queue.SimpleQueue()
    for number in range(1, 6):
        done.put(finished(number))
    cut = groups(done, total=7, size=3, wait=0.05)
    assert [line for (line, _), _ in next(cut)] == [1, 2, 3]  # full
    assert [line for (line, _), _ in next(cut)] == [4, 5]  # waited: lines 6 and 7 are slow
    threading.Timer(0.2, lambda: [done.put(finished(n)) for n in (6, 7)]).start()
    assert [line for (line, _), _ in next(cut)] == [6, 7]
    assert next(cut, None) is None


def test_a_group_of_large_images_goes_on_before_it_is_full() -> None:
    done: queue.SimpleQueue = queue.SimpleQueue()
    for number in range(1, 5):
        done.put(finished(number, size=600))
    sizes = [len(group) for group in groups(done, total=4, size=10, max_bytes=1000, wait=1)]
    assert sizes == [2, 2]


@pytest.mark.parametrize(
    ("lines", "size", "parts", "expected"),
    [
        (650, 1024, 1, [650]),
        (300, 1024, 3, [100, 100, 100]),
        (3000, 1024, 1, [1024, 1024, 952]),
        (2, 64, 3, [1, 1]),
        (0, 64, 2, []),
    ],
)
def test_chunks_cover_the_input_once(
    lines: int, size: int, parts: int, expected: list[int]
) -> None:
    chunks = list(_chunks(((n, "u") for n in range(1, lines + 1)), size, parts))
    assert [len(chunk) for chunk in chunks] == expected
    assert [n for chunk in chunks for n, _ in chunk] == list(range(1, lines + 1))


def test_a_download_task_that_does_not_come_back_is_cancelled_and_its_lines_time_out(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server holds /stall for 10 s, past the backstop (deadline - 3 s of "grace"):
    # to the driver, that task is stuck, as if a thread hung in C code.
    monkeypatch.setattr(pipeline, "BACKSTOP_GRACE", -3.0)
    ray.get(pipeline.md5_group.remote([]))  # a worker is up: the clock is the task's own
    with FaultServer() as server:
        urls = write_urls(
            tmp_path, [f"{server.url}/ok.jpg", f"{server.url}/stall", f"{server.url}/status/404"]
        )
        writer = WriterActor.remote(mongo_uri, db.name)
        ray.get(writer.start_run.remote("stuck", str(urls), False))
        total = run_pipeline(
            read_lines(urls, set()),
            [writer],
            "stuck",
            Settings(deadline=8.0, read_timeout=30.0, allow_private_addresses=True),
        )  # a loopback server
    assert (total.success, total.error) == (1, 2)
    events = {event["line"]: event for event in db.events.find({"run_id": "stuck"})}
    assert events[2]["reason"] == "timeout"
    assert "cancelled" in events[2]["detail"]  # by the backstop, not after the server's stall
    assert events[3]["reason"] == "http_404"
