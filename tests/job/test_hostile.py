"""Hostile servers against the real downloader, and a hostile list through the whole job.

The servers are real, on 127.0.0.1; the downloader is opted in to loopback
(``allow_private_addresses``) except where the address policy itself is tested.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

import itm.job.download
from itm.config import Settings
from itm.job.download import fetch
from itm.job.lines import MAX_LINE
from itm.job.urls import address_refusal
from itm.outcomes import Failure
from tests.support.hostile_servers import HostileServer
from tests.support.jobs import run_itm
from tests.support.waiting import JOB_SLACK, SLACK

DEADLINE = 3.0
# Loopback test servers: opted in to private addresses, explicitly.
OPTED_IN = Settings(
    connect_timeout=1.0,
    read_timeout=1.0,
    deadline=DEADLINE,
    retries=2,
    max_bytes=1_000_000,
    max_redirects=3,
    allow_private_addresses=True,
)
BLOCKING = dataclasses.replace(OPTED_IN, allow_private_addresses=False)  # the default


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as running:
        yield running


def outcome(url: str, settings: Settings = OPTED_IN) -> tuple[str, float]:
    """(reason or "success", seconds) of one fetch."""
    started = time.monotonic()
    try:
        fetch(url, settings)
        reason = "success"
    except Failure as failure:
        assert failure.detail
        reason = failure.reason
    return reason, time.monotonic() - started


@pytest.mark.parametrize("path", ["/drip-status", "/drip-headers", "/drip-body"])
def test_a_dripping_answer_ends_at_the_deadline(server: HostileServer, path: str) -> None:
    reason, seconds = outcome(server.url + path)
    assert reason == "timeout"  # never not_an_image: the headers never ended
    assert DEADLINE - 0.1 <= seconds < DEADLINE + SLACK


@pytest.mark.parametrize(
    "path",
    [
        "/drip-redirect-body",
        "/endless-redirect-body",
        "/big-redirect",
        "/big-redirect-no-length",
        "/gzip-bomb-redirect",
    ],
)
def test_a_redirect_body_is_never_read(server: HostileServer, path: str) -> None:
    assert outcome(server.url + path)[0] == "success"
    assert server.hits["/ok.jpg"] == 1
    # The 300 MB, the endless and the dripping body were left unread: at most what the
    # sockets' buffers took before the client hung up.
    assert server.flooded.get(path, 0) < 32 * 2**20


def test_a_gzip_bomb_counts_decompressed(server: HostileServer) -> None:
    assert fetch(server.url + "/gzip.jpg", OPTED_IN) == server.jpeg
    assert outcome(server.url + "/gzip-bomb")[0] == "too_large"


def test_retry_after_seconds_and_dates_are_honoured(server: HostileServer) -> None:
    for query in ("2", "date"):
        path = "/retry-after"
        server.hits.clear()
        server.times.clear()
        assert fetch(f"{server.url}{path}?{query}", OPTED_IN) == server.jpeg
        first, second = server.times[path]
        assert server.hits[path] == 2
        assert second - first >= (2 if query == "2" else 1)


def test_a_retry_after_past_the_deadline_fails_at_once(server: HostileServer) -> None:
    reason, seconds = outcome(f"{server.url}/retry-after?60")
    assert reason == "http_503"
    assert server.hits["/retry-after"] == 1
    assert seconds < DEADLINE  # no wait for the retry, none until the deadline


def test_a_retry_after_in_other_digits_is_no_wait_and_still_retried(
    server: HostileServer,
) -> None:
    # "²" passes str.isdigit(), not int(): the 503 is transient, retried after the backoff.
    assert fetch(f"{server.url}/retry-after?%B2", OPTED_IN) == server.jpeg
    assert server.hits["/retry-after"] == 2


@pytest.mark.parametrize("length", ["%B9%B2", "12abc", "-5", ""])
def test_a_content_length_that_is_no_number_is_only_a_hint(
    server: HostileServer, length: str
) -> None:
    assert fetch(f"{server.url}/length?{length}", OPTED_IN) == server.jpeg


def test_a_redirect_to_an_international_host_is_idna_encoded(server: HostileServer) -> None:
    """As an input line's: the hop's host resolves as xn--bcher-kva.example (which no
    resolver knows), never as b%C3%BCcher.example."""
    with pytest.raises(Failure) as caught:
        fetch(f"{server.url}/to?http://bücher.example/x.png", OPTED_IN)
    assert caught.value.reason == "connection_error"
    assert "cannot resolve xn--bcher-kva.example" in caught.value.detail


def test_connections_are_reused_across_urls(server: HostileServer) -> None:
    for _ in range(5):
        assert fetch(f"{server.url}/to?/ok.jpg", OPTED_IN) == server.jpeg
    assert server.connections == 1  # ten requests, redirects included, on one connection


LOOPBACK_FORMS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f.1",
    "0x7f000001",
    "0177.0.0.1",
    "017700000001",
    "0x7f.0.0.1",
    "127.255.255.254",
    "localhost",
    "0",
    "0.0.0.0",
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "[::127.0.0.1]",
]


def test_every_form_of_loopback_is_refused_without_a_connection(server: HostileServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    for host in LOOPBACK_FORMS:
        with pytest.raises(Failure) as caught:
            fetch(f"http://{host}:{port}/ok.jpg", BLOCKING)
        assert caught.value.reason == "blocked_address", host
        assert "--allow-private-addresses" in caught.value.detail or "never" in caught.value.detail
    assert server.connections == 0


def test_unspecified_stays_blocked_when_private_is_allowed(server: HostileServer) -> None:
    # 0.0.0.0 reaches this machine's services: a redirect there is refused, opt-in or not.
    port = server.url.rsplit(":", 1)[1]
    with pytest.raises(Failure) as caught:
        fetch(f"{server.url}/to?http://0.0.0.0:{port}/ok.jpg", OPTED_IN)
    assert caught.value.reason == "blocked_address"
    assert "0.0.0.0" in caught.value.detail
    assert "/ok.jpg" not in server.hits


def test_a_redirect_to_loopback_is_refused_at_its_hop(
    server: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first hop stands in for a public server (no test may reach one): the address
    policy is told that its first address is public; every later hop meets the real one."""
    asked: list[str] = []

    def first_hop_public(address: object, settings: Settings) -> str | None:
        asked.append(str(address))
        return None if len(asked) == 1 else address_refusal(address, settings)

    monkeypatch.setattr(itm.job.download, "address_refusal", first_hop_public)
    with HostileServer() as target:
        port = target.url.rsplit(":", 1)[1]
        for host in ("127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]"):
            asked.clear()
            with pytest.raises(Failure) as caught:
                fetch(f"{server.url}/to?http://{host}:{port}/ok.jpg", BLOCKING)
            assert caught.value.reason == "blocked_address"
            assert "loopback" in caught.value.detail
        assert target.connections == 0  # the target saw nothing, not even a connection
    assert server.hits["/to"] == 4


