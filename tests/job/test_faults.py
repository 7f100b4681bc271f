"""Faults: replayed writer calls, a killed writer, MongoDB away, a killed driver, bad starts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray
from pymongo import MongoClient, uri_parser
from pymongo.database import Database
from ray.actor import ActorHandle

from itm import store
from itm.api.queries import image_png
from itm.config import Settings, free_port
from itm.embedded import EmbeddedMongo
from itm.job.imaging import grayscale_png, md5_hex
from itm.job.lines import read_lines
from itm.job.pipeline import run_pipeline
from itm.job.writer import MongoWriter, start_writers
from itm.outcomes import Counts, Failure
from tests.support.jobs import ItmProcess, job_flags, run_itm, run_itm_process, write_urls
from tests.support.servers import PicsumServer, jpeg, picsum_lines
from tests.support.waiting import wait_until


def assert_exact(db: Database, run_id: str, lines: int) -> None:
    """Each line once in events, counted once in monitoring, each image once."""
    events = list(db.events.find({"run_id": run_id}))
    assert sorted(event["line"] for event in events) == list(range(1, lines + 1))
    minutes = list(db.monitoring.find())
    assert sum(m["success"] for m in minutes) == sum(e["status"] == "success" for e in events)
    assert sum(m["error"] for m in minutes) == sum(e["status"] == "error" for e in events)
    by_reason = sum((Counter(m.get("reasons", {})) for m in minutes), Counter())
    assert by_reason == Counter(e["reason"] for e in events if e["status"] == "error")
    md5s = {event["md5"] for event in events if event["status"] == "success"}
    assert sorted(image["md5"] for image in db.images.find()) == sorted(md5s)
    assert sum(m["images"] for m in minutes) == len(md5s)


def sample_batch() -> tuple[list[tuple[int, str]], list, list]:
    images = [jpeg(seed=seed) for seed in (1, 2, 1)]  # lines 1 and 3: the same image
    lines = [(n, f"http://example.test/{n}") for n in (1, 2, 3, 4)]
    md5s = [md5_hex(data) for data in images] + [None]
    grays = [grayscale_png(data, 10**8, 1) for data in images] + [Failure("http_404", "HTTP 404")]
    return lines, md5s, grays


def test_a_replayed_batch_changes_nothing(mongo_uri: str, db: Database, ray_local: None) -> None:
    writer = MongoWriter(mongo_uri, db.name)
    lines, md5s, grays = sample_batch()
    writer.start_run("r1", "urls.txt", resume=False)
    first = writer.write("r1", lines, md5s, grays)
    assert (first.success, first.error, first.duplicates) == (3, 1, 1)
    again = writer.write("r1", lines, md5s, grays)
    assert again == first
    assert_exact(db, "r1", 4)
    assert db.images.count_documents({}) == 2


def test_a_batch_cut_short_is_counted_once_on_replay(
    mongo_uri: str, db: Database, ray_local: None
) -> None:
    writer = MongoWriter(mongo_uri, db.name)
    lines, md5s, grays = sample_batch()
    # The first attempt stored images and events, then died before counting them.
    writer._add = lambda run_id, tally, minute, events: None
    writer.write("r1", lines, md5s, grays)
    assert db.monitoring.count_documents({}) == 0
    del writer._add
    replayed = writer.write("r1", lines, md5s, grays)  # the replay finds and counts them
    assert (replayed.success, replayed.error, replayed.duplicates) == (3, 1, 1)
    assert_exact(db, "r1", 4)
    writer.write("r1", lines, md5s, grays)  # ...and once only
    assert_exact(db, "r1", 4)


def pipeline_run(
    mongo_uri: str,
    db: Database,
    lines: list[str],
    tmp_path: Path,
    on_batch: Callable[[list[ActorHandle]], None],
    latency: float,
    writers: int = 1,
) -> Counts:
    """``lines`` (picsum paths) through ``run_pipeline`` with fresh writers, as run "faults"."""
    started = start_writers(mongo_uri, db.name, 60.0, writers)
    ray.get(started[0].start_run.remote("faults", "urls.txt", False))
    with PicsumServer(latency=latency) as server:
        urls = write_urls(tmp_path, picsum_lines(server.url, lines))
        return run_pipeline(
            read_lines(urls, set()),
            started,
            "faults",
            Settings(batch_size=8, concurrency=32, allow_private_addresses=True),
            lambda _: on_batch(started),
        )


@pytest.mark.parametrize("writers", [1, 3])
def test_a_killed_writer_is_restarted_and_nothing_is_lost_or_doubled(
    writers: int,
    mongo_uri: str,
    db: Database,
    ray_local: None,
    canonical_lines: list[str],
    tmp_path: Path,
) -> None:
    batches = 0

    def kill_now_and_then(started: list[ActorHandle]) -> None:
        nonlocal batches
        batches += 1
        if batches in (3, 20):  # with later batches queued or running in the writer
            ray.kill(started[batches % writers], no_restart=False)

    total = pipeline_run(
        mongo_uri, db, canonical_lines[:300], tmp_path, kill_now_and_then, 0.01, writers
    )
    assert total.lines == 300
    assert_exact(db, "faults", 300)


def kill_task_workers() -> int:
    """SIGKILL this Ray's worker processes that are running a pipeline task now."""
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    killed = 0
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == raylet and title.startswith(("ray::download_chunk", "ray::gray_group")):
            os.kill(int(proc.name), signal.SIGKILL)
            killed += 1
    return killed


