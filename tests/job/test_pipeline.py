"""The pipeline: the job end to end (real local HTTP servers, real Ray, real
MongoDB-wire server), and how lines flow through it: groups, chunks, and the
driver's backstop."""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image
from pymongo import MongoClient
from pymongo.database import Database

from itm.config import Settings
from itm.job import pipeline, tasks
from itm.job.lines import read_lines
from itm.job.pipeline import _chunks, run_pipeline
from itm.job.tasks import Downloaded, groups
from itm.job.writer import WriterActor
from tests.support.jobs import PicsumRun, run_itm, write_urls
from tests.support.servers import FaultServer


def reference_gray(jpeg: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int64)
    return (rgb.sum(axis=2) // 3).astype(np.uint8)


def expected_outcome(line: str) -> str | None:
    """None for a success, else the reason picsum gives."""
    parts = line.rsplit("/", 2)
    if parts[1] == "error":
        return "http_404"
    return "http_400" if max(int(parts[1]), int(parts[2])) > 5000 else None


def test_every_line_has_exactly_its_outcome(picsum_run: PicsumRun) -> None:
    events = list(picsum_run.db.events.find({"run_id": picsum_run.run_id}).sort("line"))
    assert [event["line"] for event in events] == list(range(1, 651))
    for event, line in zip(events, picsum_run.lines, strict=True):
        assert event["url"] == line
        assert event["finished_at"].tzinfo is not None
        expected = expected_outcome(line)
        if expected is None:
            assert (event["status"], event["reason"]) == ("success", None)
            assert event["md5"] in picsum_run.server.served
        else:
            assert (event["status"], event["reason"]) == ("error", expected), event
            assert event["detail"].startswith(f"HTTP {expected[5:]}")


def test_one_document_per_distinct_image(picsum_run: PicsumRun) -> None:
    db, served = picsum_run.db, picsum_run.server.served
    successes = list(db.events.find({"run_id": picsum_run.run_id, "status": "success"}))
    distinct = {event["md5"] for event in successes}
    images = list(db.images.find())
    assert len(images) == len(distinct) == db.images.count_documents({})
    assert {image["md5"] for image in images} == distinct
    assert sum(event["duplicate"] for event in successes) == len(successes) - len(distinct)
    for image in images:
        body = served[image["md5"]]
        assert hashlib.md5(body).hexdigest() == image["md5"]
        gray = Image.open(io.BytesIO(image["gray"]))
        assert (gray.mode, gray.width, gray.height) == ("L", image["width"], image["height"])
        assert np.array_equal(np.asarray(gray), reference_gray(body))
        assert image["inserted_at"].tzinfo is not None
        first = db.events.find_one({"run_id": image["run_id"], "line": image["line"]})
        assert (first["md5"], first["duplicate"], first["url"]) == (
            image["md5"],
            False,
            image["source_url"],
        )


def test_counters_sum_to_the_outcomes(picsum_run: PicsumRun) -> None:
    minutes = list(picsum_run.db.monitoring.find())
    assert sum(m["success"] for m in minutes) == 550
    assert sum(m["error"] for m in minutes) == 100
    assert all(m["minute"].second == 0 and m["minute"].microsecond == 0 for m in minutes)
    assert sum(sum(m["reasons"].values()) for m in minutes) == 100
    run = picsum_run.db.runs.find_one({"_id": picsum_run.run_id})
    assert run["finished_at"] >= run["started_at"]
    assert run["totals"]["lines"] == 650
    assert run["totals"]["reasons"] == {"http_404": 50, "http_400": 50}


@pytest.fixture
def run_copy(
    picsum_run: PicsumRun, mongo_client: MongoClient, db_name: str, tmp_path: Path
) -> tuple[Database, Path]:
    """A copy of the shared run's database, to change; and the run's input file."""
    for name in picsum_run.db.list_collection_names():
        docs = list(picsum_run.db[name].find())
        if docs:
            mongo_client[db_name][name].insert_many(docs)
    return mongo_client[db_name], write_urls(tmp_path, picsum_run.lines)


def test_rerun_stores_only_new_images_and_counts_its_own_lines(
    picsum_run: PicsumRun,
    run_copy: tuple[Database, Path],
    mongo_uri: str,
) -> None:
    db, urls = run_copy
    before = {image["md5"]: image["inserted_at"] for image in db.images.find()}
    assert run_itm(mongo_uri, db.name, urls) == 0
    (rerun,) = db.runs.find({"_id": {"$ne": picsum_run.run_id}})
    events = list(db.events.find({"run_id": rerun["_id"]}))
    assert len(events) == 650
    md5s = {event["md5"] for event in events if event["status"] == "success"}
    after = {image["md5"]: image["inserted_at"] for image in db.images.find()}
    assert set(after) == set(before) | md5s
    assert all(after[md5] == at for md5, at in before.items())  # never overwritten
    successes = [event for event in events if event["status"] == "success"]
    assert all(event["duplicate"] for event in successes if event["md5"] in before)
    firsts = sorted(event["md5"] for event in successes if not event["duplicate"])
    assert firsts == sorted(set(after) - set(before))  # each new image: one first line
    minutes = list(db.monitoring.find())
    assert sum(m["success"] + m["error"] for m in minutes) == 1300


def test_resume_of_a_finished_run_changes_nothing(
    picsum_run: PicsumRun,
    run_copy: tuple[Database, Path],
    mongo_uri: str,
) -> None:
    db, urls = run_copy
    snapshot = {
        name: sorted(map(str, db[name].find({}, {"_id": 0, "finished_at": 0})))
        for name in ("images", "events", "monitoring")
    }
    assert run_itm(mongo_uri, db.name, urls, "--resume", picsum_run.run_id) == 0
    for name, docs in snapshot.items():
        assert sorted(map(str, db[name].find({}, {"_id": 0, "finished_at": 0}))) == docs


def test_nasty_lines_each_get_one_clear_error(
    mongo_client: MongoClient,
    mongo_uri: str,
    ray_local: None,
    tmp_path: Path,
    db_name: str,
) -> None:
    with FaultServer(big=2_000_000) as server:
        cases = {
            f"{server.url}/ok.jpg": None,
            f"{server.url}/status/404": "http_404",
            f"{server.url}/status/500": "http_500",
            f"{server.url}/html": "not_an_image",
            f"{server.url}/svg": "not_an_image",
            f"{server.url}/truncated.jpg": "not_an_image",
            f"{server.url}/bomb.png": "decompression_bomb",
            f"{server.url}/big": "too_large",
            f"{server.url}/big-no-length": "too_large",
            f"{server.url}/loop": "too_many_redirects",
            f"{server.url}/to-file": "invalid_url",
            "file:///etc/passwd": "invalid_url",
            "not a url at all": "invalid_url",
            "": "invalid_url",
        }
        urls = tmp_path / "urls.txt"
        raw = [line.encode() for line in cases]
        raw[0] += b"\r"  # a CRLF line ending is still a good line
        # A byte that is not UTF-8, or a stray CR, must cost its own line only.
        raw += [b"http://x/\xff", b"http://127.0.0.1/a\rb.jpg"]
        urls.write_bytes(b"\n".join(raw) + b"\n")
        code = run_itm(
            mongo_uri,
            db_name,
            urls,
            "--max-bytes",
            "1000000",
            "--read-timeout",
            "1",
            "--deadline",
            "3",
            "--batch-size",
            "4",
        )
    assert code == 0
    events = list(mongo_client[db_name].events.find().sort("line"))
    assert [event["reason"] for event in events] == [*cases.values(), "invalid_url", "invalid_url"]
    assert all(event["detail"] for event in events if event["status"] == "error")
    assert Counter(event["status"] for event in events) == {"success": 1, "error": 15}


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
    ray.get(tasks.md5_group.remote([]))  # a worker is up: the clock is the task's own
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
