"""Several writers on one database: counters equal events whatever the interleaving.

Jobs run at once through a real Ray against a local picsum; a resume races the live
writer of its run; writers race to create new minutes; a tally is counted only once
complete. Storage errors end as outcomes. The "minute" is shortened through the
writer's ``minute_seconds``, so that a few seconds of work cross many of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray
from pymongo import InsertOne, MongoClient
from pymongo.database import Database
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from itm import store
from itm.config import Settings
from itm.job.imaging import GrayImage
from itm.job.lines import read_lines
from itm.job.pipeline import run_pipeline
from itm.job.urls import MAX_URL_LENGTH
from itm.job.writer import MongoWriter, WriterActor, _bulk, utcnow
from itm.outcomes import Counts, Failure
from tests.support.consistency import assert_consistent
from tests.support.jobs import run_itm, write_urls
from tests.support.servers import PicsumServer
from tests.support.waiting import wait_until

MINUTE = 1.0  # seconds
# The local picsum is on loopback: opt in to private addresses, explicitly.
SETTINGS = Settings(batch_size=32, concurrency=64, allow_private_addresses=True)


def wait_for_events(db: Database, at_least: dict[str, int], timeout: float = 120.0) -> None:
    """Until each run has at least so many events (lines that need no server)."""
    wait_until(
        lambda: all(db.events.count_documents({"run_id": run}) >= n for run, n in at_least.items()),
        f"at least {at_least} events",
        timeout,
    )


def mixed_lines(base: str, count: int, seed: int) -> list[str]:
    """Small picsum images (a few photos and sizes: jobs race on the same md5s) and errors,
    most of them cheap (no download at all for the invalid URLs)."""
    rng = random.Random(seed)
    kinds = (
        [f"{base}/{{w}}/{{h}}"] * 3 + [f"{base}/error/100", f"{base}/6000/10"] + ["not a url"] * 4
    )
    return [
        rng.choice(kinds).format(w=rng.choice((8, 12, 16)), h=rng.choice((8, 12)))
        for _ in range(count)
    ]


def job(
    mongo_uri: str,
    db: str,
    run_id: str,
    urls: Path,
    resume: bool = False,
    started: Callable[[], None] = lambda: None,
    writers: int = 1,
) -> Counts:
    """What ``run_job`` does, with a short minute; ``started`` is called once the run's
    done lines are known."""
    running = [WriterActor.remote(mongo_uri, db, 60.0, MINUTE) for _ in range(writers)]
    done = ray.get(running[0].start_run.remote(run_id, str(urls), resume))
    started()
    counts = run_pipeline(read_lines(urls, done), running, run_id, SETTINGS)
    ray.get(running[0].finish_run.remote(run_id))
    return counts


@pytest.mark.parametrize(("jobs", "writers"), [(2, 1), (3, 1), (2, 3)])
def test_concurrent_jobs_on_one_database_keep_counters_exact(
    jobs: int,
    writers: int,
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
) -> None:
    lines = 2000
    with PicsumServer(photos=6) as server, ThreadPoolExecutor(jobs) as pool:
        inputs = []
        for n in range(jobs):
            (tmp_path / str(n)).mkdir()
            inputs.append(write_urls(tmp_path / str(n), mixed_lines(server.url, lines, n)))
        # Each job writes the invalid URLs it meets first, then waits at the server until
        # every job has written some: the jobs run at once however fast the machine.
        server.open.clear()
        futures = [
            pool.submit(job, mongo_uri, db.name, f"job{n}", urls, writers=writers)
            for n, urls in enumerate(inputs)
        ]
        wait_for_events(db, {f"job{n}": 1 for n in range(jobs)})
        opened = utcnow()
        server.open.set()
        assert all(future.result().lines == lines for future in futures)
    assert_consistent(db, {f"job{n}": lines for n in range(jobs)})
    assert db.monitoring.count_documents({}) >= 2
    for n in range(jobs):  # every job wrote lines before and after that moment
        times = [event["finished_at"] for event in db.events.find({"run_id": f"job{n}"})]
        assert min(times) < opened < max(times)


def test_a_resume_racing_the_live_writer_of_its_run(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
) -> None:
    lines = 1500
    with PicsumServer(photos=6, latency=0.005) as server, ThreadPoolExecutor(1) as pool:
        urls = write_urls(tmp_path, mixed_lines(server.url, lines, 7))
        # The live job writes the invalid URLs it meets first (71 before its 64 download
        # threads all wait), then stalls at the server until the resume knows its done
        # lines: lines are left for both to race on, however fast the machine.
        server.open.clear()
        live = pool.submit(job, mongo_uri, db.name, "race", urls)
        wait_for_events(db, {"race": 30})
        resumed = job(mongo_uri, db.name, "race", urls, resume=True, started=server.open.set)
        assert live.result().lines == lines
    assert 0 < resumed.lines < lines
    assert_consistent(db, {"race": lines}, twice=True)


def sample(numbers: Sequence[int]) -> tuple[list[tuple[int, str]], list[None], list[Failure]]:
    lines = [(n, f"http://example.test/{n}") for n in numbers]
    return lines, [None] * len(lines), [Failure(f"http_{400 + n % 3}", "no") for n in numbers]


class Interleave(CommandListener):
    """pymongo's command monitoring on one writer's client: right after its first update
    of ``monitoring`` that matched nothing, runs ``between`` (another writer) before the
    writer goes on; records the replies of its later updates of ``monitoring``."""

    def __init__(self, between: Callable[[], None]) -> None:
        self.between: Callable[[], None] | None = between
        self.sent: dict[int, dict] = {}
        self.replies: list[tuple[dict, dict]] = []  # (update statement, reply) once interleaved

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "update" and event.command["update"] == store.MONITORING:
            self.sent[event.request_id] = event.command["updates"][0]

    def succeeded(self, event: CommandSucceededEvent) -> None:
        statement = self.sent.pop(event.request_id, None)
        if statement is None:
            return
        if self.between is not None and event.reply["n"] == 0:
            between, self.between = self.between, None
            between()
        elif self.between is None:
            self.replies.append((statement, event.reply))

    def failed(self, event: CommandFailedEvent) -> None:
        self.sent.pop(event.request_id, None)


def test_writers_racing_to_create_a_new_minute_lose_nothing(
    mongo_uri: str,
    db: Database,
) -> None:
    """The race forced, not hoped for: writer A finds no minute; writer B then creates it
    and adds its lines; A goes on, meets B's minute, and adds its own lines to it.

    SecantusDB runs one command at a time, so threads racing on a fresh minute never
    collide there; the interleaving is forced between A's commands instead. A minute
    of 10^10 s holds the whole test whenever it runs.
    """
    minute = 1e10
    a, b = (MongoWriter(mongo_uri, db.name, minute_seconds=minute) for _ in range(2))
    interleave = Interleave(lambda: b.write("b", *sample(range(1, 4))))
    with MongoClient(mongo_uri, tz_aware=True, event_listeners=[interleave]) as client:
        a.db = client[db.name]
        a.write("a", *sample(range(1, 4)))
    assert interleave.between is None  # A did find no minute, and B ran then
    (create, created), (add, added) = interleave.replies
    assert create["upsert"] and "tallies" not in create["q"]  # A creates the minute...
    assert created["n"] == 1 and "upserted" not in created  # ...finds B's instead...
    assert not add.get("upsert") and added["nModified"] == 1  # ...and adds its lines to it
    (doc,) = db.monitoring.find()
    assert len(doc["tallies"]) == 2
    assert_consistent(db, {"a": 3, "b": 3})


def test_a_tally_is_counted_only_once_complete(mongo_uri: str, db: Database) -> None:
    first = MongoWriter(mongo_uri, db.name)
    first.start_run("r1", "urls.txt", resume=False)
    first._add = lambda run_id, tally, minute, events: None  # it dies before counting...
    first.write("r1", *sample(range(1, 5)))
    # ...and, seen from another writer, lines 3 and 4 of its insert have not landed yet.
    late = list(db.events.find({"line": {"$gte": 3}}))
    db.events.delete_many({"line": {"$gte": 3}})
    other = MongoWriter(mongo_uri, db.name)
    assert other.write("r1", *sample(range(1, 3))).lines == 2  # meets lines 1-2 of the tally
    assert db.monitoring.count_documents({}) == 0  # incomplete: left to its writer
    db.events.insert_many(late)  # the insert ends; its writer is gone: a resume counts it
    assert len(other.start_run("r1", "urls.txt", resume=True)) == 4
    assert_consistent(db, {"r1": 4})
    assert len(other.start_run("r1", "urls.txt", resume=True)) == 4  # and only once
    assert_consistent(db, {"r1": 4})


def test_a_document_too_large_is_a_storage_error_of_its_lines_only(
    mongo_uri: str,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store, "MAX_INLINE_PNG", 64 * 1024 * 1024)  # no GridFS way out
    writer = MongoWriter(mongo_uri, db.name)
    writer.start_run("r1", "urls.txt", resume=False)
    huge = GrayImage(b"\x89PNG" + bytes(17 * 1024 * 1024), 4000, 4000, "L")
    small = GrayImage(b"\x89PNG small", 1, 1, "L")
    long_url = "http://example.test/" + "a" * (17 * 1024 * 1024)
    lines = [(1, "http://example.test/huge"), (2, long_url), (3, long_url)]
    counts = writer.write(
        "r1",
        lines,
        ["a" * 32, "b" * 32, None],
        [huge, small, Failure("invalid_url", "URL longer than 2048 characters")],
    )
    assert (counts.success, counts.error) == (1, 2)
    assert counts.reasons == {"storage_error": 1, "invalid_url": 1}
    events = {event["line"]: event for event in db.events.find()}
    assert events[1]["reason"] == "storage_error" and "not stored" in events[1]["detail"]
    assert events[2]["status"] == "success"
    assert len(events[2]["url"]) == len(events[3]["url"]) == MAX_URL_LENGTH
    (image,) = db.images.find()
    assert image["md5"] == "b" * 32 and len(image["source_url"]) == MAX_URL_LENGTH
    assert len(writer.start_run("r1", "urls.txt", resume=True)) == 3  # a resume skips them
    assert_consistent(db, {"r1": 3})


def test_resume_refuses_a_changed_input_unless_forced(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = write_urls(tmp_path, [f"not a url {n}" for n in range(50)])
    assert run_itm(mongo_uri, db.name, urls) == 0
    (run,) = db.runs.find()
    urls.write_text("not a url\n" * 60)
    assert run_itm(mongo_uri, db.name, urls, "--resume", run["_id"]) == 1
    assert "--force-resume" in capsys.readouterr().err
    assert run_itm(mongo_uri, db.name, urls, "--resume", run["_id"], "--force-resume") == 0
    assert db.events.count_documents({}) == 60


def test_what_the_database_refuses_is_reported_per_operation(db: Database) -> None:
    # The server refuses the 17 MiB document; pymongo itself will not send the 49 MiB one
    # (over the largest message), which fails the whole bulk: retried one by one.
    ops = [
        InsertOne({"n": 1}),
        InsertOne({"n": 2, "blob": bytes(17 * 1024 * 1024)}),
        InsertOne({"n": 3}),
    ]
    outcome = _bulk(db.scratch, ops)
    assert list(outcome.refused) == [1] and "too large" in outcome.refused[1]
    ops = [
        InsertOne({"n": 4}),
        InsertOne({"n": 5, "blob": bytes(49 * 1024 * 1024)}),
        InsertOne({"n": 6}),
    ]
    outcome = _bulk(db.scratch, ops)
    assert list(outcome.refused) == [1] and "DocumentTooLarge" in outcome.refused[1]
    assert sorted(doc["n"] for doc in db.scratch.find()) == [1, 3, 4, 6]


def test_a_run_is_read_back_whole_across_gaps_in_its_lines(
    mongo_uri: str,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = MongoWriter(mongo_uri, db.name)
    writer.start_run("r1", "urls.txt", resume=False)
    lines = [1, 2, 3, 4, 9, 30, 31]
    writer.write("r1", *sample(lines))
    monkeypatch.setattr(store, "WINDOW", 2)  # windows of 2 lines: gaps of whole windows
    assert [event["line"] for event in store.events_by_line(db, "r1", {})] == lines
    assert writer.start_run("r1", "urls.txt", resume=True).ranges == [[1, 4], [9, 9], [30, 31]]
    assert writer.finish_run("r1").lines == len(lines)
