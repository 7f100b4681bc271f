"""Every way a download can fail, against real local servers."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from itm.config import Settings, free_port
from itm.job.download import fetch
from itm.outcomes import Failure
from tests.support.servers import FaultServer
from tests.support.waiting import SLACK

# The test servers are on loopback: opted in to private addresses, explicitly.
SETTINGS = Settings(
    connect_timeout=1.0,
    read_timeout=0.5,
    deadline=2.0,
    retries=2,
    max_bytes=1_000_000,
    max_redirects=3,
    allow_private_addresses=True,
)


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


def reason_of(url: str, settings: Settings = SETTINGS) -> str:
    with pytest.raises(Failure) as caught:
        fetch(url, settings)
    assert caught.value.detail
    return caught.value.reason


def test_ok_returns_exact_bytes(server: FaultServer) -> None:
    body = fetch(f"{server.url}/ok.jpg", SETTINGS)
    assert hashlib.md5(body).hexdigest() == hashlib.md5(server.jpeg).hexdigest()


@pytest.mark.parametrize("code", [400, 404, 500])
def test_http_errors_are_not_retried(server: FaultServer, code: int) -> None:
    assert reason_of(f"{server.url}/status/{code}") == f"http_{code}"
    assert server.hits[f"/status/{code}"] == 1


@pytest.mark.parametrize("code", [429, 502, 503, 504])
def test_transient_statuses_are_retried(server: FaultServer, code: int) -> None:
    assert fetch(f"{server.url}/flaky/{code}/2", SETTINGS) == server.jpeg
    assert server.hits[f"/flaky/{code}/2"] == 3


def test_retries_are_bounded(server: FaultServer) -> None:
    assert reason_of(f"{server.url}/flaky/503/10") == "http_503"
    assert server.hits["/flaky/503/10"] == SETTINGS.retries + 1


def test_connection_refused() -> None:
    assert reason_of(f"http://127.0.0.1:{free_port()}/x.jpg") == "connection_error"


def test_connection_closed_without_answer(server: FaultServer) -> None:
    assert reason_of(f"{server.url}/reset") == "connection_error"
    assert server.hits["/reset"] == SETTINGS.retries + 1


def test_stalled_body_hits_the_read_timeout(server: FaultServer) -> None:
    started = time.monotonic()
    assert reason_of(f"{server.url}/stall") == "timeout"
    assert time.monotonic() - started < SETTINGS.deadline + SLACK


def test_dripping_body_hits_the_total_deadline(server: FaultServer) -> None:
    started = time.monotonic()
    assert reason_of(f"{server.url}/slow-body") == "timeout"
    assert time.monotonic() - started < SETTINGS.deadline + SLACK


@pytest.mark.parametrize("path", ["/big", "/big-no-length"])
def test_oversized_body(server: FaultServer, path: str) -> None:
    assert reason_of(f"{server.url}{path}") == "too_large"


def test_redirect_loop(server: FaultServer) -> None:
    assert reason_of(f"{server.url}/loop") == "too_many_redirects"


def test_redirect_to_file_is_never_followed(server: FaultServer) -> None:
    assert reason_of(f"{server.url}/to-file") == "invalid_url"


@pytest.mark.parametrize("line", ["file:///etc/passwd", "garbage", "ftp://example.com/a.jpg", ""])
def test_invalid_lines_never_reach_the_network(line: str) -> None:
    assert reason_of(line) == "invalid_url"
