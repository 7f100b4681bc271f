"""Re-running what failed (``--retry-failed``, ``--reasons``): itm/job/retry.py.

Real parts: the session's SecantusDB and local Ray, ``python -m itm.run`` in this
process, a local picsum that records every path asked of it, the API through
FastAPI's TestClient.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pymongo.database import Database

from itm.api import create_app
from itm.config import Settings
from itm.job.fingerprint import fingerprint
from itm.job.retry_run import RetryRun, merge
from itm.job.writer import MongoWriter
from itm.outcomes import Failure
from tests.support.apiclient import api_client
from tests.support.consistency import assert_consistent
from tests.support.jobs import run_itm, write_urls
from tests.support.servers import RecordingPicsum

LINES = 40


def mixed(base: str) -> list[str]:
    """Every line's path is its own: successes, 404s, 400s and lines that are no URL."""
    kinds = [f"{base}/8/{{n}}", f"{base}/error/{{n}}", f"{base}/6000/{{n}}", "not a url {n}"]
    return [kinds[n % 4].format(n=n) for n in range(1, LINES + 1)]


def path_of(line: str) -> str:
    return re.sub(r"^http://[^/]+", "", line)


@pytest.fixture
def picsum() -> Iterator[RecordingPicsum]:
    with RecordingPicsum() as server:
        yield server


@pytest.fixture
def client(mongo_uri: str, db_name: str) -> Iterator[TestClient]:
    with api_client(create_app(Settings(mongo_uri=mongo_uri, db=db_name))) as test_client:
        yield test_client


def failed(db: Database, run_id: str, *reasons: str) -> list[int]:
    query = {"run_id": run_id, "status": "error"} | (
        {"reason": {"$in": reasons}} if reasons else {}
    )
    return sorted(event["line"] for event in db.events.find(query))


def test_retry_failed_attempts_exactly_the_failed_lines_and_links_the_runs(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
    picsum: RecordingPicsum,
    client: TestClient,
) -> None:
    lines = mixed(picsum.url)
    urls = write_urls(tmp_path, lines)
    assert run_itm(mongo_uri, db.name, urls) == 0
    (first,) = [run["_id"] for run in db.runs.find()]
    assert len(picsum.take()) == 30  # every line but those that are no URL
    http_4xx = failed(db, first, "http_404", "http_400")
    assert len(http_4xx) == 20 and len(failed(db, first)) == 30

    # A class of reasons: the 404s and 400s are asked again, nothing else.
    assert run_itm(mongo_uri, db.name, urls, "--retry-failed", first, "--reasons", "http_4xx") == 0
    (second,) = [run["_id"] for run in db.runs.find({"_id": {"$ne": first}})]
    assert picsum.take() == sorted(path_of(lines[n - 1]) for n in http_4xx)
    # Every failed line, from the file (the events hold no credentials, the file does).
    assert run_itm(mongo_uri, db.name, urls, "--retry-failed", first) == 0
    (third,) = [run["_id"] for run in db.runs.find({"_id": {"$nin": [first, second]}})]
    assert picsum.take() == sorted(path_of(lines[n - 1]) for n in http_4xx)
    assert failed(db, third) == failed(db, first)  # the same failures, the same line numbers
    assert_consistent(db, {first: LINES, second: http_4xx, third: failed(db, first)})
    events = db.events.find({"run_id": third}, {"line": 1, "url": 1})
    assert all(event["url"] == lines[event["line"] - 1] for event in events)

    view = client.get(f"/runs/{first}").json()
    assert view["status"] == "finished" and sorted(view["retries"]) == sorted([second, third])
    assert view["totals"]["reasons"] == {"http_404": 10, "http_400": 10, "invalid_url": 10}
    assert view["progress"]["done"] == view["progress"]["total"] == LINES
    retried = client.get(f"/runs/{second}").json()
    assert (retried["retry_of"], retried["reasons"]) == (first, ["http_4xx"])
    assert retried["progress"]["total"] == 20 and retried["totals"]["error"] == 20
    assert retried["input"] == urls.name  # the file's name: the server's path stays private
    assert db.runs.find_one({"_id": second})["input"] == str(urls.resolve())  # for a retry

    page = client.get("/runs", params={"limit": 2}).json()
    assert [run["id"] for run in page["items"]] == [third, second]  # newest first
    rest = client.get("/runs", params={"limit": 2, "cursor": page["next"]}).json()
    assert [run["id"] for run in rest["items"]] == [first] and rest["next"] is None
    assert client.get("/runs", params={"cursor": "nope"}).status_code == 400
    unknown = client.get("/runs/no-such-run")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "no run no-such-run"}
    html = client.get("/").text
    assert f'<a href="/runs/{second}">' in html and "finished" in html


