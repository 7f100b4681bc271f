"""Session-wide real parts: one SecantusDB server and one local Ray for the whole run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
from pymongo import MongoClient
from pymongo.database import Database

from itm.embedded import EmbeddedMongo
from itm.job.ray_runtime import init_ray
from itm.run import main
from itm.store import connect
from tests.servers import PicsumServer, picsum_lines


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


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def canonical_lines() -> list[str]:
    return (ROOT / "urls.txt").read_text().splitlines()


def write_urls(folder: Path, lines: list[str]) -> Path:
    urls = folder / "urls.txt"
    urls.write_text("\n".join(lines) + "\n")
    return urls


def run_itm(mongo_uri: str, db_name: str, urls: Path, *flags: str) -> int:
    """``python -m itm.run --no-serve`` in this process, on the session's Ray.

    With ``--allow-private-addresses``: the tests' image servers are on loopback.
    """
    return main(["--urls", str(urls), "--mongo-uri", mongo_uri, "--db", db_name,
                 "--no-serve", "--allow-private-addresses", *flags])


@dataclass
class PicsumRun:
    """The canonical input, run once against a local picsum: shared, read-only."""

    db: Database
    run_id: str
    server: PicsumServer
    lines: list[str]


@pytest.fixture(scope="session")
def picsum_run(
    mongo_client: MongoClient, mongo_uri: str, ray_local: None, canonical_lines: list[str],
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
