"""The runs in the API: a run's status, progress and lines in flight, as ``/runs`` shows them.

Real parts: the session's SecantusDB and local Ray, ``python -m itm.run`` in this
process, a local picsum, the API through FastAPI's TestClient.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fastapi.testclient import TestClient
from pymongo.database import Database

from itm.api.runview import STALE_AFTER, status
from tests.support.jobs import run_itm, write_urls
from tests.support.servers import PicsumServer
from tests.support.waiting import wait_until


def test_a_running_run_shows_its_progress_and_oldest_lines_in_flight(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
    client: TestClient,
) -> None:
    with PicsumServer(photos=2) as server, ThreadPoolExecutor(1) as pool:
        server.open.clear()  # every download waits at the server: the job is held mid-run
        urls = write_urls(tmp_path, [f"{server.url}/8/{n}" for n in range(1, 21)])
        job = pool.submit(run_itm, mongo_uri, db.name, urls)
        try:

            def in_flight() -> bool:
                assert not job.done(), "the job ended while the server held it"
                return db.runs.find_one({"in_flight.0": {"$exists": True}}) is not None

            wait_until(in_flight, "a line in flight")
            (run,) = client.get("/runs").json()["items"]
            assert run["status"] == "running" and run["finished_at"] is None
            assert run["progress"]["total"] == 20 and run["progress"]["done"] == 0
            assert run["progress"]["rate"] == 0.0 and run["progress"]["eta_seconds"] is None
            oldest = run["in_flight"]
            assert [line["line"] for line in oldest] == [1, 2, 3, 4, 5]
            assert oldest[0]["url"] == f"{server.url}/8/1" and oldest[0]["seconds"] >= 0
            page = client.get("/").text
            assert "running" in page
            assert '<meta http-equiv="refresh"' in page  # the dashboard follows the run
        finally:
            server.open.set()
        assert job.result() == 0
    run = client.get(f"/runs/{run['id']}").json()
    assert run["status"] == "finished" and run["in_flight"] == []
    assert run["progress"]["done"] == 20 and run["totals"]["success"] == 20


def test_a_run_without_a_heartbeat_is_interrupted() -> None:
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert status({"finished_at": now}, now) == "finished"
    assert status({"finished_at": None, "heartbeat": now - STALE_AFTER}, now) == "running"
    late = now - STALE_AFTER - timedelta(seconds=1)
    assert status({"finished_at": None, "heartbeat": late}, now) == "interrupted"
