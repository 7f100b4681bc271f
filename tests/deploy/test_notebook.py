"""notebooks/itm_tour.ipynb runs top to bottom in a real kernel, and shows what is stored.

Once over the database of the session's pipeline run (the canonical input on a local
picsum, which stays up, so every source is reachable), once over a few of its images
whose sources are either the exact photo or a port nobody listens on (offline).
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections import Counter
from datetime import datetime, timedelta, timezone

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode
from PIL import Image
from pymongo.database import Database

from itm.config import free_port
from itm.job.imaging import md5_hex
from itm.store import EVENTS, IMAGES, MONITORING, RUNS
from tests.support.jobs import ROOT, PicsumRun

NOTEBOOK = ROOT / "notebooks" / "itm_tour.ipynb"
NEWEST_FIRST = [("inserted_at", -1), ("md5", -1)]
STORED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
MD5_IN_HTML = re.compile(r"md5 <code>([0-9a-f]{32})</code>")


def execute(mongo_uri: str, db_name: str) -> dict[str, NotebookNode]:
    """Run the notebook on ``db_name`` as a user would; its cells by id, with outputs."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ITM_MONGO_URI", mongo_uri)
        env.setenv("ITM_DB", db_name)
        env.setenv("ITM_ALLOW_PRIVATE_ADDRESSES", "1")  # the sources are on loopback
        # The kernel starts in notebooks/: let it import this checkout's itm, installed or not.
        env.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=120,
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        ).execute()  # raises CellExecutionError on any cell that fails
    return {cell.id: cell for cell in notebook.cells}


def stdout(cell: NotebookNode) -> str:
    return "".join(
        out.text for out in cell.outputs if out.output_type == "stream" and out.name == "stdout"
    )


def htmls(cell: NotebookNode) -> list[str]:
    return [
        out.data["text/html"]
        for out in cell.outputs
        if out.output_type == "display_data" and "text/html" in out.data
    ]


def pngs(cell: NotebookNode) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(out.data["image/png"])))
        for out in cell.outputs
        if out.output_type == "display_data" and "image/png" in out.data
    ]


@pytest.fixture(scope="module")
def tour(mongo_uri: str, picsum_run: PicsumRun) -> dict[str, NotebookNode]:
    return execute(mongo_uri, picsum_run.db.name)


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.id


def test_counts_match_the_database(tour: dict[str, NotebookNode], picsum_run: PicsumRun) -> None:
    db = picsum_run.db
    assert f"database {db.name!r}" in stdout(tour["connect"])
    text = stdout(tour["counts"])
    for name in (IMAGES, EVENTS, MONITORING, RUNS):
        count = db[name].count_documents({})
        assert re.search(rf"^  {name}\s+{count:,}$", text, re.M), (name, count, text)
    outcomes = Counter(event["status"] for event in db[EVENTS].find())
    assert sum(outcomes.values()) == len(picsum_run.lines)
    assert (
        f"lines counted in monitoring: {len(picsum_run.lines):,} = "
        f"{outcomes['success']:,} success + {outcomes['error']:,} error"
    ) in text
    assert f"  {picsum_run.run_id}  " in text


def test_histogram_is_drawn(tour: dict[str, NotebookNode], picsum_run: PicsumRun) -> None:
    (chart,) = pngs(tour["histogram"])
    assert chart.format == "PNG" and chart.size == (1000, 400)  # chart.SIZE_INCHES at DPI
    text = stdout(tour["histogram"])
    assert "minute(s)" in text
    minutes = re.findall(r"^  \d\d:\d\d  success\s+([\d,]+)  error\s+([\d,]+)$", text, re.M)
    per_minute = {doc["minute"]: doc for doc in picsum_run.db[MONITORING].find()}
    assert len(minutes) == min(10, len(per_minute))
    if len(per_minute) <= 10:  # the run took minutes at most: every one is listed
        assert sum(int(s.replace(",", "")) + int(e.replace(",", "")) for s, e in minutes) == len(
            picsum_run.lines
        )


