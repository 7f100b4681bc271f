"""Overload control: the API says "no" early and cheaply rather than queue.

Every read of MongoDB takes a turn (``--api-max-reads``), waits ``READ_WAIT_S`` for
it at most, and runs within the API's time limit (``--api-timeout``); while MongoDB is
known to be away a read is refused at once; reads that do not depend on the caller
are shared (``shared_read``). Each refusal is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pymongo import MongoClient
from pymongo import timeout as mongo_timeout
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, ExecutionTimeout, NetworkTimeout

from itm.api.coalesce import Coalescer
from itm.api.models import Problem

log = logging.getLogger(__name__)

# How often pymongo's monitor checks MongoDB (its minimum; its default is 10 s): while
# MongoDB is away requests are refused without asking it, so the monitor alone sees it
# come back, within this.
HEARTBEAT_MS = 500
# How long a request waits for a turn at reading MongoDB (``--api-max-reads``) before it
# is a 503: enough to ride out a burst, far below the time a client should wait for "no".
READ_WAIT_S = 0.05
# A 503 is a state of the moment (MongoDB away, a read too slow, the API busy): retry soon.
RETRY_AFTER_S = 1
RETRY_SOON = {"Retry-After": str(RETRY_AFTER_S)}
# How every route documents that 503 in the OpenAPI schema.
ERRORS: dict[int | str, dict[str, Any]] = {
    503: {
        "model": Problem,
        "description": "MongoDB does not answer, or not within the API's time limit",
    },
}


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("MongoDB error on %s %s: %r", request.method, request.url.path, exc)
    if isinstance(exc, ExecutionTimeout | NetworkTimeout):
        limit = request.app.state.time_limit * 1000
        detail = f"database read took longer than {limit:g} ms ({type(exc).__name__})"
    else:
        detail = f"database unavailable ({type(exc).__name__})"
    return JSONResponse({"detail": detail}, status_code=503, headers=RETRY_SOON)


async def busy(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the API is busy ({exc}): retry"}, status_code=503, headers=RETRY_SOON
    )


@contextmanager
def bounded(app: FastAPI) -> Iterator[None]:
    """A turn at reading MongoDB, in which every read gets the API's time limit.

    ``Busy`` (a 503) when no turn comes within ``READ_WAIT_S``: past what the
    database answers, requests are refused at once rather than queued there until
    their time limit.
    """
    with app.state.reads(), time_limited(app):
        yield


def time_limited(app: FastAPI) -> AbstractContextManager[None]:
    """A context in which every MongoDB read gets the API's time limit.

    ``pymongo.timeout`` sends the time left as ``maxTimeMS`` with each command and
    times out the socket too, so that a stuck server cannot hang a request.
    ``ConnectionFailure`` at once when MongoDB is known to be away.
    """
    _fail_fast_when_down(app.state.db.client)
    return mongo_timeout(app.state.time_limit)


def _fail_fast_when_down(client: MongoClient[Any]) -> None:
    """Refuse at once while pymongo last saw MongoDB fail (its monitor looks again every
    ``HEARTBEAT_MS``, and at once after an operation's network error).

    Without it, every request would wait its whole time limit in server selection
    while MongoDB is down. Nor does a short probe do: pymongo's selection waits in
    steps of 0.5 s whatever its timeout, so a "quick" 503 would take up to a second.
    """
    topology = client.topology_description
    if topology.has_readable_server():
        return
    for server in topology.server_descriptions().values():
        if server.error is not None:
            raise ConnectionFailure(f"MongoDB is away: {server.error}")


V = TypeVar("V")


def shared_read(
    app: FastAPI, read: Callable[[Database[Any]], V], max_age: float
) -> Coalescer[None, V]:
    """``read(db)`` within ``bounded``, shared by concurrent callers and reused ``max_age`` s."""

    def bounded_read(_: None) -> V:
        with bounded(app):
            return read(app.state.db)

    return Coalescer(bounded_read, running=1, waiting=0, cache=1, max_age=max_age)
