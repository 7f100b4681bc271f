"""The dashboard and the API docs in a real headless Chromium (Debian's), from a live server.

Playwright only drives the browser: it uses /usr/bin/chromium and downloads none.
JavaScript is off in the dashboard, to show it needs none (its refresh included);
Playwright's own evaluation still reads the DOM. The docs need JavaScript (Swagger
UI, ReDoc): they get it, and no network beyond the server.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from itm.api import create_app
from itm.api.chart import AXES_PIXELS, SUCCESS_COLOR
from itm.api.dashboard import REFRESH_S
from itm.api.histogram import CHART_MINUTES
from itm.config import Settings
from itm.store import MONITORING
from tests.support.apidata import RunningRun, fill, fill_minutes
from tests.support.browser import chromium
from tests.support.liveserver import live_server
from tests.support.pixels import AXES_LEFT, SIZE, color_runs, pixels
from tests.support.servers import Handler, LocalServer
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.external]


def dashboard_page(browser: Any) -> Any:
    return browser.new_context(java_script_enabled=False).new_page()


def test_dashboard_shows_the_chart_and_the_images(
    mongo_uri: str, db_name: str, db: Database, tmp_path: Path
) -> None:
    data = fill(db)
    app = create_app(Settings(mongo_uri=mongo_uri, db=db_name))
    with live_server(app) as base, chromium() as browser:
        page = dashboard_page(browser)
        response = page.goto(base + "/", wait_until="load")
        assert response is not None
        assert response.status == 200
        chart_width = page.eval_on_selector("#chart", "img => img.naturalWidth")
        assert chart_width == 1000
        widths = page.eval_on_selector_all(
            "#gallery img", "imgs => imgs.map(img => [img.alt, img.naturalWidth])"
        )
        assert dict(widths) == {md5: size[0] for md5, size in data.sizes.items()}
        totals = page.inner_text("#totals")
        assert str(data.success + data.error) in totals
        # The run of ``fill`` is finished: the page says when it read, and stays still.
        assert "no run is running" in page.inner_text("#updated")
        assert page.query_selector('meta[http-equiv="refresh"]') is None
        assert page.query_selector("text=Ray dashboard") is None
        page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000


LAST = datetime(2026, 3, 4, 21, 47, tzinfo=timezone.utc)
SPANS = {  # minutes of data: (bars seen, narrowest and widest bar in pixels)
    1: (1, (0.7 * AXES_PIXELS / CHART_MINUTES, AXES_PIXELS / CHART_MINUTES)),
    60: (60, (0.6 * AXES_PIXELS / 60, AXES_PIXELS / 60)),
    24 * 60: (1, (AXES_PIXELS - 2, AXES_PIXELS)),
}


def test_the_chart_reads_as_minutes_at_every_span(
    mongo_uri: str, db_name: str, db: Database, tmp_path: Path
) -> None:
    """A minute, an hour and a day of data, each as a user sees it on the dashboard: bars
    that fill their minute's slot, a short run among empty minutes, a day as one area."""
    app = create_app(Settings(mongo_uri=mongo_uri, db=db_name, api_snapshot_s=0))
    with live_server(app) as base, chromium() as browser:
        page = dashboard_page(browser)
        for minutes, (bars, (narrowest, widest)) in SPANS.items():
            db[MONITORING].delete_many({})
            counts = fill_minutes(db, LAST, minutes)
            runs = chart_bars(page, base, tmp_path / f"chart-{minutes}.png")
            assert len(runs) == bars, minutes
            assert all(narrowest <= end - start <= widest for start, end in runs), runs
            if minutes == 1:  # the middle of the 30 minutes shown
                middle = AXES_LEFT + (CHART_MINUTES // 2 - 0.5) * AXES_PIXELS / CHART_MINUTES
                assert abs(sum(runs[0]) / 2 - middle) <= 2
            body = page.request.get(base + "/monitoring?format=json").json()
            assert len(body["buckets"]) == minutes  # the JSON is the data, not the drawing
            assert body["totals"]["success"] == sum(success for success, _ in counts)


def chart_bars(page: Any, base: str, path: Path) -> list[tuple[int, int]]:
    """Load the dashboard, screenshot its chart as shown, and read its bars back."""
    page.goto(base + "/", wait_until="load")
    assert page.eval_on_selector("#chart", "img => img.complete && img.naturalWidth") == 1000
    # The chart inside its 1 px border, where Chromium painted it (snapped to whole pixels).
    box = page.locator("#chart").bounding_box()
    clip = {"x": round(box["x"]) + 1, "y": round(box["y"]) + 1, "width": SIZE[0], "height": SIZE[1]}
    page.screenshot(path=path, clip=clip, full_page=True)
    return color_runs(pixels(path.read_bytes()), SUCCESS_COLOR)


def test_a_running_run_is_seen_updating(
    mongo_uri: str, db_name: str, db: Database, tmp_path: Path
) -> None:
    """With JavaScript off, the page reloads itself while the run works (new totals, a new
    chart, a new read time), then stays still once it finished."""
    run = RunningRun(db, "run-live", total=1000)
    run.count(success=40, error=2)
    app = create_app(Settings(mongo_uri=mongo_uri, db=db_name))
    with live_server(app) as base, chromium() as browser:
        page = dashboard_page(browser)
        page.goto(base + "/", wait_until="load")
        assert f"reloads every {REFRESH_S} s" in page.inner_text("#updated")
        assert "running" in page.inner_text("#runs")
        read_before = page.inner_text("#updated")
        chart_before = page.locator("#chart").screenshot(path=tmp_path / "before.png")
        run.count(success=500, error=60)  # the job goes on; the test does not reload
        wait_until(
            lambda: "602" in page.inner_text("#totals"),
            "the page to show the new totals by itself",
            timeout=10 * REFRESH_S,
        )
        assert page.inner_text("#updated") != read_before
        assert "602 / 1000 (60%)" in page.inner_text("#runs")  # progress of /runs/{id}
        wait_until(lambda: page.eval_on_selector("#chart", "img => img.complete"), "the chart")
        chart_after = page.locator("#chart").screenshot(path=tmp_path / "after.png")
        assert chart_after != chart_before  # the chart was read again too
        page.screenshot(path=tmp_path / "running.png", full_page=True)
        run.finish()
        wait_until(
            lambda: "no run is running" in page.inner_text("#updated"),
            "the page to see the run finished",
            timeout=10 * REFRESH_S,
        )
        assert page.query_selector('meta[http-equiv="refresh"]') is None


def test_the_api_docs_render_without_the_internet(
    mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    """Swagger UI comes from the API itself: a browser that may reach nothing else (every
    other request aborted, and recorded) renders it whole."""
    app = create_app(Settings(mongo_uri=mongo_uri, db=db_name))
    with live_server(app) as base, chromium() as browser:
        page = browser.new_context(java_script_enabled=True).new_page()
        elsewhere: list[str] = []

        def only_the_api(route: Any) -> None:
            url = route.request.url
            if url.startswith(base + "/") or url.startswith("data:"):
                route.continue_()
            else:
                elsewhere.append(url)
                route.abort()

        page.route("**/*", only_the_api)
        response = page.goto(base + "/docs", wait_until="load")
        assert response is not None
        assert response.status == 200
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        text = page.inner_text("body")
        assert "itm" in text
        assert "/monitoring" in text
        page.screenshot(path=tmp_path / "docs.png")
        assert elsewhere == []
        assert page.request.get(base + "/redoc").status == 404  # it would fetch its logo


class RayDashboardStandIn(Handler):
    """Where the link leads: the real Ray dashboard is followed by tests/test_run.py."""

    def do_GET(self) -> None:
        self.reply(200, b"<title>Ray Dashboard</title>", "text/html")


def test_the_ray_dashboard_is_one_click_away(mongo_uri: str, db_name: str, db: Database) -> None:
    fill(db)
    with LocalServer(RayDashboardStandIn) as ray_dashboard:
        settings = Settings(mongo_uri=mongo_uri, db=db_name, ray_dashboard_url=ray_dashboard.url)
        with live_server(create_app(settings)) as base, chromium() as browser:
            page = dashboard_page(browser)
            page.goto(base + "/", wait_until="load")
            page.click("nav >> text=Ray dashboard")
            page.wait_for_url(ray_dashboard.url + "/")
            assert page.title() == "Ray Dashboard"
