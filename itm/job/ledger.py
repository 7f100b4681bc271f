"""The run ledger: a run's document, from its start through its heartbeats to its totals.

A run is opened once and reopened by each resume (which refuses another input file),
beats while its driver is alive, and is closed with totals computed from its events.
Its counters are the batch writer's (``itm.job.writer``): a resume has the writer
count first what a writer that died left uncounted. Every method is idempotent: the
writer actor retries it while MongoDB is unreachable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

from pymongo.database import Database

from itm import store
from itm.job.lineset import LineSet
from itm.outcomes import Counts


def utcnow() -> datetime:
    # MongoDB keeps milliseconds: truncate now, so that what is returned equals what is stored.
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class RunLedger:
    """The ``runs`` collection of one database."""

    def __init__(self, db: Database[Any]) -> None:
        self.db = db
        self.runs = db[store.RUNS]

    def start(
        self,
        run_id: str,
        source: str,
        resume: bool,
        settle: Callable[[str], LineSet],
        fingerprint: dict[str, Any] | None = None,
        force: bool = False,
        total: int | None = None,
        retry_of: str | None = None,
        reasons: list[str] | None = None,
    ) -> LineSet:
        """Open (or, with ``resume``, reopen) a run; return the lines that already have an outcome.

        A resume refuses an input whose ``fingerprint`` differs from the run's (unless
        ``force``), and ``settle``\\ s the run first: its done lines, once the complete
        tallies that no minute holds are counted (a writer died between its events and
        its counters). ``total`` is the lines the run has to process in all (progress);
        a run that retries the failed lines of ``retry_of`` (for ``reasons``, or all) is
        listed there.
        """
        now = utcnow()
        if not resume:
            doc = store.run_doc(
                run_id,
                source,
                now,
                cast("store.FingerprintDoc | None", fingerprint),
                total,
                retry_of,
                reasons,
            )
            new = {name: value for name, value in doc.items() if name != "_id"}
            self.runs.update_one({"_id": run_id}, {"$setOnInsert": new}, upsert=True)
            if retry_of is not None:
                self.runs.update_one({"_id": retry_of}, {"$addToSet": {"retries": run_id}})
            return LineSet()
        run = self.runs.find_one({"_id": run_id}, {"fingerprint": 1})
        if run is None:
            raise ValueError(f"no run {run_id!r} to resume in database {self.db.name!r}")
        known = run.get("fingerprint")
        if known and fingerprint and known != fingerprint and not force:
            raise ValueError(
                f"{source} is not the file run {run_id} started on (size or content "
                f"changed: {known} then, {fingerprint} now); resume with the original "
                "file, or pass --force-resume to resume anyway"
            )
        done = settle(run_id)
        session: store.SessionDoc = {"started_at": now, "done": len(done)}
        reopened: dict[str, Any] = {
            "finished_at": None,
            "heartbeat": now,
            "in_flight": [],
            "session": session,
        }
        reopened |= {"fingerprint": fingerprint} if fingerprint else {}
        reopened |= {"total": total} if total is not None else {}
        self.runs.update_one({"_id": run_id}, {"$set": reopened})
        return done

    def beat(self, run_id: str, in_flight: list[dict[str, Any]]) -> None:
        """The driver's heartbeat: it is alive, and these lines are its oldest in flight
        (``line``, ``url``, ``since``). A run whose heartbeat stops, unfinished, lost its
        driver."""
        self.runs.update_one(
            {"_id": run_id}, {"$set": {"heartbeat": utcnow(), "in_flight": in_flight}}
        )

    def finish(self, run_id: str) -> Counts:
        """Close a run with its totals, computed from its events (exact even after a resume)."""
        # Alive while the totals are computed (a long run's events take a while).
        self.runs.update_one({"_id": run_id}, {"$set": {"heartbeat": utcnow()}})
        groups = store.by_window(
            self.db,
            run_id,
            lambda window: self.db[store.EVENTS].aggregate(
                [
                    {"$match": window},
                    {
                        "$group": {
                            "_id": {
                                "status": "$status",
                                "reason": "$reason",
                                "duplicate": "$duplicate",
                            },
                            "n": {"$sum": 1},
                        }
                    },
                ]
            ),
        )
        counts = Counts.of_events(group["_id"] | {"n": group["n"]} for group in groups)
        totals = counts.as_totals()
        now = utcnow()
        self.runs.update_one(
            {"_id": run_id},
            {"$set": {"finished_at": now, "heartbeat": now, "totals": totals, "in_flight": []}},
        )
        return counts
