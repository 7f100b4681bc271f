"""The dashboard page at ``/``: what it shows of the data, through FastAPI's TestClient
on real MongoDB (``test_browser.py`` sees it in a real browser)."""

from __future__ import annotations

from html import escape

from fastapi.testclient import TestClient

from itm.outcomes import describe
from tests.support.apidata import REASONS, ApiData


def test_dashboard(client: TestClient, data: ApiData) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<img class="chart" id="chart" src="/monitoring"' in page
    total = data.success + data.error
    for label, count in [
        ("lines processed", total),
        ("success", data.success),
        ("error", data.error),
        ("images stored", len(data.pngs)),
    ]:
        assert f"<div>{label}<b>{count}</b></div>" in page
    title = escape(describe("http_404"))
    assert (
        f'<td><code title="{title}">http_404</code></td>'
        f'<td class="n">{REASONS.count("http_404")}</td>'
    ) in page
    assert "&lt;b&gt;not_an_image&lt;/b&gt;" in page
    assert "<b>not_an_image</b>" not in page
    for md5 in data.newest_first:
        assert f'<a href="/image/{md5}"><img src="/image/{md5}"' in page
    assert "<script" not in page