def test_retry_refuses_what_it_cannot_do(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = write_urls(tmp_path, [f"not a url {n}" for n in range(10)])
    assert run_itm(mongo_uri, db.name, urls, "--retry-failed", "nope") == 1
    assert "no run 'nope' to retry" in capsys.readouterr().err
    MongoWriter(mongo_uri, db.name).start_run("done", str(urls), False, fingerprint(urls))
    with pytest.raises(SystemExit) as usage:
        run_itm(mongo_uri, db.name, urls, "--retry-failed", "done", "--reasons", "timeout,oops")
    assert usage.value.code == 2
    assert "unknown reason(s) oops; valid: " in capsys.readouterr().err
    urls.write_text("not a url\n" * 12)  # another file now: its line numbers name other URLs
    assert run_itm(mongo_uri, db.name, urls, "--retry-failed", "done") == 1
    assert "--force-resume" in capsys.readouterr().err
    urls.unlink()
    assert run_itm(mongo_uri, db.name, urls, "--retry-failed", "done") == 1
    assert "is gone" in capsys.readouterr().err


def test_a_resumed_retry_processes_the_failed_lines_it_has_not_done(
    mongo_uri: str,
    db: Database,
    ray_local: None,
    tmp_path: Path,
    picsum: RecordingPicsum,
) -> None:
    lines = mixed(picsum.url)
    urls = write_urls(tmp_path, lines)
    assert run_itm(mongo_uri, db.name, urls) == 0
    (first,) = [run["_id"] for run in db.runs.find()]
    picsum.take()
    todo = failed(db, first, "http_404")
    # A retry whose driver died after its first three lines.
    writer = MongoWriter(mongo_uri, db.name)
    writer.start_run(
        "retry", str(urls.resolve()), False, None, False, len(todo), first, ["http_404"]
    )
    writer.write(
        "retry",
        [(n, lines[n - 1]) for n in todo[:3]],
        [None] * 3,
        [Failure("http_404", "still")] * 3,
    )
    assert run_itm(mongo_uri, db.name, urls, "--resume", "retry") == 0
    assert picsum.take() == sorted(path_of(lines[n - 1]) for n in todo[3:])
    assert_consistent(db, {first: LINES, "retry": todo})


def test_a_retry_reads_the_same_failed_lines_before_and_after_its_run_finished(
    mongo_uri: str, db: Database, tmp_path: Path
) -> None:
    """Unfinished, the failed lines are counted from the run's events; finished, from its totals."""
    lines = [f"http://example.com/{n}" for n in range(1, 13)]
    urls = write_urls(tmp_path, lines)
    reasons = ["invalid_url", "http_404", "http_503", "timeout"]
    writer = MongoWriter(mongo_uri, db.name)
    writer.start_run("cut", str(urls.resolve()), False, None, False, len(lines), None, None)
    failures = [Failure(reasons[n % 4], "failed") for n in range(1, 13)]
    writer.write("cut", list(enumerate(lines, 1)), [None] * 12, failures)
    retry = RetryRun("cut", ["http_4xx", "timeout"], urls)
    wanted = [(n, lines[n - 1]) for n in range(1, 13) if n % 4 in (1, 3)]
    for finished in (False, True):
        if finished:
            writer.finish_run("cut")
        assert retry.count(db) == len(wanted)
        assert list(retry.lines(db, ())) == wanted
        assert list(retry.lines(db, {1, 3})) == wanted[2:]
        assert RetryRun("cut", None, urls).count(db) == 12


def test_merge_keeps_the_lines_named_in_order() -> None:
    lines = [(n, f"line {n}") for n in (1, 2, 4, 5, 7)]
    assert list(merge([2, 3, 5, 9], iter(lines))) == [(2, "line 2"), (5, "line 5")]
    assert list(merge([], iter(lines))) == []
