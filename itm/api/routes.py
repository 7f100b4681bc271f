"""The API's routes: images, the monitoring histogram, runs, the dashboard, health.

Each read of MongoDB goes through ``itm.api.overload`` (a turn, a time limit); the
reads that do not depend on the caller are ``Snapshots``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from gridfs.errors import NoFile
from pydantic import BeforeValidator
from pymongo.database import Database
from pymongo.errors import PyMongoError

from itm.api import queries, runview
from itm.api.chart import histogram_png
from itm.api.dashboard import render_dashboard
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
from itm.api.negotiation import PNG, etag_matches, wants_json
from itm.api.overload import ERRORS, bounded, shared_read, time_limited

MD5_PATTERN = r"^[0-9a-fA-F]{32}$"
# An md5 names its content for ever, so browsers and proxies may keep it a year.
IMMUTABLE = "public, max-age=31536000, immutable"
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


def get_db(request: Request) -> Database[Any]:
    db: Database[Any] = request.app.state.db
    return db


class Snapshots:
    """The reads that do not depend on the caller, each shared by every request of
    ``max_age`` seconds (``--api-snapshot-s``) and by concurrent ones: a burst of
    dashboards costs one read of MongoDB, and a user sees data that old at most."""

    def __init__(self, app: FastAPI, max_age: float) -> None:
        # The first page at its largest: each first page is cut from it (queries.first_page).
        self.newest = shared_read(app, lambda db: queries.image_page(db, MAX_PAGE), max_age)
        self.histogram = shared_read(app, lambda db: queries.histogram(db, None, None), max_age)
        self.dashboard = shared_read(app, lambda db: queries.dashboard(db, RECENT_RUNS), max_age)


def get_snapshots(request: Request) -> Snapshots:
    snapshots: Snapshots = request.app.state.snapshots
    return snapshots


DB = Annotated[Database[Any], Depends(get_db)]
Shared = Annotated[Snapshots, Depends(get_snapshots)]
router = APIRouter()


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
    chunks = queries.gridfs_chunks(png, request.app.state.time_limit)
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
