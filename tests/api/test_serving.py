"""The API deployed on a real Ray Serve, fetched over HTTP: its routes, its request path, its
bounds."""

from __future__ import annotations

import importlib
import io
import ipaddress
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from PIL import Image
from pymongo.database import Database
from ray import serve
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from itm.api.serving import (
    APP_NAME,
    CONTROLLER_ENV,
    SERVE_ENV,
    ApiDeployment,
    serve_api,
)
from itm.config import Settings, free_port
from itm.embedded import EmbeddedMongo
from tests.support.apidata import ApiData, fill
from tests.support.jobs import ROOT, ItmProcess, write_urls


@pytest.fixture
def served(ray_local: None, mongo_uri: str, db_name: str) -> Iterator[str]:
    settings = Settings(mongo_uri=mongo_uri, db=db_name, host="127.0.0.1", port=free_port())
    try:
        serve_api(settings)
        yield f"http://{settings.host}:{settings.port}"
    finally:
        serve.shutdown()


def test_image_and_monitoring_over_ray_serve(served: str, db: Database) -> None:
    data: ApiData = fill(db)
    with httpx.Client(base_url=served, timeout=30) as http:
        for md5 in (data.newest_first[0], data.gridfs_md5):
            response = http.get(f"/image/{md5}")
            assert response.status_code == 200
            assert response.content == data.pngs[md5]
            assert response.headers["etag"] == f'"{md5}"'
        newest = http.get("/images", params={"limit": 1}).json()["items"][0]
        assert newest["url"] == f"/image/{data.newest_first[0]}"
        assert http.get("/image/" + "f" * 32).status_code == 404
        assert http.get("/image/nope").status_code == 422
        chart = http.get("/monitoring")
        assert chart.status_code == 200
        assert chart.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(chart.content)).format == "PNG"
        totals = http.get("/monitoring", params={"format": "json"}).json()["totals"]
        assert totals == {"success": data.success, "error": data.error}
        assert http.get("/healthz").json()["status"] == "ok"
        # Serve's proxy hands the client's Host to the app, whose doors hold (DNS rebinding).
        assert http.get("/healthz").headers["x-content-type-options"] == "nosniff"
        refused = http.get("/healthz", headers={"Host": "attacker.example:5000"})
        assert refused.status_code == 400 and "--api-allowed-hosts" in refused.json()["detail"]


def test_serve_app_reads_its_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, mongo_uri: str
) -> None:
    monkeypatch.delitem(sys.modules, "serve_app", raising=False)
    monkeypatch.delenv("ITM_MONGO_URI", raising=False)
    with pytest.raises(ValueError, match="ITM_MONGO_URI"):
        importlib.import_module("serve_app")
    monkeypatch.setenv("ITM_MONGO_URI", mongo_uri)
    monkeypatch.setenv("ITM_DB", "served")
    assert isinstance(importlib.import_module("serve_app").app, Application)


def _listeners(pid: int) -> dict[int, list[str]]:
    """Port -> the addresses it listens on, over a process and all its descendants."""
    root = psutil.Process(pid)
    ports: dict[int, list[str]] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            sockets = process.net_connections(kind="inet")
        except psutil.Error:  # exited meanwhile
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                ports.setdefault(sock.laddr.port, []).append(sock.laddr.ip)
    return ports


def _listener_pid(port: int) -> int:
    (pid,) = {
        c.pid
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    return pid


def test_itm_run_serves_from_the_replica_on_loopback_only(tmp_path: Path) -> None:
    """Direct ingress, the default: the Serve replica owns the API port; nothing of the
    job's local Ray listens beyond loopback; Ctrl-C stops it all."""
    port = free_port()
    urls = write_urls(tmp_path, ["not a url"])  # one line, one error: the job takes no time
    itm = ItmProcess(
        *("--urls", str(urls), "--port", str(port), "--data-dir", str(tmp_path / "itm")),
        "--no-dashboard",
    )
    try:
        itm.wait_for("Ctrl-C to stop.")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        replica = psutil.Process(_listener_pid(port))
        assert "ServeReplica" in replica.name()
        listeners = _listeners(itm.process.pid)
        assert listeners[port] == ["127.0.0.1"]
        beyond = {
            p
            for p, ips in listeners.items()
            if not all(ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback for ip in ips)
        }
        # The one exception, on either request path: Serve 2.60 binds each replica's
        # internal gRPC port to [::], hard-coded (see the README).
        internal = {
            c.laddr.port
            for c in replica.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.ip == "::"
        }
        assert len(internal) == 1
        assert beyond == internal, f"listening beyond loopback: {beyond - internal}"
        # The controller's switches reach it: only the Ray that itm starts can pass them.
        controller = next(
            p
            for p in psutil.Process(itm.process.pid).children(recursive=True)
            if "ServeController" in " ".join(p.cmdline())
        )
        assert CONTROLLER_ENV.items() <= controller.environ().items()
    finally:
        itm.signal(signal.SIGINT, pause=0)
        code = itm.wait()
    assert code == 0, itm.output


def test_a_full_queue_is_503_at_once(ray_local: None, tmp_path: Path) -> None:
    """One request in the replica, one in the queue: the others get Serve's 503 without
    waiting. MongoDB is frozen (SIGSTOP) so that the admitted requests hold their slots."""
    mongo = EmbeddedMongo(tmp_path)
    with mongo as uri:
        settings = Settings(mongo_uri=uri, db="itm", port=free_port(), api_timeout=10)
        base = f"http://127.0.0.1:{settings.port}"
        serve.start(http_options={"host": "127.0.0.1", "port": settings.port})
        try:
            tight = ApiDeployment.options(max_ongoing_requests=1, max_queued_requests=1)
            serve.run(tight.bind(settings), name=APP_NAME, route_prefix="/")
            assert httpx.get(base + "/images", timeout=30).status_code == 200  # connected
            server = psutil.Process(_listener_pid(mongo.port))
            server.suspend()
            try:
                with ThreadPoolExecutor(6) as pool:
                    replies = list(
                        pool.map(lambda _: httpx.get(base + "/images", timeout=60), range(6))
                    )
            finally:
                server.resume()
        finally:
            serve.shutdown()
    assert all(reply.status_code in (200, 503) for reply in replies)
    # Two slots for six requests sent at once: some are refused at the door (how many
    # depends on when each arrives; an admitted one holds its slot while MongoDB is
    # frozen); the others are answered once it thaws or their reads time out.
    refused = [reply for reply in replies if "backpressure" in reply.text]
    assert refused
    assert all(reply.headers["retry-after"] == "1" for reply in refused)


def test_serve_config_matches_the_deployment() -> None:
    """serve_config.yaml repeats what a config file must spell out: keep both in step."""
    config = ServeDeploySchema.model_validate(
        yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    )
    (app,) = config.applications
    assert app.runtime_env["env_vars"] == SERVE_ENV
    (deployment,) = app.deployments
    assert deployment.name == ApiDeployment.name
    defaults = Settings()
    assert deployment.max_ongoing_requests == defaults.api_max_ongoing
    assert deployment.max_queued_requests == defaults.api_max_queued