def test_killed_task_workers_are_retried_by_ray(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    canonical_lines: list[str],
    tmp_path: Path,
) -> None:
    killed = []

    def kill_busy_workers(writers: list[ActorHandle]) -> None:
        if len(killed) < 3:
            killed.append(kill_task_workers())

    total = pipeline_run(mongo_uri, db, canonical_lines[:200], tmp_path, kill_busy_workers, 0.05)
    assert sum(killed) > 0
    assert total.lines == 200
    assert "worker_failed" not in total.reasons
    assert_exact(db, "faults", 200)


def test_mongodb_briefly_down_loses_nothing(ray_local: None, tmp_path: Path) -> None:
    server = EmbeddedMongo(tmp_path / "mongo")  # its own server: this test stops it
    uri = server.start()
    try:
        writer = MongoWriter(uri, "down", retry_seconds=60)
        lines, md5s, grays = sample_batch()
        server.stop()
        with ThreadPoolExecutor(1) as pool:  # the writer waits in a thread...
            started = time.monotonic()
            written = pool.submit(writer.write, "r1", lines, md5s, grays)
            time.sleep(1.5)
            assert not written.done()
            server.start()  # ...while the server comes back (from this thread, its parent)
            counts = written.result(timeout=60)
        assert time.monotonic() - started >= 1.5
        assert (counts.success, counts.error) == (3, 1)
        assert_exact(MongoClient(uri, tz_aware=True)["down"], "r1", 4)
    finally:
        server.stop()


def test_a_killed_driver_resumes_where_it_stopped(
    mongo_uri: str,
    db: Database,
    canonical_lines: list[str],
    tmp_path: Path,
    ray_local: None,
) -> None:
    with PicsumServer(latency=0.05) as server:
        urls = write_urls(tmp_path, picsum_lines(server.url, canonical_lines))
        driver = ItmProcess(
            *job_flags(mongo_uri, db.name, urls, "--concurrency", "8", "--batch-size", "4")
        )

        def hundred_done() -> bool:
            assert driver.process.poll() is None, "the job ended before it could be killed"
            return db.events.count_documents({}) >= 100

        try:
            wait_until(hundred_done, "100 lines done")
        finally:
            driver.signal(signal.SIGKILL, pause=0)  # the driver and its local Ray
            driver.wait()
        (run,) = db.runs.find()
        done = db.events.count_documents({})
        assert 100 <= done < 650
        assert run["finished_at"] is None
        assert run_itm(mongo_uri, db.name, urls, "--resume", run["_id"]) == 0
    assert_exact(db, run["_id"], 650)
    assert db.runs.find_one()["totals"]["lines"] == 650


