"""The DNS cache: a host is looked up once for many lines, a failure costs one lookup.

Lookups are counted by the downloader itself (``dns_lookups``). The resolver here
answers at once; the case of one that answers late is made by delaying the real
lookup of a ``.invalid`` name, as no test may change the machine's resolver.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from itm.config import Settings
from itm.job.dns import dns_lookups
from itm.job.download import fetch
from itm.outcomes import Failure
from tests.support.host_servers import HostServer
from tests.support.jobs import run_itm, write_urls
from tests.support.waiting import JOB_SLACK, SLACK

THREADS = 25
LINES = 650  # the bundled urls.txt: one host
# Loopback test servers: opted in to private addresses, explicitly.
SETTINGS = Settings(deadline=2.0, retries=2, allow_private_addresses=True)


@pytest.fixture(scope="module")
def server() -> Iterator[HostServer]:
    with HostServer() as running:
        yield running


def unresolvable() -> str:
    """A name no resolver knows (RFC 6761), new to this process's cache."""
    return f"itm-{uuid.uuid4().hex[:12]}.invalid"


def outcomes(lines: list[str], settings: Settings = SETTINGS) -> list[Failure | bytes]:
    def one(line: str) -> Failure | bytes:
        try:
            return fetch(line, settings)
        except Failure as failure:
            return failure

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(one, lines))


def test_a_host_is_looked_up_once_for_many_lines(server: HostServer) -> None:
    before = dns_lookups()
    lines = [server.at("localhost", f"/img/{n}") for n in range(100)]
    assert outcomes(lines) == [server.jpeg] * len(lines)
    assert dns_lookups() - before <= 1  # none if an earlier test looked localhost up


def test_a_failed_lookup_is_remembered() -> None:
    host = unresolvable()
    before = dns_lookups()
    results = outcomes([f"http://{host}/{n}.jpg" for n in range(LINES)])
    assert dns_lookups() - before == 1
    for failure in results:
        assert isinstance(failure, Failure)
        assert failure.reason == "connection_error"
        assert f"cannot resolve {host}" in failure.detail


def test_a_resolver_that_never_answers_costs_one_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """650 lines to one host whose lookups outlive the deadline: the first lines wait
    for it until their deadline; the others fail at once, with no lookup of their own."""
    real = socket.getaddrinfo

    def slow(host: Any, *args: Any, **kwargs: Any) -> Any:
        numeric = kwargs.get("flags", 0) & socket.AI_NUMERICHOST  # never a lookup
        if str(host).endswith(".invalid") and not numeric:
            time.sleep(3 * SETTINGS.deadline)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    host = unresolvable()
    before = dns_lookups()
    started = time.monotonic()
    results = outcomes([f"http://{host}/{n}.jpg" for n in range(LINES)])
    seconds = time.monotonic() - started
    assert seconds <= SETTINGS.deadline + SLACK  # one lookup at a time: 26 deadlines
    assert dns_lookups() - before == 1
    reasons = {failure.reason for failure in results if isinstance(failure, Failure)}
    assert reasons == {"timeout"} and len(results) == LINES


def test_650_lines_to_an_unresolvable_host_end_within_one_deadline(
    mongo_uri: str, mongo_client: MongoClient, db_name: str, ray_local: None, tmp_path: Path
) -> None:
    """With the default deadline, and ``JOB_SLACK`` for the job's own start (its writer,
    its workers), which takes a good part of a short deadline on a busy machine."""
    host = unresolvable()
    urls = write_urls(tmp_path, [f"http://{host}/{n}.jpg" for n in range(LINES)])
    started = time.monotonic()
    assert run_itm(mongo_uri, db_name, urls) == 0
    assert time.monotonic() - started <= Settings().deadline + JOB_SLACK
    events = mongo_client[db_name].events
    assert events.count_documents({"reason": "connection_error"}) == LINES
