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
