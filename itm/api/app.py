"""The HTTP API: one FastAPI app over itm's MongoDB data.

Importable and testable without Ray (``itm.api.serving`` deploys it on Ray Serve;
``uvicorn --factory itm.api:create_app`` runs it alone). It only reads: the
writer actor of the job is the only writer. MongoDB being away is a state of the
world, not a bug: every route answers 503 then, and the app recovers by itself
when MongoDB returns.

This module builds the app; its routes are ``itm.api.routes``, the bounds on its
reads of MongoDB ``itm.api.overload``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pymongo.errors import PyMongoError

from itm import __version__
from itm.api.coalesce import Busy, Gate
from itm.api.guard import guard
from itm.api.overload import HEARTBEAT_MS, READ_WAIT_S, busy, database_unavailable
from itm.api.routes import Snapshots, router
from itm.api.timing import ServerTimingMiddleware
from itm.config import Settings
from itm.store import connect

# How long the API's client waits for MongoDB to answer at all (server selection and
# connection; ``store.connect``): short enough that /healthz answers 503 quickly while
# MongoDB is away. The time limit of a request's reads is ``--api-timeout``.
CONNECT_TIMEOUT_MS = 2000


def require_mongo_uri(settings: Settings) -> str:
    """The URI the API reads from: it never starts a database of its own."""
    if not settings.mongo_uri:
        raise ValueError(
            "the API needs a MongoDB URI: set ITM_MONGO_URI (e.g. "
            "mongodb://localhost:27017), or use `python -m itm.run`, which serves the API "
            "against the database of its job"
        )
    return settings.mongo_uri


def create_app(
    settings: Settings | None = None, *, timeout_ms: int = CONNECT_TIMEOUT_MS
) -> FastAPI:
    """The API over ``settings.mongo_uri``/``settings.db`` (from ``ITM_*`` variables by default)."""
    settings = Settings.from_env() if settings is None else settings
    uri = require_mongo_uri(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # pymongo connects in the background: a MongoDB that is down does not stop
        # the app from starting, and the client reconnects when it comes back.
        client = connect(uri, timeout_ms=timeout_ms, heartbeatFrequencyMS=HEARTBEAT_MS)
        app.state.db = client[settings.db]
        try:
            yield
        finally:
            client.close()

    # FastAPIOffline: /docs loads Swagger UI from the app itself, not from a CDN, so the
    # documentation works offline; no validator badge (it would send the schema's URL to
    # swagger.io), no /redoc (ReDoc still fetches its logo from its CDN).
    app = FastAPIOffline(
        redoc_url=None,
        title="itm",
        version=__version__,
        summary="The images and the per-minute monitoring of itm's jobs, from MongoDB.",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.time_limit = settings.api_timeout  # of a request's reads
    app.state.ray_dashboard = settings.ray_dashboard_url
    app.state.reads = Gate(settings.api_max_reads, READ_WAIT_S, "requests reading MongoDB")
    app.state.snapshots = Snapshots(app, settings.api_snapshot_s)
    app.add_exception_handler(PyMongoError, database_unavailable)
    app.add_exception_handler(Busy, busy)
    app.add_middleware(ServerTimingMiddleware)
    guard(app, settings)
    app.include_router(router)
    return app
