"""The per-host limit and Retry-After, with the real token actor on the session's Ray,
against one server answering as four loopback host names."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import ray
from pymongo.database import Database

from itm.config import Settings
from itm.job.download import HostHand, fetch
from itm.job.host_gate import HostSlotActor, LocalGate
from itm.job.politeness import BACKOFF_FIRST, REFUSALS_BEFORE_BACKOFF
from itm.outcomes import Failure
from tests.support.host_servers import HostServer, check_polite_run, spread_lines
from tests.support.jobs import run_itm, write_urls
from tests.support.waiting import wait_until

PER_HOST = 2
SETTINGS = Settings(
    connect_timeout=1.0,
    read_timeout=5.0,
    deadline=10.0,
    retries=2,
    per_host=PER_HOST,
    allow_private_addresses=True,
)  # loopback servers


@pytest.fixture(scope="module")
def gate(ray_local: None) -> Iterator[LocalGate]:
    """One slot actor and one process's gate for the module: each test talks to hosts of
    its own."""
    actor = HostSlotActor.remote(PER_HOST, 60.0)
    gate = LocalGate(actor, PER_HOST)
    yield gate
    gate.close()
    ray.kill(actor)


def polite(url: str, settings: Settings, gate: LocalGate) -> bytes:
    """One line in a thread of its own: its token goes back at the end."""
    with HostHand(gate) as hand:
        return fetch(url, settings, hand)


@pytest.fixture
def server() -> Iterator[HostServer]:
    with HostServer() as running:
        yield running


def test_a_redirect_gives_the_first_host_token_back(gate: LocalGate, server: HostServer) -> None:
    a, b = "127.0.0.1", "localhost"
    with ThreadPoolExecutor(PER_HOST) as pool:
        held = [
            pool.submit(polite, server.at(a, f"/to/{b}/hold/{n}"), SETTINGS, gate)
            for n in range(PER_HOST)
        ]
        assert server.wait_in_flight(b, PER_HOST)  # both lines now talk to b, held there
        # Had they kept a's slots, this would wait for them until its deadline.
        assert polite(server.at(a, "/img/1"), SETTINGS, gate) == server.jpeg
        server.release.set()
        assert [line.result() for line in held] == [server.jpeg] * PER_HOST
    assert max(server.peak.values()) <= PER_HOST


@pytest.mark.parametrize(("code", "wait", "at_least"), [(503, "2", 2.0), (429, "date", 1.0)])
def test_retry_after_is_waited_once(
    gate: LocalGate, server: HostServer, code: int, wait: str, at_least: float
) -> None:
    path = f"/busy/{code}/1?{wait}"
    assert polite(server.at("127.0.0.2", path), SETTINGS, gate) == server.jpeg
    first, second = server.times[path]
    assert server.hits[path] == 2
    assert second - first >= at_least  # an HTTP date has whole seconds: 1-2 s


def test_a_retry_after_past_the_deadline_fails_and_holds_the_host(
    gate: LocalGate, server: HostServer
) -> None:
    short = Settings(deadline=2.0, per_host=PER_HOST, allow_private_addresses=True)
    with pytest.raises(Failure) as refused:
        polite(server.at("127.0.0.3", "/busy/503/1?60"), short, gate)
    assert refused.value.reason == "http_503"
    assert server.hits["/busy/503/1?60"] == 1  # no retry: the wait is past the deadline
    # The host asked for 60 s: nobody else talks to it within this deadline either.
    with pytest.raises(Failure) as waited:
        polite(server.at("127.0.0.3", "/img/2"), short, gate)
    assert waited.value.reason == "timeout"
    assert "download slots of 127.0.0.3" in waited.value.detail
    assert server.hits["/img/2"] == 0


def test_a_host_that_keeps_refusing_is_backed_off(gate: LocalGate, server: HostServer) -> None:
    no_retry = Settings(deadline=10.0, retries=0, per_host=PER_HOST, allow_private_addresses=True)
    host = "localhost"
    for n in range(REFUSALS_BEFORE_BACKOFF):
        started = time.monotonic()
        with pytest.raises(Failure):
            polite(server.at(host, f"/status/503?{n}"), no_retry, gate)
    # The refusals reach the actor with the slots given back, unawaited: wait for them.
    wait_until(lambda: host in ray.get(gate.actor.stats.remote())["backed_off"], "backed off")
    assert polite(server.at(host, "/img/3"), no_retry, gate) == server.jpeg
    # The next start waits the first pause after the last refused one.
    assert server.times["/img/3"][0] - started >= BACKOFF_FIRST


def test_a_job_never_exceeds_the_limit_per_host(
    mongo_uri: str, db: Database, tmp_path: Path, ray_local: None
) -> None:
    with HostServer(latency=0.02) as server:
        urls = write_urls(tmp_path, spread_lines(server, 120))
        assert run_itm(mongo_uri, db.name, urls, "--per-host", str(PER_HOST)) == 0
    check_polite_run(db, server, 120, PER_HOST)
