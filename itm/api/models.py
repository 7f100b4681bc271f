"""The JSON bodies of the API, as pydantic models: they are its OpenAPI schema."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from itm.api.histogram import Bucket, Totals


class ImageItem(BaseModel):
    md5: str = Field(description="MD5 of the downloaded bytes, lowercase hex")
    width: int
    height: int
    inserted_at: datetime = Field(description="first insertion, UTC")
    url: str = Field(description="path of the grayscale PNG")


class ImagePage(BaseModel):
    items: list[ImageItem] = Field(description="newest first")
    next: str | None = Field(
        description="opaque cursor: pass it as `cursor` for the next page; null on the last page"
    )


class Monitoring(BaseModel):
    since: datetime | None = Field(description="first minute shown; null when there is none")
    until: datetime | None = Field(description="last minute shown; null when there is none")
    buckets: list[Bucket] = Field(description="one per minute of the window, oldest first")
    totals: Totals = Field(description="sums over the buckets")


class Health(BaseModel):
    status: str = Field(description="`ok`, or `unavailable` when MongoDB does not answer")
    detail: str | None = None


class Problem(BaseModel):
    """The body of the API's own errors (404, 400, 503); 422 is FastAPI's validation error."""

    detail: str


class RunTotals(BaseModel):
    lines: int = Field(description="lines with an outcome")
    success: int
    error: int
    duplicates: int = Field(description="successes whose image was stored already")
    reasons: dict[str, int] = Field(description="errors by reason")


class RunProgress(BaseModel):
    done: int = Field(description="lines with an outcome")
    total: int | None = Field(description="lines the run processes in all; null if unknown")
    fraction: float | None = Field(description="done / total, 0 to 1")
    rate: float | None = Field(
        description="lines per second since the driver (re)started; null unless running"
    )
    eta_seconds: float | None = Field(description="seconds left at that rate; null unless running")


class InFlight(BaseModel):
    line: int
    url: str = Field(description="the line, its secrets (user:password@, tokens) as ***")
    since: datetime = Field(description="when its download task received it, UTC")
    seconds: float = Field(description="seconds in flight")


class Run(BaseModel):
    id: str
    status: str = Field(
        description="`running`; `finished`; or `interrupted`: not finished and no heartbeat "
        "from its driver for a minute (killed, Ctrl-C, crashed): resume it with --resume"
    )
    input: str | None = Field(
        description="the file name of its input (the server's full path stays private)"
    )
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat: datetime | None = Field(description="last sign of life of its driver")
    totals: RunTotals
    progress: RunProgress
    in_flight: list[InFlight] = Field(
        description="while running: its oldest lines in flight, oldest first (a long tail "
        "shows here)"
    )
    retry_of: str | None = Field(description="the run whose failed lines this run retries")
    reasons: list[str] | None = Field(description="the reasons retried; null: every error")
    retries: list[str] = Field(description="the runs that retried this run's failed lines")
    url: str = Field(description="path of this view")


class RunPage(BaseModel):
    items: list[Run] = Field(description="newest first")
    next: str | None = Field(
        description="opaque cursor: pass it as `cursor` for the next page; null on the last page"
    )
