"""The fixtures of the API's tests: its data in the test's database, and its app on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pymongo.database import Database

from itm.api import create_app
from itm.config import Settings
from tests.support.apiclient import api_client
from tests.support.apidata import ApiData, fill


@pytest.fixture
def data(db: Database) -> ApiData:
    return fill(db)


@pytest.fixture
def client(mongo_uri: str, db_name: str) -> Iterator[TestClient]:
    # No snapshot kept: each request reads what the test just wrote (see test_snapshots_*).
    settings = Settings(mongo_uri=mongo_uri, db=db_name, api_snapshot_s=0)
    with api_client(create_app(settings)) as test_client:
        yield test_client
