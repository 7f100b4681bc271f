"""Fixtures only: one SecantusDB server and one local Ray for the whole run, the
canonical run shared read-only. Helpers live in ``tests.support``.

A test that uses the session's Ray (``ray_local``, even through another fixture) gets
the ``ray`` marker here, so that ``pytest -m "not ray and not external"`` is the quick loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import ray
from pymongo import MongoClient
from pymongo.database import Database

from itm.embedded import EmbeddedMongo
from itm.job.ray_runtime import init_ray
from itm.store import connect
from tests.support.jobs import ROOT, PicsumRun, run_itm, write_urls
from tests.support.servers import PicsumServer, picsum_lines


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MongoDB-wire server (SecantusDB) in its own temp dir, on a free port."""
    with EmbeddedMongo(tmp_path_factory.mktemp("secantus")) as uri:
        yield uri


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[MongoClient]:
    client = connect(mongo_uri)
    yield client
    client.close()


@pytest.fixture
def db_name(request: pytest.FixtureRequest, mongo_client: MongoClient) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = "t_" + re.sub(r"\W", "_", request.node.name)[:50]
    mongo_client.drop_database(name)
    yield name
    mongo_client.drop_database(name)


@pytest.fixture
def db(mongo_client: MongoClient, db_name: str) -> Database:
    return mongo_client[db_name]


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the session: 2 CPUs, no dashboard, loopback only."""
    init_ray(None, dashboard=False, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def canonical_lines() -> list[str]:
    return (ROOT / "urls.txt").read_text().splitlines()


@pytest.fixture(scope="session")
def picsum_run(
    mongo_client: MongoClient,
    mongo_uri: str,
    ray_local: None,
    canonical_lines: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PicsumRun]:
    with PicsumServer(photos=40) as server:
        lines = picsum_lines(server.url, canonical_lines)
        urls = write_urls(tmp_path_factory.mktemp("picsum"), lines)
        mongo_client.drop_database("picsum_run")
        assert run_itm(mongo_uri, "picsum_run", urls) == 0
        db = mongo_client["picsum_run"]
        (run,) = db.runs.find()
        yield PicsumRun(db, run["_id"], server, lines)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