def test_exit_codes_say_why_the_job_could_not_run(
    mongo_uri: str,
    db: Database,
    tmp_path: Path,
    ray_local: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = write_urls(tmp_path, ["http://127.0.0.1:1/a.jpg"])
    assert run_itm(mongo_uri, db.name, tmp_path / "missing.txt") == 1
    assert "input file not found" in capsys.readouterr().err
    closed = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    assert run_itm(closed, db.name, urls) == 1
    assert "MongoDB at" in capsys.readouterr().err
    assert run_itm(mongo_uri, db.name, urls, "--resume", "no-such-run") == 1
    assert "no run 'no-such-run'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        run_itm(mongo_uri, db.name, urls, "--batch-size", "0")
    assert usage.value.code == 2
    assert run_itm(mongo_uri, db.name, urls) == 0  # a failed URL is data, not a crash


class LateRelay(socketserver.ThreadingTCPServer):
    """A TCP relay to MongoDB that forwards nothing for its first ``late`` seconds:
    a network whose first connections are slow (as podman's DNS while a container
    joins), then a MongoDB that answers."""

    daemon_threads = True

    def __init__(self, mongo_uri: str, late: float) -> None:
        self.target = uri_parser.parse_uri(mongo_uri)["nodelist"][0]
        self.opens_at = time.monotonic() + late
        super().__init__(("127.0.0.1", 0), _Relay)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.server_address[1]}/?directConnection=true"

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()  # stops serve_forever before the socket closes
        super().__exit__(*exc_info)


class _Relay(socketserver.BaseRequestHandler):
    server: LateRelay

    def handle(self) -> None:
        time.sleep(max(0.0, self.server.opens_at - time.monotonic()))
        with socket.create_connection(self.server.target) as upstream:
            back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
            back.start()
            _pipe(self.request, upstream)
            back.join()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_mongo_timeout_is_how_long_the_job_waits_for_a_first_answer(
    mongo_uri: str,
    db: Database,
    tmp_path: Path,
    ray_local: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = write_urls(tmp_path, ["http://127.0.0.1:1/a.jpg"])
    with LateRelay(mongo_uri, late=3.0) as relay:
        assert run_itm(relay.uri, db.name, urls, "--mongo-timeout", "0.5") == 1
        # pymongo says "No servers found yet" or "timed out", as its monitor's first
        # check ended or not within the 0.5 s: either way, the job gave up on MongoDB.
        assert "is unreachable: " in capsys.readouterr().err
    with LateRelay(mongo_uri, late=3.0) as relay:
        assert run_itm(relay.uri, db.name, urls, "--mongo-timeout", "30") == 0
    assert "MongoDB at" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://user:p4ss/w0rd@127.0.0.1:1/?tlsCertificateKeyFilePassword=k3ysecret",
        "mongodb://AKIA:p4ss@127.0.0.1:99999/?authMechanism=MONGODB-AWS"
        "&authMechanismProperties=AWS_SESSION_TOKEN:t0kensecret",
        "https://user:p4ss@mongo.example/",
    ],
)
def test_an_invalid_mongo_uri_is_a_clear_error_without_its_secrets(
    uri: str, tmp_path: Path, ray_local: None, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = write_urls(tmp_path, ["http://127.0.0.1:1/a.jpg"])
    assert run_itm(uri, "itm", urls) == 1
    out, err = capsys.readouterr()
    assert err.startswith("itm: --mongo-uri ") and "not a valid MongoDB URI" in err
    for secret in ("p4ss", "w0rd", "k3ysecret", "t0kensecret"):
        assert secret not in out + err


def test_an_unreachable_ray_fails_fast(mongo_uri: str, tmp_path: Path) -> None:
    urls = write_urls(tmp_path, ["http://127.0.0.1:1/a.jpg"])
    started = time.monotonic()
    unreachable = f"127.0.0.1:{free_port()}"
    result = run_itm_process(mongo_uri, "itm", urls, "--ray-address", unreachable, timeout=120)
    assert result.returncode == 1
    assert "Ray at 127.0.0.1" in result.stderr
    assert time.monotonic() - started < 60


def test_a_png_too_large_for_a_document_goes_to_gridfs_once(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store, "MAX_INLINE_PNG", 1000)  # every test PNG is larger
    writer = MongoWriter(mongo_uri, db.name)
    lines, md5s, grays = sample_batch()
    for _ in range(2):  # the second time is a replay
        writer.write("r1", lines, md5s, grays)
    gray_of_line = {line: gray for (line, _), gray in zip(lines, grays, strict=True)}
    for image in db.images.find():
        assert "gray" not in image
        assert image_png(db, image["md5"]).read() == gray_of_line[image["line"]].png
    assert db["gray.files"].count_documents({}) == 2
    assert_exact(db, "r1", 4)
