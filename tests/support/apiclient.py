"""The API's app in FastAPI's TestClient, called as a local client calls it.

TestClient's default ``Host``, ``testserver``, is a name the API refuses (its DNS
rebinding guard, ``itm.api.guard``): the tests call it by address, as ``curl
127.0.0.1:5000`` does.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

BASE_URL = "http://127.0.0.1"


def api_client(app: FastAPI) -> TestClient:
    """``TestClient(app)`` with ``Host: 127.0.0.1``."""
    return TestClient(app, base_url=BASE_URL)
