"""Session-wide real parts: one SecantusDB server and one local Ray for the whole run."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import ray
from pymongo import MongoClient
from pymongo.database import Database

from itm.embedded import EmbeddedMongo
from itm.ray_runtime import init_ray
from itm.store import connect


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
