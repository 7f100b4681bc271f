"""The dashboard in a real headless Chromium (Debian's), from a live server.

Playwright only drives the browser: it uses /usr/bin/chromium and downloads none.
JavaScript is off in the page, to show the dashboard needs none; Playwright's own
evaluation still reads the DOM.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pymongo.database import Database

from itm.api import create_app
from itm.config import Settings
from tests.support.apidata import fill
from tests.support.liveserver import live_server

pytestmark = [pytest.mark.browser, pytest.mark.external]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root and on a closed network: no sandbox, and none of Chromium's own traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists():
    pytest.skip("no chromium: apt-get install chromium", allow_module_level=True)


def test_dashboard_shows_the_chart_and_the_images(
    mongo_uri: str, db_name: str, db: Database, tmp_path: Path
) -> None:
    data = fill(db)
    app = create_app(Settings(mongo_uri=mongo_uri, db=db_name))
    with live_server(app) as base, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(java_script_enabled=False).new_page()
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
            page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        finally:
            browser.close()
