"""The app (``itm/api/app.py``): every route, negotiation, overload control and every error
path, through FastAPI's TestClient on real MongoDB."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from unittest.mock import patch

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pymongo.database import Database

from itm.api import chart, create_app, queries
from itm.api.coalesce import Coalescer
from itm.api.routes import RECENT_RUNS
from itm.config import Settings
from itm.embedded import EmbeddedMongo
from itm.store import IMAGES, MONITORING
from tests.support.apiclient import api_client
from tests.support.apidata import COUNTS, START, ApiData
from tests.support.waiting import SLACK, wait_until

SECOND = timedelta(seconds=1)


# --- /image/{md5} ---------------------------------------------------------------------------


def test_image_is_the_stored_png_with_cache_headers(client: TestClient, data: ApiData) -> None:
    for md5, png in data.pngs.items():
        response = client.get(f"/image/{md5}")
        assert response.status_code == 200
        assert response.content == png
        assert response.headers["content-type"] == "image/png"
        assert response.headers["content-length"] == str(len(png))
        assert response.headers["etag"] == f'"{md5}"'
        assert "immutable" in response.headers["cache-control"]
        assert Image.open(io.BytesIO(response.content)).size == data.sizes[md5]


def test_image_from_gridfs_spans_chunks(client: TestClient, data: ApiData) -> None:
    png = data.pngs[data.gridfs_md5]
    assert len(png) > 2 * 255 * 1024
    response = client.get(f"/image/{data.gridfs_md5}")
    assert response.status_code == 200
    assert response.content == png


def test_image_md5_is_case_insensitive(client: TestClient, data: ApiData) -> None:
    md5 = data.newest_first[0]
    response = client.get(f"/image/{md5.upper()}")
    assert response.status_code == 200
    assert response.content == data.pngs[md5]
    assert response.headers["etag"] == f'"{md5}"'


@pytest.mark.parametrize("where", ["document", "gridfs"])
def test_head_gives_the_headers_only(client: TestClient, data: ApiData, where: str) -> None:
    md5 = data.gridfs_md5 if where == "gridfs" else data.newest_first[-1]
    response = client.head(f"/image/{md5}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(data.pngs[md5]))
    assert response.headers["etag"] == f'"{md5}"'


@pytest.mark.parametrize("if_none_match", ['"{md5}"', 'W/"{md5}"', '"other", "{md5}"', "*"])
def test_if_none_match_gives_304(client: TestClient, data: ApiData, if_none_match: str) -> None:
    md5 = data.newest_first[0]
    response = client.get(f"/image/{md5}", headers={"If-None-Match": if_none_match.format(md5=md5)})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == f'"{md5}"'


def test_if_none_match_of_another_etag_gives_the_image(client: TestClient, data: ApiData) -> None:
    md5 = data.newest_first[0]
    response = client.get(f"/image/{md5}", headers={"If-None-Match": '"0123"'})
    assert response.status_code == 200
    assert response.content == data.pngs[md5]


def test_unknown_md5_is_404_json(client: TestClient, data: ApiData) -> None:
    for headers in ({}, {"If-None-Match": "*"}):
        response = client.get("/image/" + "0" * 32, headers=headers)
        assert response.status_code == 404
        assert response.json() == {"detail": "no image with md5 " + "0" * 32}


def test_missing_gridfs_file_is_404(client: TestClient, db: Database) -> None:
    db[IMAGES].insert_one({"md5": "a" * 32, "width": 1, "height": 1, "gray_id": "gone"})
    response = client.get("/image/" + "a" * 32)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "md5", ["abc", "0" * 31, "0" * 33, "g" * 32, "0" * 31 + "%0A", "%00" * 32, "0" * 31 + " "]
)
def test_malformed_md5_is_422(client: TestClient, data: ApiData, md5: str) -> None:
    response = client.get(f"/image/{md5}")
    assert response.status_code == 422


# --- /images --------------------------------------------------------------------------------


def test_images_lists_newest_first(client: TestClient, data: ApiData) -> None:
    body = client.get("/images").json()
    assert [item["md5"] for item in body["items"]] == data.newest_first
    assert body["next"] is None
    first = body["items"][0]
    assert (first["width"], first["height"]) == data.sizes[first["md5"]]
    assert first["url"] == f"/image/{first['md5']}"
    assert first["inserted_at"].startswith(START.strftime("%Y-%m-%dT%H:%M"))
    assert client.get(first["url"]).content == data.pngs[first["md5"]]


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_images_pages_cover_everything_once(client: TestClient, data: ApiData, limit: int) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/images", params=params).json()
        assert len(body["items"]) <= limit
        seen += [item["md5"] for item in body["items"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == data.newest_first


@pytest.mark.parametrize("limit", [0, -1, 201, "many"])
def test_images_limit_is_bounded(client: TestClient, data: ApiData, limit: object) -> None:
    assert client.get("/images", params={"limit": limit}).status_code == 422


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "x",
        _b64("1.2.3"),
        _b64("12." + "z" * 32),
        _b64("nope." + "0" * 32),
        _b64("9" * 30 + "." + "0" * 32),
        "%FF%FE",
        _b64("\u00e9.x"),
    ],
)
def test_malformed_cursor_is_400(client: TestClient, data: ApiData, cursor: str) -> None:
    response = client.get("/images", params={"cursor": cursor})
    assert response.status_code == 400
    assert response.json() == {"detail": "malformed cursor"}


# --- /monitoring ----------------------------------------------------------------------------


def _minute(offset: int) -> str:
    return (START + timedelta(minutes=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_monitoring_json_is_zero_filled(client: TestClient, data: ApiData) -> None:
    body = client.get("/monitoring", params={"format": "json"}).json()
    counts = {offset: (success, error) for offset, success, error in COUNTS}
    expected = [
        dict(zip(("minute", "success", "error"), (_minute(m), *counts.get(m, (0, 0))), strict=True))
        for m in range(4)
    ]
    assert body["buckets"] == expected
    assert body["totals"] == {"success": data.success, "error": data.error}
    assert (body["since"], body["until"]) == (_minute(0), _minute(3))


def test_monitoring_window(client: TestClient, data: ApiData) -> None:
    body = client.get(
        "/monitoring",
        params={"format": "json", "since": _minute(1), "until": "2026-01-02T05:06:59+02:00"},
    ).json()
    assert [bucket["minute"] for bucket in body["buckets"]] == [_minute(1), _minute(2)]
    assert body["totals"] == {"success": COUNTS[1][1], "error": COUNTS[1][2]}
    only_since = client.get("/monitoring", params={"format": "json", "since": _minute(2)}).json()
    assert [bucket["minute"] for bucket in only_since["buckets"]] == [_minute(2), _minute(3)]


def test_monitoring_window_is_capped_at_a_day(client: TestClient, data: ApiData) -> None:
    body = client.get(
        "/monitoring",
        params={"format": "json", "since": "2000-01-01T00:00:00Z", "until": _minute(3)},
    ).json()
    assert len(body["buckets"]) == 24 * 60
    assert body["until"] == _minute(3)


def test_monitoring_window_after_the_data_is_empty(client: TestClient, data: ApiData) -> None:
    body = client.get("/monitoring", params={"format": "json", "since": "2030-01-01T00:00"}).json()
    assert body == {
        "since": None,
        "until": None,
        "buckets": [],
        "totals": {"success": 0, "error": 0},
    }
    png = client.get("/monitoring", params={"since": "2030-01-01T00:00"})
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("accept", "kind"),
    [
        ("application/json", "application/json"),
        ("image/png", "image/png"),
        ("*/*", "image/png"),
        ("image/png, application/json;q=0.5", "image/png"),
        ("application/json, image/png;q=0.5", "application/json"),
        ("application/json;q=0", "image/png"),
        ("application/json;q=x", "image/png"),
    ],
)
def test_monitoring_negotiates_on_accept(
    client: TestClient, data: ApiData, accept: str, kind: str
) -> None:
    response = client.get("/monitoring", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == kind


def test_monitoring_png_is_a_chart(client: TestClient, data: ApiData) -> None:
    response = client.get("/monitoring")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (1000, 400)


@pytest.mark.parametrize(
    "params",
    [{"format": "xml"}, {"since": "yesterday"}, {"until": "2026-13-01T00:00:00"}],
)
def test_monitoring_rejects_bad_parameters(
    client: TestClient, data: ApiData, params: dict[str, str]
) -> None:
    assert client.get("/monitoring", params=params).status_code == 422


def test_monitoring_since_after_until_is_400(client: TestClient, data: ApiData) -> None:
    response = client.get("/monitoring", params={"since": _minute(3), "until": _minute(1)})
    assert response.status_code == 400
    assert "since" in response.json()["detail"]


def test_monitoring_extreme_dates_do_not_crash(client: TestClient, data: ApiData) -> None:
    for params in (
        {"since": "0001-01-01T00:00:00+14:00"},
        {"until": "9999-12-31T23:59:59-14:00"},
        {"since": "0001-01-01T00:00:00", "until": "9999-12-31T23:59:59"},
    ):
        for fmt in ("json", "png"):
            assert client.get("/monitoring", params={**params, "format": fmt}).status_code == 200


# --- an empty database ----------------------------------------------------------------------


def test_empty_database(client: TestClient) -> None:
    png = client.get("/monitoring")
    assert png.status_code == 200
    assert Image.open(io.BytesIO(png.content)).size == (1000, 400)
    assert client.get("/monitoring?format=json").json() == {
        "since": None,
        "until": None,
        "buckets": [],
        "totals": {"success": 0, "error": 0},
    }
    assert client.get("/images").json() == {"items": [], "next": None}
    page = client.get("/")
    assert page.status_code == 200
    assert "No image stored yet." in page.text
    assert "No errors." in page.text


# --- /healthz, /docs ----------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "detail": None}


def test_responses_say_how_long_the_app_took(client: TestClient, data: ApiData) -> None:
    for path in ("/healthz", f"/image/{data.gridfs_md5}", "/image/nope"):
        timing = client.get(path).headers["server-timing"]
        assert timing.startswith("app;dur=")
        assert float(timing.removeprefix("app;dur=")) >= 0


def test_docs(client: TestClient) -> None:
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/image/{md5}",
        "/images",
        "/monitoring",
        "/",
        "/healthz",
        "/runs",
        "/runs/{run_id}",
    }


# --- configuration and MongoDB faults -------------------------------------------------------


def test_no_mongo_uri_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="ITM_MONGO_URI"):
        create_app(Settings(mongo_uri=None))


PATHS = ("/healthz", "/", "/images", "/monitoring", "/monitoring?format=json", "/image/" + "0" * 32)


def _statuses(client: TestClient) -> set[int]:
    return {client.get(path).status_code for path in PATHS}


def _wait_healthy(client: TestClient) -> None:
    wait_until(lambda: client.get("/healthz").status_code == 200, "the API to recover", every=0.1)


def test_mongodb_down_gives_503_and_the_api_recovers(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path)  # its port is chosen, nobody listens there yet
    settings = Settings(mongo_uri=mongo.uri, db="itm", api_snapshot_s=0)  # every request reads
    with api_client(create_app(settings, timeout_ms=300)) as client:
        started = time.monotonic()
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert time.monotonic() - started < SLACK  # pymongo's own wait would be 30 s
        for path in PATHS:
            response = client.get(path)
            assert response.status_code == 503, path
            assert response.headers["content-type"] == "application/json"
            assert "detail" in response.json()
        with mongo:
            _wait_healthy(client)
            assert _statuses(client) == {200, 404}  # the unknown image is 404
        assert _statuses(client) == {503}


def test_a_mongodb_known_to_be_down_is_503_without_waiting_the_time_limit(
    tmp_path: Path,
) -> None:
    """Once pymongo's monitor saw MongoDB refuse, a request does not wait its time limit
    (here ten minutes) in server selection: it answers 503 at once."""
    mongo = EmbeddedMongo(tmp_path)  # nobody listens on its port yet
    settings = Settings(mongo_uri=mongo.uri, db="itm", api_timeout=600)
    with api_client(create_app(settings, timeout_ms=300)) as client:
        mongo_client = client.app.state.db.client
        wait_until(
            lambda: any(
                server.error
                for server in mongo_client.topology_description.server_descriptions().values()
            ),
            "the monitor's first check, refused",
        )
        with ThreadPoolExecutor(1) as pool:
            response = pool.submit(client.get, "/images").result(timeout=60)
        assert response.status_code == 503
        assert response.json()["detail"] == "database unavailable (ConnectionFailure)"
        with mongo:
            _wait_healthy(client)  # pymongo's monitor looks again every HEARTBEAT_MS
            assert client.get("/images").status_code == 200


# --- bounds: a slow read, too many charts, no turn at reading, snapshots ---------------------


def test_read_past_the_time_limit_is_503(mongo_uri: str, db_name: str, data: ApiData) -> None:
    # A limit no read can meet: pymongo refuses to send the read, or the server stops it.
    settings = Settings(mongo_uri=mongo_uri, db=db_name, api_timeout=1e-6)
    with api_client(create_app(settings)) as slow:
        slow.app.state.db.client.admin.command("ping")  # found: a read is sent, or refused
        for path in PATHS[1:]:
            response = slow.get(path)
            assert response.status_code == 503, path
            assert response.json()["detail"].startswith("database read took longer than 0.001 ms")
            assert response.headers["retry-after"] == "1"


def test_too_many_charts_at_once_is_503(client: TestClient, data: ApiData) -> None:
    gate = threading.Event()
    drawing = threading.Semaphore(0)

    def slow_draw(key: object) -> bytes:
        drawing.release()
        assert gate.wait(10)
        return b"png"

    busy = Coalescer(slow_draw, running=1, waiting=0)
    with patch.object(chart, "charts", busy), ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.get, "/monitoring")
        assert drawing.acquire(timeout=10)
        response = client.get("/monitoring", params={"since": _minute(1)})
        gate.set()
        assert response.status_code == 503
        assert "busy" in response.json()["detail"]
        assert response.headers["retry-after"] == "1"
        assert held.result().content == b"png"


def test_no_turn_at_reading_mongodb_is_503_at_once(
    mongo_uri: str, db_name: str, data: ApiData
) -> None:
    settings = Settings(mongo_uri=mongo_uri, db=db_name, api_max_reads=1, api_snapshot_s=0)
    with api_client(create_app(settings)) as client:
        md5 = data.newest_first[0]
        with client.app.state.reads():  # the only turn, held as a slow request would
            for path in (f"/image/{md5}", "/images", "/", "/monitoring?format=json"):
                response = client.get(path)
                assert response.status_code == 503, path
                assert response.headers["retry-after"] == "1"
                assert "reading MongoDB: 1 at once already" in response.json()["detail"]
            assert client.get("/healthz").status_code == 200  # a ping needs no turn
        assert client.get(f"/image/{md5}").status_code == 200  # the turn is free again


def test_snapshots_are_shared_by_concurrent_requests_and_kept_a_while(
    mongo_uri: str, db_name: str, db: Database, data: ApiData
) -> None:
    """Identical requests read the dashboard's data once; until the snapshot's age passes,
    new data is not seen (here an hour: never within the test), except past the first page."""
    reads: list[int] = []
    reading, release = threading.Event(), threading.Event()
    real = queries.dashboard

    def held(db: Database, runs: int) -> queries.Dashboard:
        reads.append(runs)
        reading.set()
        assert release.wait(10)
        return real(db, runs)

    settings = Settings(mongo_uri=mongo_uri, db=db_name, api_snapshot_s=3600)
    with (
        api_client(create_app(settings)) as client,
        patch.object(queries, "dashboard", held),
        ThreadPoolExecutor(6) as pool,
    ):
        first = pool.submit(client.get, "/")
        assert reading.wait(10)
        rest = [pool.submit(client.get, "/") for _ in range(5)]  # share its read, or its result
        release.set()
        pages = {future.result().text for future in [first, *rest]}
        json = client.get("/monitoring?format=json").json()
        listed = client.get("/images", params={"limit": 2}).json()
        db[MONITORING].insert_one(
            {"minute": START + timedelta(minutes=9), "success": 100, "error": 0, "images": 1}
        )
        # Past the first page (snapshot or not): on the second.
        newer = {"md5": "0" * 32, "width": 1, "height": 1, "inserted_at": START + 2 * SECOND}
        db[IMAGES].insert_one(newer)
        assert {client.get("/").text} == pages
        assert client.get("/monitoring?format=json").json() == json
        assert client.get("/images", params={"limit": 2}).json() == listed
        cursor = {"limit": 2, "cursor": listed["next"]}
        later = [item["md5"] for item in client.get("/images", params=cursor).json()["items"]]
    assert len(pages) == 1 and f"<b>{data.success + data.error}</b>" in pages.pop()
    assert reads == [RECENT_RUNS]
    assert "0" * 32 in later  # a next page is read as asked: the image inserted since is there
