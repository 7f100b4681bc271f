"""Re-running what failed: the failed lines of a run, read again from its input file.

Events keep a redacted, truncated URL; the input file keeps the line itself. So a
retry run (``--retry-failed``) streams the run's events from ``events`` (in line
order, a window of lines at a time), keeps the failed ones in the driver, and
merge-joins their numbers with a streaming read of the input: the URLs come from
the file, the line numbers stay the original ones, and the driver holds one window
of events and one line at a time, however long the run. The windows carry no filter
on ``status`` or ``reason``: with one, SecantusDB leaves the (``run_id``, ``line``)
index and scans the whole collection for every window.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo.database import Database

from itm import store
from itm.job.fingerprint import fingerprint
from itm.job.lines import read_lines
from itm.outcomes import Line, reason_filter


@dataclass(frozen=True)
class RetryRun:
    """What a retry run processes: the failed lines of ``of`` (for ``reasons``, or all)."""

    of: str
    reasons: list[str] | None
    urls: Path  # the input file of ``of``

    def count(self, db: Database[Any]) -> int:
        """How many lines the retry run processes in all: from the run's totals once it finished."""
        run = db[store.RUNS].find_one({"_id": self.of}, {"totals.reasons": 1})
        reasons = (run or {}).get("totals", {}).get("reasons")
        if reasons is None:  # not finished: count its failed events
            return sum(1 for _ in self._failed(db))
        wanted = reason_filter(self.reasons)
        return sum(n for reason, n in reasons.items() if wanted(reason))

    def lines(self, db: Database[Any], done: Container[int]) -> Iterator[Line]:
        """The lines to process, from the input file, without those ``in done``."""
        return merge(self._failed(db), read_lines(self.urls, done))

    def _failed(self, db: Database[Any]) -> Iterator[int]:
        """The numbers of the run's lines to process again, ascending."""
        wanted = reason_filter(self.reasons)
        events = store.events_by_line(db, self.of, {"status": 1, "reason": 1})
        return (e["line"] for e in events if e["status"] == "error" and wanted(e["reason"]))


def merge(numbers: Iterable[int], lines: Iterable[Line]) -> Iterator[Line]:
    """The ``lines`` whose number is in ``numbers``; both ascending, both streamed."""
    lines = iter(lines)
    line = next(lines, None)
    for number in numbers:
        while line is not None and line[0] < number:
            line = next(lines, None)
        if line is None:
            return
        if line[0] == number:
            yield line


def plan_retry_run(
    db: Database[Any], retry_of: str, reasons: list[str] | None, force: bool
) -> RetryRun:
    """The retry run of ``retry_of``; ``ValueError`` if that run, or its unchanged input, is gone.

    The input must be the very file the run read (same fingerprint): line numbers of
    another file name other URLs. ``force`` takes the file as it is.
    """
    run = db[store.RUNS].find_one({"_id": retry_of}, {"input": 1, "fingerprint": 1})
    if run is None:
        raise ValueError(f"no run {retry_of!r} to retry in database {db.name!r}")
    urls = Path(run["input"])
    if not urls.is_file():
        raise ValueError(
            f"the input file of run {retry_of}, {urls}, is gone: a retry reads "
            "the failed lines from it again"
        )
    known, now = run.get("fingerprint"), fingerprint(urls)
    if known and known != now and not force:
        raise ValueError(
            f"{urls} is not the file run {retry_of} read (size or content "
            f"changed: {known} then, {now} now); restore it, or pass "
            "--force-resume to retry its line numbers in the file as it is"
        )
    return RetryRun(retry_of, reasons, urls)


def resumed_retry_run(db: Database[Any], run_id: str, force: bool) -> RetryRun | None:
    """The retry run a resumed run carries on, or ``None`` when it is not a retry run.

    A retry run remembers what it retries (``retry_of``, ``reasons``), so its resume
    processes the same failed lines, minus those it has done.
    """
    run = db[store.RUNS].find_one({"_id": run_id}, {"retry_of": 1, "reasons": 1})
    if run is None or not run.get("retry_of"):
        return None
    return plan_retry_run(db, run["retry_of"], run.get("reasons"), force)