def test_errors_by_reason(tour: dict[str, NotebookNode], picsum_run: PicsumRun) -> None:
    rows = re.findall(r"^(\S+)\s+([\d,]+)  e\.g\. (\S+)", stdout(tour["errors"]), re.M)
    shown = {reason: int(count.replace(",", "")) for reason, count, _url in rows}
    expected = Counter(event["reason"] for event in picsum_run.db[EVENTS].find({"status": "error"}))
    assert shown == dict(expected)
    assert shown["http_404"] == 50 and shown["http_400"] == 50
    examples = {reason: url for reason, _count, url in rows}
    assert examples["http_404"].endswith("/error/100")


def test_newest_images_beside_their_fetched_source(
    tour: dict[str, NotebookNode], picsum_run: PicsumRun
) -> None:
    db = picsum_run.db
    newest = list(db[IMAGES].find({}, {"gray": 0}).sort(NEWEST_FIRST).limit(3))
    rows = htmls(tour["images"])
    assert [MD5_IN_HTML.search(row)[1] for row in rows] == [doc["md5"] for doc in newest]
    for row, doc in zip(rows, newest, strict=True):
        assert f"{doc['width']} x {doc['height']} px" in row
        assert f'href="{doc["source_url"]}"' in row
        assert row.count("data:image/png;base64,") == 2  # stored gray and original, side by side
        assert "original, fetched now" in row and "not reachable" not in row
        # The source was really fetched: what it served now is one of the server's photos.
        refetched = re.search(r"other bytes \(md5 <code>([0-9a-f]{32})</code>\)", row)
        assert refetched is None or refetched[1] in picsum_run.server.served
        assert refetched is not None or "pixel for pixel" in row


@pytest.fixture
def copied_images(db: Database, picsum_run: PicsumRun) -> tuple[str, list[str]]:
    """The three smallest images of the run, in a fresh database: the newest with its
    exact photo as source, the two others on a port nobody listens on.

    Returns the md5 of the reachable one and the md5s newest first.
    """
    server = picsum_run.server
    docs = list(picsum_run.db[IMAGES].find({"gray": {"$exists": True}}).sort("width", 1).limit(3))
    dead = f"http://127.0.0.1:{free_port()}"
    for age, doc in enumerate(docs):
        doc.pop("_id")
        doc["inserted_at"] = STORED_AT - age * timedelta(seconds=1)
        doc["source_url"] = f"{dead}/{doc['width']}/{doc['height']}"
    first = docs[0]
    photo_id = next(
        i
        for i in range(server.photos)
        if md5_hex(server.image(i, first["width"], first["height"])) == first["md5"]
    )
    first["source_url"] = f"{server.url}/id/{photo_id}/{first['width']}/{first['height']}.jpg"
    db[IMAGES].insert_many(docs)
    return first["md5"], [doc["md5"] for doc in docs]


def test_same_source_is_checked_and_offline_is_said(
    mongo_uri: str, db: Database, copied_images: tuple[str, list[str]]
) -> None:
    reachable, md5s = copied_images
    cells = execute(mongo_uri, db.name)
    # No runs and no counters in this database: the notebook says so instead of failing.
    assert "lines counted in monitoring: 0 = 0 success + 0 error" in stdout(cells["counts"])
    assert "no line counted yet" in stdout(cells["histogram"])
    assert len(pngs(cells["histogram"])) == 1  # the empty chart, as the API draws it
    assert stdout(cells["errors"]) == "no errors\n"
    rows = htmls(cells["images"])
    assert [MD5_IN_HTML.search(row)[1] for row in rows] == md5s
    same, *offline = rows
    assert md5s[0] == reachable
    assert "same bytes as stored (md5 matches)" in same
    assert "equals the stored grayscale, pixel for pixel" in same
    assert same.count("data:image/png;base64,") == 2
    for row in offline:
        assert "original not reachable" in row and "connection_error" in row
        assert row.count("data:image/png;base64,") == 1  # the stored image is still shown
    assert "same host as above" in offline[1]
