"""The API's reads of MongoDB (``itm/api/queries.py``): totals, pages of images, and
the reads they send, on real MongoDB (through the app's routes where a route shows them)."""

from __future__ import annotations

from datetime import timedelta
from html import escape

import pytest
from fastapi.testclient import TestClient
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.monitoring import CommandListener, CommandStartedEvent

from itm.api import queries
from itm.api.routes import MAX_PAGE
from itm.outcomes import describe
from itm.store import IMAGES, MONITORING
from tests.support.apidata import START, ApiData

SECOND = timedelta(seconds=1)


def test_totals_count_minutes_without_reasons(client: TestClient, db: Database) -> None:
    db[MONITORING].insert_many(
        [
            {"minute": START, "success": 3, "error": 0, "images": 3},  # no error, no reasons
            {
                "minute": START + timedelta(minutes=1),
                "success": 0,
                "error": 1,
                "images": 0,
                "reasons": {"timeout": 1},
            },
        ]
    )
    page = client.get("/").text
    assert "<div>lines processed<b>4</b></div>" in page
    title = escape(describe("timeout"))
    assert f'<td><code title="{title}">timeout</code></td><td class="n">1</td>' in page


def test_images_stored_are_counted_from_the_minutes(client: TestClient, db: Database) -> None:
    db[MONITORING].insert_many(
        [
            {"minute": START, "success": 3, "error": 0, "images": 2},
            {"minute": START + timedelta(minutes=1), "success": 1, "error": 0, "images": 1},
        ]
    )
    assert "<div>images stored<b>3</b></div>" in client.get("/").text  # none in `images`
    duplicate = {"minute": START + timedelta(minutes=2), "success": 1, "error": 0, "images": 0}
    db[MONITORING].insert_one(duplicate)  # a success that stored no image
    assert "<div>images stored<b>3</b></div>" in client.get("/").text


def test_pages_span_the_read_windows_in_order(client: TestClient, db: Database) -> None:
    """Images seconds, hours and days before the last counted minute (and a millisecond
    shared by several) page newest first, each once, whichever window serves a page."""
    db[MONITORING].insert_one({"minute": START, "success": 1, "error": 0, "images": 1})
    ages = [timedelta(seconds=s) for s in (-30, 5, 5, 5, 50, 700, 7200, 90000, 900000)]
    db[IMAGES].insert_many(
        [
            {"md5": f"{i:032x}", "width": 1, "height": 1, "inserted_at": START - age}
            for i, age in enumerate(ages)
        ]
    )
    expected = [f"{i:032x}" for i in sorted(range(len(ages)), key=lambda i: (ages[i], -i))]
    seen, cursor = [], None
    while True:
        page = client.get("/images", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += [item["md5"] for item in page.json()["items"]]
        if (cursor := page.json()["next"]) is None:
            break
    assert seen == expected


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 6])
def test_a_first_page_cut_from_a_longer_one_is_that_page(
    db: Database, data: ApiData, limit: int
) -> None:
    assert queries.first_page(queries.image_page(db, MAX_PAGE), limit) == queries.image_page(
        db, limit
    )


class ImageFinds(CommandListener):
    """Counts the ``find`` commands sent to ``images``."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command["find"] == IMAGES:
            self.count += 1

    def succeeded(self, event: object) -> None:
        pass

    def failed(self, event: object) -> None:
        pass


def test_the_first_page_is_read_from_the_last_minute_that_stored_images(
    mongo_uri: str, db: Database
) -> None:
    """Later minutes that stored no image (a run of duplicates, errors) do not push the
    read windows away from the images: one read, of the first window, serves the page."""
    db[MONITORING].insert_many(
        [
            {"minute": START, "success": 3, "error": 0, "images": 3},
            {"minute": START + timedelta(days=30), "success": 5, "error": 5, "images": 0},
        ]
    )
    db[IMAGES].insert_many(
        [
            {"md5": f"{i:032x}", "width": 1, "height": 1, "inserted_at": START + (55 + i) * SECOND}
            for i in range(3)
        ]
    )
    finds = ImageFinds()
    with MongoClient(mongo_uri, tz_aware=True, event_listeners=[finds]) as watched:
        docs, _ = queries.image_page(watched[db.name], 2)
    assert [doc["md5"] for doc in docs] == [f"{i:032x}" for i in (2, 1)]
    assert finds.count == 1
