"""The invariants of a database that several runs wrote: every line once, counters
equal to the events (all minutes and each run's own), each image once."""

from __future__ import annotations

from collections import Counter

from pymongo.database import Database

from itm.api.runview import sum_counters
from itm.outcomes import Counts
from itm.store import field_key


def assert_consistent(db: Database, runs: dict[str, int | list[int]], twice: bool = False) -> None:
    """Every line once per run (lines 1..n, or the lines listed); counters (all minutes)
    equal the events of all runs, by status and by reason, and each run's own counters
    (``by_run``) its events; each image once, with exactly one first line.

    ``twice``: lines of a run were processed by two drivers at once (a resume racing
    the live one), each with its own download: from a server that sends new bytes per
    request, the image of the losing attempt is stored too, under its line, while the
    line's event names the winner's image.
    """
    events = list(
        db.events.find(
            {}, {"run_id": 1, "line": 1, "status": 1, "reason": 1, "md5": 1, "duplicate": 1}
        )
    )
    minutes = list(db.monitoring.find())
    for run_id, lines in runs.items():
        numbers = sorted(event["line"] for event in events if event["run_id"] == run_id)
        assert numbers == (sorted(lines) if isinstance(lines, list) else list(range(1, lines + 1)))
        mine = [event for event in events if event["run_id"] == run_id]
        counted = sum_counters(m.get("by_run", {}).get(field_key(run_id), {}) for m in minutes)
        assert counted.model_dump() == Counts.of_events(mine).as_totals()
    statuses = Counter(event["status"] for event in events)
    assert sum(m["success"] for m in minutes) == statuses["success"]
    assert sum(m["error"] for m in minutes) == statuses["error"]
    by_reason = sum((Counter(m.get("reasons", {})) for m in minutes), Counter())
    assert by_reason == Counter(e["reason"] for e in events if e["status"] == "error")
    successes = [event for event in events if event["status"] == "success"]
    images = list(db.images.find({}, {"md5": 1, "run_id": 1, "line": 1}))
    assert len(images) == len({image["md5"] for image in images})
    firsts = {(event["run_id"], event["line"]) for event in successes if not event["duplicate"]}
    named = {(event["run_id"], event["line"]): event["md5"] for event in events}
    losers = [image for image in images if named[image["run_id"], image["line"]] != image["md5"]]
    assert not losers or twice
    # Every image stored is named by an event, but for the losers' (named by none, or
    # as a duplicate of a later line); every first line is that of its image.
    shown = {event["md5"] for event in successes}
    assert shown <= {image["md5"] for image in images}
    assert {image["md5"] for image in images} - shown <= {image["md5"] for image in losers}
    stored_by = {(image["run_id"], image["line"]) for image in images}
    assert firsts <= stored_by
    assert stored_by - firsts <= {(image["run_id"], image["line"]) for image in losers}
