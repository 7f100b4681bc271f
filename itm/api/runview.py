"""A run as the API shows it: status, totals and progress, from its document (pure).

A run's document is written by the writer actor: its driver's heartbeat (about
once a second, with its oldest lines in flight), the session the driver started
(when, with how many lines done), and ``total``. The totals of a run that has not
finished are the sum of its per-minute counters (``by_run`` of ``monitoring``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any

from itm.api.models import InFlight, Run, RunProgress, RunTotals

# A driver beats about once a second; a writer busy retrying MongoDB may delay it.
STALE_AFTER = timedelta(seconds=60)


def status(run: dict[str, Any], now: datetime) -> str:
    """``finished``; ``running`` while its driver beats; else ``interrupted``."""
    if run.get("finished_at") is not None:
        return "finished"
    heartbeat = run.get("heartbeat")
    if heartbeat is not None and now - heartbeat <= STALE_AFTER:
        return "running"
    return "interrupted"


def sum_counters(counters: Iterable[dict[str, Any]]) -> RunTotals:
    """The totals of a run from its counters of each minute (``by_run.<run>``)."""
    success = error = duplicates = 0
    reasons: Counter[str] = Counter()
    for minute in counters:
        success += minute.get("success", 0)
        error += minute.get("error", 0)
        duplicates += minute.get("duplicates", 0)
        reasons.update(minute.get("reasons", {}))
    return RunTotals(
        lines=success + error,
        success=success,
        error=error,
        duplicates=duplicates,
        reasons={r: n for r, n in reasons.items() if n},
    )


def progress(run: dict[str, Any], done: int, running: bool, now: datetime) -> RunProgress:
    """Lines done of the total; while running, the rate since the driver (re)started
    and the time left at it."""
    total = run.get("total")
    fraction = min(1.0, done / total) if total else None
    rate = eta = None
    session = run.get("session")
    if running and session:
        seconds = (now - session["started_at"]).total_seconds()
        rate = (done - session["done"]) / seconds if seconds > 0 else 0.0
        if total is not None and rate > 0:
            eta = max(0, total - done) / rate
    return RunProgress(done=done, total=total, fraction=fraction, rate=rate, eta_seconds=eta)


def view(run: dict[str, Any], totals: RunTotals, now: datetime, url: str) -> Run:
    """The whole view of a run, given its totals."""
    state = status(run, now)
    in_flight = (
        [
            InFlight(**line, seconds=max(0.0, (now - line["since"]).total_seconds()))
            for line in run.get("in_flight") or []
        ]
        if state == "running"
        else []
    )
    return Run(
        id=run["_id"],
        status=state,
        input=PurePath(run["input"]).name if run.get("input") else None,
        started_at=run.get("started_at"),
        finished_at=run.get("finished_at"),
        heartbeat=run.get("heartbeat"),
        totals=totals,
        progress=progress(run, totals.lines, state == "running", now),
        in_flight=in_flight,
        retry_of=run.get("retry_of"),
        reasons=run.get("reasons"),
        retries=run.get("retries") or [],
        url=url,
    )
