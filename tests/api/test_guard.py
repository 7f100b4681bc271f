"""The API's doors: the Host check against DNS rebinding, and nosniff on every response.

The real app on the session's SecantusDB, through TestClient and through a real
uvicorn socket (a rebinding page's request is an ordinary request with a foreign Host).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from itm.api import create_app
from itm.api.guard import allowed_names, host_allowed
from itm.config import Settings
from itm.embedded import EmbeddedMongo
from tests.support.apiclient import api_client
from tests.support.apidata import ApiData
from tests.support.liveserver import live_server

DEFAULT = allowed_names(Settings())


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST:5000",
        "localhost.:5000",
        "127.0.0.1",
        "127.0.0.1:5000",
        "[::1]",
        "[::1]:5000",
        "10.1.2.3:5000",  # an address: a node's, a probe's, a load balancer's
        "[2001:db8::1]:80",
        None,  # no browser sends a request without Host
    ],
)
def test_loopback_names_and_addresses_are_answered_by_default(host: str | None) -> None:
    assert host_allowed(host, DEFAULT)


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example",
        "attacker.example:5000",
        "127.0.0.1.nip.io",
        "localhost.attacker.example",
        "sub.localhost",
        "",
        "[::1",
        "testserver",
    ],
)
def test_other_names_are_refused_by_default(host: str) -> None:
    assert not host_allowed(host, DEFAULT)


def test_more_names_come_from_the_settings() -> None:
    names = allowed_names(
        Settings(host="itm-api", api_allowed_hosts=" API.example.com., *.corp.example ,")
    )
    assert names == {"localhost", "itm-api", "api.example.com", "*.corp.example"}
    for host in ("itm-api:5000", "api.example.com", "a.corp.example", "a.b.corp.example:80"):
        assert host_allowed(host, names), host
    for host in ("corp.example", "xcorp.example", "example.com", "attacker.example"):
        assert not host_allowed(host, names), host
    assert host_allowed("anything.example", allowed_names(Settings(api_allowed_hosts="*")))
    assert allowed_names(Settings(host="0.0.0.0")) == {"localhost"}  # an address, not a name


def paths(data: ApiData) -> list[str]:
    md5 = data.newest_first[0]
    return ["/", "/healthz", "/images", f"/image/{md5}", "/monitoring", "/runs", "/docs"]


def test_a_foreign_host_is_refused_on_every_route(client: TestClient, data: ApiData) -> None:
    for path in [*paths(data), "/runs/nope", "/nope"]:
        response = client.get(path, headers={"Host": "rebound.attacker.example:5000"})
        assert response.status_code == 400, path
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "--api-allowed-hosts" in response.json()["detail"]
        assert response.json()["detail"].startswith("Host 'rebound.attacker.example:5000'")
        for name in ("localhost", "[::1]:5000", "127.0.0.1:5000"):
            assert client.get(path, headers={"Host": name}).status_code != 400, (path, name)


def test_a_host_allowed_by_the_settings_is_answered(
    mongo_uri: str, db_name: str, data: ApiData
) -> None:
    settings = Settings(mongo_uri=mongo_uri, db=db_name, api_allowed_hosts="itm.example.org")
    with api_client(create_app(settings)) as client:
        assert client.get("/healthz", headers={"Host": "itm.example.org"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "other.example.org"}).status_code == 400


def test_every_response_says_nosniff(client: TestClient, data: ApiData) -> None:
    for path in [*paths(data), "/image/" + "f" * 32, "/image/nope", "/images?cursor=x", "/nope"]:
        response = client.get(path)
        assert response.status_code in (200, 400, 404, 422), path
        assert response.headers["x-content-type-options"] == "nosniff", path
    assert client.head(f"/image/{data.gridfs_md5}").headers["x-content-type-options"] == "nosniff"


def test_a_crash_and_a_missing_database_say_nosniff_too(tmp_path: Path) -> None:
    mongo = EmbeddedMongo(tmp_path)  # nobody listens on its port: every read is a 503
    app = create_app(Settings(mongo_uri=mongo.uri, db="itm"), timeout_ms=300)

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        down = client.get("/images")
        assert down.status_code == 503
        assert down.headers["x-content-type-options"] == "nosniff"
        crashed = client.get("/crash")
        assert crashed.status_code == 500 and crashed.text == "Internal Server Error"
        assert crashed.headers["x-content-type-options"] == "nosniff"


def test_a_rebinding_request_over_a_real_socket_is_refused(
    mongo_uri: str, db_name: str, data: ApiData
) -> None:
    """What a page of attacker.example sends once its name resolves to 127.0.0.1."""
    app = create_app(Settings(mongo_uri=mongo_uri, db=db_name))
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        port = base.rpartition(":")[2]
        rebound = http.get("/images", headers={"Host": f"attacker.example:{port}"})
        assert rebound.status_code == 400
        assert rebound.headers["x-content-type-options"] == "nosniff"
        direct = http.get("/images")  # Host: 127.0.0.1:<port>
        assert direct.status_code == 200 and direct.json()["items"]
        assert direct.headers["x-content-type-options"] == "nosniff"
        assert http.get("/images", headers={"Host": f"localhost:{port}"}).status_code == 200
