"""The HTTP API: one FastAPI app over itm's MongoDB data.

Importable and testable without Ray (``itm.api.serving`` deploys it on Ray Serve;
``uvicorn --factory itm.api:create_app`` runs it alone). It only reads: the
writer actor of the job is the only writer. MongoDB being away is a state of the
world, not a bug: every route answers 503 then, and the app recovers by itself
when MongoDB returns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from gridfs.errors import NoFile
from pydantic import BeforeValidator
from pymongo import MongoClient
from pymongo import timeout as mongo_timeout
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, ExecutionTimeout, NetworkTimeout, PyMongoError

from itm import __version__
from itm.api import queries, runview
from itm.api.chart import histogram_png
from itm.api.coalesce import Busy, Coalescer, Gate
from itm.api.dashboard import render_dashboard
from itm.api.guard import guard
from itm.api.histogram import chart_buckets, totals
from itm.api.models import (
    Health,
    ImageItem,
    ImagePage,
    Monitoring,
    Problem,
    Run,
    RunPage,
    RunTotals,
)
from itm.api.timing import ServerTimingMiddleware
from itm.config import Settings
from itm.store import connect

log = logging.getLogger(__name__)

# Short enough that /healthz answers 503 quickly while MongoDB is away.
MONGO_TIMEOUT_MS = 2000
# How often pymongo's monitor checks MongoDB (its minimum; its default is 10 s): while
# MongoDB is away requests are refused without asking it, so the monitor alone sees it
# come back, within this.
HEARTBEAT_MS = 500
# How long a request waits for a turn at reading MongoDB (``--api-max-reads``) before it
# is a 503: enough to ride out a burst, far below the time a client should wait for "no".
READ_WAIT_S = 0.05
MD5_PATTERN = r"^[0-9a-fA-F]{32}$"
# An md5 names its content for ever, so browsers and proxies may keep it a year.
IMMUTABLE = "public, max-age=31536000, immutable"
PNG = "image/png"
DEFAULT_PAGE = 24
MAX_PAGE = 200
GALLERY_SIZE = 24
RECENT_RUNS = 10

ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_only(value: object) -> object:
    """Refuse what pydantic would also take for a datetime (Unix times, bare dates)."""
    if isinstance(value, str) and not ISO_DATETIME.match(value):
        raise ValueError("expected an ISO 8601 date and time, e.g. 2026-01-02T03:04:00Z")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]

ERRORS: dict[int | str, dict[str, Any]] = {
    503: {
        "model": Problem,
        "description": "MongoDB does not answer, or not within the API's time limit",
    },
}
# A 503 is a state of the moment (MongoDB away, a read too slow, the API busy): retry soon.
RETRY_AFTER_S = 1
RETRY_SOON = {"Retry-After": str(RETRY_AFTER_S)}


def require_mongo_uri(settings: Settings) -> str:
    """The URI the API reads from: it never starts a database of its own."""
    if not settings.mongo_uri:
        raise ValueError(
            "the API needs a MongoDB URI: set ITM_MONGO_URI (e.g. "
            "mongodb://localhost:27017), or use `python -m itm.run`, which serves the API "
            "against the database of its job"
        )
    return settings.mongo_uri


def create_app(settings: Settings | None = None, *, timeout_ms: int = MONGO_TIMEOUT_MS) -> FastAPI:
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
    app.state.read_timeout = settings.api_timeout
    app.state.ray_dashboard = settings.ray_dashboard_url
    app.state.reads = Gate(settings.api_max_reads, READ_WAIT_S, "requests reading MongoDB")
    app.state.snapshots = Snapshots(app, settings.api_snapshot_s)
    app.add_exception_handler(PyMongoError, _database_unavailable)
    app.add_exception_handler(Busy, _busy)
    app.add_middleware(ServerTimingMiddleware)
    guard(app, settings)
    app.include_router(router)
    return app


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("MongoDB error on %s %s: %r", request.method, request.url.path, exc)
    if isinstance(exc, ExecutionTimeout | NetworkTimeout):
        limit = request.app.state.read_timeout * 1000
        detail = f"database read took longer than {limit:g} ms ({type(exc).__name__})"
    else:
        detail = f"database unavailable ({type(exc).__name__})"
    return JSONResponse({"detail": detail}, status_code=503, headers=RETRY_SOON)


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the API is busy ({exc}): retry"}, status_code=503, headers=RETRY_SOON
    )


def get_db(request: Request) -> Database[Any]:
    db: Database[Any] = request.app.state.db
    return db


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
    return mongo_timeout(app.state.read_timeout)


def _fail_fast_when_down(client: MongoClient[Any]) -> None:
    """Refuse at once while pymongo last saw MongoDB fail (its monitor looks again every
    ``HEARTBEAT_MS``, and at once after an operation's network error).

    Without it, every request would wait its whole time limit in server selection
    while MongoDB is down. Nor does a short probe do: pymongo's selection waits in
    steps of 0.5 s whatever its timeout, so each "quick" 503 took 0.4-1 s.
    """
    topology = client.topology_description
    if topology.has_readable_server():
        return
    for server in topology.server_descriptions().values():
        if server.error is not None:
            raise ConnectionFailure(f"MongoDB is away: {server.error}")


V = TypeVar("V")


def _shared(app: FastAPI, read: Callable[[Database[Any]], V], max_age: float) -> Coalescer[None, V]:
    """``read(db)`` within ``bounded``, shared by concurrent callers and reused ``max_age`` s."""

    def bounded_read(_: None) -> V:
        with bounded(app):
            return read(app.state.db)

    return Coalescer(bounded_read, running=1, waiting=0, cache=1, max_age=max_age)


class Snapshots:
    """The reads that do not depend on the caller, each shared by every request of
    ``max_age`` seconds (``--api-snapshot-s``) and by concurrent ones: a burst of
    dashboards costs one read of MongoDB, and a user sees data that old at most."""

    def __init__(self, app: FastAPI, max_age: float) -> None:
        # The first page at its largest: each first page is cut from it (queries.first_page).
        self.newest = _shared(app, lambda db: queries.image_page(db, MAX_PAGE), max_age)
        self.histogram = _shared(app, lambda db: queries.histogram(db, None, None), max_age)
        self.dashboard = _shared(app, lambda db: queries.dashboard(db, RECENT_RUNS), max_age)


def get_snapshots(request: Request) -> Snapshots:
    snapshots: Snapshots = request.app.state.snapshots
    return snapshots


DB = Annotated[Database[Any], Depends(get_db)]
Shared = Annotated[Snapshots, Depends(get_snapshots)]
router = APIRouter()


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison of an ``If-None-Match`` list with our (strong) ETag."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


IMAGE_ROUTE: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: {"content": {PNG: {}}, "description": "the stored grayscale PNG, byte for byte"},
        304: {"description": "the client's copy (If-None-Match) is current"},
        404: {"model": Problem, "description": "no image with this md5"},
        **ERRORS,
    },
    "summary": "The grayscale PNG of an image, by the MD5 of its downloaded bytes",
}


# Two routes rather than one with two methods, so that each has its own operation id.
@router.head("/image/{md5}", **IMAGE_ROUTE)
@router.get("/image/{md5}", **IMAGE_ROUTE)
def get_image(
    request: Request,
    db: DB,
    md5: Annotated[str, Path(pattern=MD5_PATTERN, description="32 hex digits, any case")],
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    md5 = md5.lower()
    headers = {"ETag": f'"{md5}"', "Cache-Control": IMMUTABLE}
    with bounded(request.app):
        if (
            if_none_match is not None
            and etag_matches(if_none_match, headers["ETag"])
            and queries.image_exists(db, md5)
        ):
            return Response(status_code=304, headers=headers)
        try:
            png = queries.image_png(db, md5)
        except NoFile:
            png = None
    if png is None:
        raise HTTPException(404, f"no image with md5 {md5}")
    head = request.method == "HEAD"
    if isinstance(png, bytes):
        headers["Content-Length"] = str(len(png))
        return Response(b"" if head else png, media_type=PNG, headers=headers)
    headers["Content-Length"] = str(png.length)
    if head:
        png.close()
        return Response(media_type=PNG, headers=headers)
    chunks = queries.gridfs_chunks(png, request.app.state.read_timeout)
    return StreamingResponse(chunks, media_type=PNG, headers=headers)


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page")]
Cursor = Annotated[str | None, Query(max_length=400, description="`next` of the previous page")]


def _after(cursor: str | None, key: re.Pattern[str]) -> tuple[datetime, str] | None:
    """Where a page starts: after the position of ``cursor``; a 400 if we did not issue it."""
    try:
        return None if cursor is None else queries.decode_cursor(cursor, key)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _items(request: Request, docs: Sequence[dict[str, Any]]) -> list[ImageItem]:
    return [ImageItem(**doc, url=request.url_for("get_image", md5=doc["md5"]).path) for doc in docs]


@router.get(
    "/images",
    responses={400: {"model": Problem, "description": "malformed cursor"}, **ERRORS},
    summary="The stored images, newest first, a page at a time",
)
def list_images(
    request: Request, db: DB, shared: Shared, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> ImagePage:
    """The first page may be ``--api-snapshot-s`` old; the next ones are read as asked."""
    if cursor is None:
        docs, next_cursor = queries.first_page(shared.newest(None), limit)
    else:
        after = _after(cursor, queries.MD5_RE)
        with bounded(request.app):
            docs, next_cursor = queries.image_page(db, limit, after)
    return ImagePage(items=_items(request, docs), next=next_cursor)


def wants_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers ``application/json`` to a PNG (named, not ``*/*``)."""
    quality = {}
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = q
    json_q = quality.get("application/json", 0.0)
    return json_q > 0 and json_q >= quality.get(PNG, quality.get("image/*", 0.0))


@router.get(
    "/monitoring",
    response_class=Response,
    responses={
        200: {
            "model": Monitoring,
            "content": {PNG: {}},
            "description": "the histogram: a PNG chart, or its buckets as JSON",
        },
        400: {"model": Problem, "description": "since is after until"},
        **ERRORS,
    },
    summary="Successes and errors per minute: a PNG bar chart, or JSON",
)
def monitoring(
    request: Request,
    db: DB,
    shared: Shared,
    fmt: Annotated[
        Literal["png", "json"] | None,
        Query(
            alias="format",
            description="`json` for the buckets; default PNG, or JSON "
            "when `Accept` prefers application/json",
        ),
    ] = None,
    since: Annotated[
        IsoDatetime | None, Query(description="first minute, ISO 8601 (UTC if no offset)")
    ] = None,
    until: Annotated[
        IsoDatetime | None, Query(description="last minute, ISO 8601 (UTC if no offset)")
    ] = None,
) -> Response:
    """Default window: the minutes that have data; at most 24 h of minutes (the latest).

    The default window may be ``--api-snapshot-s`` old; a window asked for is read."""
    try:
        if since is None and until is None:
            window, buckets = shared.histogram(None)
        else:
            with bounded(request.app):
                window, buckets = queries.histogram(db, since, until)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if fmt == "json" or (fmt is None and wants_json(request.headers.get("accept"))):
        body = Monitoring(
            since=window.since if window else None,
            until=window.until if window else None,
            buckets=buckets,
            totals=totals(buckets),
        )
        return Response(body.model_dump_json(), media_type="application/json")
    empty = "no data yet" if since is None and until is None else "no data in this window"
    drawn = chart_buckets(
        window, buckets, keep_since=since is not None, keep_until=until is not None
    )
    return Response(histogram_png(drawn, empty), media_type=PNG)


def _runs(request: Request, runs: Sequence[tuple[dict[str, Any], RunTotals]]) -> list[Run]:
    now = datetime.now(timezone.utc)
    return [
        runview.view(doc, totals, now, request.url_for("get_run", run_id=doc["_id"]).path)
        for doc, totals in runs
    ]


@router.get(
    "/runs",
    responses={400: {"model": Problem, "description": "malformed cursor"}, **ERRORS},
    summary="The runs, newest first, a page at a time: status, totals, progress",
)
def list_runs(
    request: Request, db: DB, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> RunPage:
    after = _after(cursor, queries.RUN_ID_RE)
    with bounded(request.app):
        docs, next_cursor = queries.run_page(db, limit, after)
        items = _runs(request, queries.with_totals(db, docs))
    return RunPage(items=items, next=next_cursor)


@router.get(
    "/runs/{run_id}",
    responses={404: {"model": Problem, "description": "no run with this id"}, **ERRORS},
    summary="One run: status, totals by status and reason, progress and its oldest lines "
    "in flight while it runs, retry links",
)
def get_run(request: Request, db: DB, run_id: Annotated[str, Path(max_length=200)]) -> Run:
    with bounded(request.app):
        doc = queries.run(db, run_id)
        if doc is None:
            raise HTTPException(404, f"no run {run_id}")
        (view,) = _runs(request, queries.with_totals(db, [doc]))
    return view


@router.get(
    "/",
    response_class=HTMLResponse,
    responses=ERRORS,
    summary="The dashboard: totals, recent runs, histogram, errors by reason, newest images",
)
def dashboard(request: Request, shared: Shared) -> HTMLResponse:
    """Its data may be ``--api-snapshot-s`` old: a dashboard is looked at, not polled."""
    docs, _ = queries.first_page(shared.newest(None), GALLERY_SIZE)
    data = shared.dashboard(None)
    page = render_dashboard(
        totals=data.totals,
        images=data.images,
        reasons=data.reasons,
        recent=_items(request, docs),
        runs=_runs(request, data.runs),
        read_at=data.read_at,
        ray_dashboard=request.app.state.ray_dashboard,
    )
    return HTMLResponse(page)


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "MongoDB does not answer"}},
    summary="200 when MongoDB answers a ping, 503 otherwise",
)
def healthz(request: Request, db: DB) -> Health | JSONResponse:
    try:  # no turn at reading needed: a ping costs MongoDB nothing
        with time_limited(request.app):
            db.client.admin.command("ping")
    except PyMongoError as exc:
        unavailable = Health(status="unavailable", detail=type(exc).__name__)
        return JSONResponse(unavailable.model_dump(), status_code=503)
    return Health(status="ok")
