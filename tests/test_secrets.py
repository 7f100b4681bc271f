"""Secrets in a URL list are sent where they belong and nowhere else: a real job on the
session's Ray and SecantusDB, a real image server on loopback that refuses a request
without its signature, and the API (TestClient) while the job runs and after.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from itm.api import create_app
from itm.config import Settings
from itm.store import EVENTS, IMAGES, MONITORING, RUNS
from tests.support.apiclient import api_client
from tests.support.jobs import run_itm, write_urls
from tests.support.servers import PicsumHandler, RecordingHandler, RecordingPicsum
from tests.support.waiting import wait_until

SIGNATURE = "5ig0123456789abcdef"
TOKEN = "t0ken-0123456789"
CREDENTIAL = "AKIAEXAMPLE0123"
PASSWORD = "p4ssw0rd"
SECRETS = (SIGNATURE, TOKEN, CREDENTIAL, PASSWORD, "hunter2")


class SignedHandler(RecordingHandler):
    """picsum, but a first hop (``/W/H``) is a 403 unless its query carries the signature."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if not path.startswith("/id/"):
            self.record()
            if SIGNATURE not in query:
                self.reply(403, b"signature required")
                return
        self.path = path
        PicsumHandler.do_GET(self)  # recorded above


def lines_of(base: str) -> list[str]:
    port = base.rpartition(":")[2]
    host = f"127.0.0.1:{port}"
    return [
        # fetched with their secrets, stored without them
        f"{base}/40/30?X-Amz-Credential={CREDENTIAL}%2F20260101&X-Amz-Signature={SIGNATURE}",
        f"{base}/41/30?w=1&token={TOKEN}&sig={SIGNATURE}",
        f"{base}/42/30?Signature={SIGNATURE}#access_token={TOKEN}",
        f"{base}/43/30?api_key={TOKEN}",  # no signature: the server's 403
        # userinfo, in the spellings parsers take for it: never sent, never stored
        f"http://user:{PASSWORD}@{host}/44/30",
        f"http://user:{PASSWORD}/hunter2@{host}/45/30",
        f"http://user:{PASSWORD}?hunter2@{host}/46/30",
        f"//user:{PASSWORD}@{host}/47/30",
        f"http:user:{PASSWORD}@{host}/48/30",
        f"http:\\\\user:{PASSWORD}@{host}\\49\\30",
    ]


def assert_no_secret(what: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {what}: {text}"


def documents(db: Database) -> str:
    found: list[Any] = []
    for name in (EVENTS, IMAGES, MONITORING, RUNS):
        found += db[name].find({}, {"gray": 0})
    return json.dumps(found, default=str)


def test_secrets_are_fetched_but_never_stored_nor_served(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings(mongo_uri=mongo_uri, db=db.name)
    with (
        RecordingPicsum(photos=3, handler=SignedHandler) as server,
        api_client(create_app(settings)) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        lines = lines_of(server.url)
        urls = write_urls(tmp_path, lines)
        server.open.clear()  # the downloads wait at the server: the run is seen mid-way
        job = pool.submit(run_itm, mongo_uri, db.name, urls)
        try:

            def in_flight() -> bool:
                assert not job.done(), "the job ended while the server held it"
                return db[RUNS].find_one({"in_flight.0": {"$exists": True}}) is not None

            wait_until(in_flight, "lines in flight")
            (run,) = client.get("/runs").json()["items"]
            running = client.get(f"/runs/{run['id']}")
            dashboard = client.get("/")
        finally:
            server.open.set()
        assert job.result() == 0
        finished = client.get(f"/runs/{run['id']}").json()
        images = client.get("/images").text

    # The real URLs went out: the server saw every signature, and answered.
    assert sorted(asked.partition("?")[2] for asked in server.asked) == sorted(
        line.partition("?")[2].partition("#")[0] for line in lines[:4]
    )
    events = {event["line"]: event for event in db[EVENTS].find({"run_id": run["id"]})}
    assert [events[n]["status"] for n in (1, 2, 3)] == ["success"] * 3
    assert events[4]["reason"] == "http_403"
    assert {events[n]["reason"] for n in range(5, 11)} == {"invalid_url"}
    assert all("credentials" in events[n]["detail"] for n in range(5, 11))

    # What was stored and served says which URL it was, its secrets as ***.
    assert events[1]["url"] == (f"{server.url}/40/30?X-Amz-Credential=***&X-Amz-Signature=***")
    assert events[3]["url"] == f"{server.url}/42/30?Signature=***#access_token=***"
    assert events[5]["url"] == f"http://***@127.0.0.1:{server.url.rpartition(':')[2]}/44/30"
    assert {image["source_url"] for image in db[IMAGES].find()} <= {
        events[n]["url"] for n in (1, 2, 3)
    }
    shown = [line["url"] for line in running.json()["in_flight"]]
    assert shown and all("***" in url for url in shown)
    assert_no_secret("the database", documents(db))
    for what, text in [
        ("GET /runs/{id} while running", running.text),
        ("GET /runs/{id} finished", json.dumps(finished)),
        ("the dashboard", dashboard.text),
        ("GET /images", images),
        ("the job's output", "".join(capsys.readouterr())),
    ]:
        assert_no_secret(what, text)

    # The run's input is named, not the server's path to it.
    assert finished["input"] == "urls.txt"
    assert str(tmp_path) not in running.text + json.dumps(finished) + dashboard.text
