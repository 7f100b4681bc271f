"""Helpers of the job's tests: the repository root, an input file, a run in this process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pymongo.database import Database

from itm.run import main
from tests.support.servers import PicsumServer

ROOT = Path(__file__).resolve().parents[2]


def write_urls(folder: Path, lines: list[str]) -> Path:
    urls = folder / "urls.txt"
    urls.write_text("\n".join(lines) + "\n")
    return urls


def run_itm(mongo_uri: str, db_name: str, urls: Path, *flags: str) -> int:
    """``python -m itm.run --no-serve`` in this process, on the session's Ray.

    With ``--allow-private-addresses``: the tests' image servers are on loopback.
    """
    return main(
        [
            "--urls",
            str(urls),
            "--mongo-uri",
            mongo_uri,
            "--db",
            db_name,
            "--no-serve",
            "--allow-private-addresses",
            *flags,
        ]
    )


@dataclass
class PicsumRun:
    """The canonical input, run once against a local picsum: shared, read-only."""

    db: Database
    run_id: str
    server: PicsumServer
    lines: list[str]