def test_credentials_are_never_sent(server: HostileServer) -> None:
    for url in (
        f"http://user:secret@{server.url[7:]}/ok.jpg",
        f"{server.url}/to?http://user:secret@{server.url[7:]}/ok.jpg",
    ):
        with pytest.raises(Failure) as caught:
            fetch(url, OPTED_IN)
        assert caught.value.reason == "invalid_url"
        assert "secret" not in caught.value.detail
    assert "/ok.jpg" not in server.hits


def test_a_hostile_list_ends_within_its_deadline(
    mongo_uri: str,
    mongo_client: MongoClient,
    db_name: str,
    ray_local: None,
    server: HostileServer,
    tmp_path: Path,
) -> None:
    """Every hostile case in one job, in one batch: it ends at the deadline, each line
    with its own outcome."""
    port = server.url.rsplit(":", 1)[1]
    cases = {
        "/drip-status": "timeout",
        "/drip-headers": "timeout",
        "/drip-body": "timeout",
        "/drip-redirect-body": "success",
        "/endless-redirect-body": "success",
        "/big-redirect": "success",
        "/big-redirect-no-length": "success",
        "/gzip-bomb-redirect": "success",
        "/gzip-bomb": "too_large",
        f"/to?http://0.0.0.0:{port}/ok.jpg": "blocked_address",
    }
    lines = [server.url + path for path in cases]
    lines += [f"http://user:secret@{server.url[7:]}/ok.jpg", server.url + "/" + "a" * 3000]
    urls = tmp_path / "urls.txt"
    with urls.open("w") as out:
        out.write("\n".join(lines) + "\n")
        out.write("http://x/" + "y" * (17 * 2**20) + "\n")  # 17 MB: over a MongoDB document
    started = time.monotonic()
    code = run_itm(
        mongo_uri,
        db_name,
        urls,
        "--deadline",
        str(DEADLINE),
        "--batch-size",
        "16",
        "--max-bytes",
        "1000000",
        "--read-timeout",
        "1",
    )
    seconds = time.monotonic() - started
    assert code == 0
    events = list(mongo_client[db_name].events.find().sort("line"))
    reasons = [event.get("reason") or event["status"] for event in events]
    assert reasons == [*cases.values(), "invalid_url", "invalid_url", "invalid_url"]
    assert "secret" not in events[len(cases)]["url"]
    assert "line too long" in events[-1]["detail"]
    assert len(events[-1]["url"]) <= MAX_LINE + 1
    assert seconds <= DEADLINE + JOB_SLACK


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(row.split()[1]) for row in status if row.startswith("VmHWM")) / 1024


def test_a_file_without_newline_keeps_the_driver_flat(
    mongo_uri: str,
    mongo_client: MongoClient,
    db_name: str,
    ray_local: None,
    tmp_path: Path,
) -> None:
    urls = tmp_path / "urls.txt"
    with urls.open("wb") as out:
        for _ in range(200):
            out.write(b"y" * 2**20)  # 200 MB, no newline
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from now
    before = peak_rss_mib()
    assert run_itm(mongo_uri, db_name, urls) == 0
    assert peak_rss_mib() - before < 100  # the line would be 200 MB and more
    (event,) = mongo_client[db_name].events.find()
    assert event["reason"] == "invalid_url" and "line too long" in event["detail"]
