"""The API deployed on a real Ray Serve, fetched over HTTP."""

from __future__ import annotations

import importlib
import io
import sys
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from pymongo.database import Database
from ray import serve
from ray.serve import Application

from itm.config import Settings
from itm.embedded import free_port
from itm.serving import serve_api
from tests.apidata import ApiData, fill


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
