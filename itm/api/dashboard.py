"""The HTML dashboard of ``GET /``: server-rendered, no JavaScript, no template engine.

Every value that comes from the database or the request goes through
``html.escape``: URLs and error reasons are input data, not markup. While a run is
running, the page reloads itself every ``REFRESH_S`` seconds (a ``<meta>`` refresh,
which needs no JavaScript either); otherwise it stays still.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from itm.api.histogram import Totals
from itm.api.models import ImageItem, Run
from itm.outcomes import describe

# Seconds between reloads while a run is running: its progress, rate and time left
# move at a glance, for one read of MongoDB per --api-snapshot-s however many look.
REFRESH_S = 5

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1060px; color: #222; }
h1 { margin-bottom: .2rem; } nav a { margin-right: 1rem; }
.totals { display: flex; gap: 1rem; margin: 1rem 0; }
.totals div { border: 1px solid #ddd; border-radius: 6px; padding: .6rem 1rem; min-width: 8rem; }
.totals b { display: block; font-size: 1.6rem; }
.chart { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; } td, th { padding: .2rem .8rem; border-bottom: 1px solid #eee; }
td.n { text-align: right; } td.running { color: #1a7f37; } td.interrupted { color: #b42318; }
.gallery { display: flex; flex-wrap: wrap; gap: .5rem; }
.gallery figure { margin: 0; width: 160px; }
.gallery img { width: 160px; height: 120px; object-fit: cover; background: #f4f4f4; }
.gallery figcaption { font: .7rem monospace; overflow: hidden; text-overflow: ellipsis; }
#updated { color: #555; font-size: .9rem; }
"""


def _totals(totals: Totals, images: int) -> str:
    cells = [
        ("lines processed", totals.success + totals.error),
        ("success", totals.success),
        ("error", totals.error),
        ("images stored", images),
    ]
    return "".join(f"<div>{escape(label)}<b>{count}</b></div>" for label, count in cells)


def _reasons(reasons: Sequence[tuple[str, int]]) -> str:
    if not reasons:
        return "<p>No errors.</p>"
    rows = "".join(
        f'<tr><td><code title="{escape(describe(reason))}">{escape(reason)}</code></td>'
        f'<td class="n">{count}</td></tr>'
        for reason, count in reasons
    )
    return f"<table><tr><th>reason</th><th>lines</th></tr>{rows}</table>"


def _gallery(images: Sequence[ImageItem]) -> str:
    if not images:
        return "<p>No image stored yet.</p>"
    figures = []
    for image in images:
        url = escape(image.url)
        caption = f"{image.md5} {image.width}x{image.height}"
        figures.append(
            f'<figure><a href="{url}"><img src="{url}" alt="{escape(image.md5)}" '
            f'decoding="async"></a><figcaption title="{escape(caption)}">{escape(caption)}'
            "</figcaption></figure>"
        )
    return f'<div class="gallery">{"".join(figures)}</div>'


def _progress(run: Run) -> str:
    done, total = run.progress.done, run.progress.total
    text = f"{done} / {total} ({run.progress.fraction:.0%})" if total else f"{done}"
    if run.progress.eta_seconds is not None:
        text += f", {run.progress.rate:.1f} lines/s, {run.progress.eta_seconds:.0f} s left"
    if run.in_flight:
        oldest = run.in_flight[0]
        text += f"; oldest in flight: line {oldest.line}, {oldest.seconds:.0f} s"
    return escape(text)


def _runs(runs: Sequence[Run]) -> str:
    if not runs:
        return "<p>No run yet.</p>"
    rows = "".join(
        f'<tr><td><a href="{escape(run.url)}"><code>{escape(run.id)}</code></a></td>'
        f'<td class="{escape(run.status)}">{escape(run.status)}</td><td>{_progress(run)}</td>'
        f'<td class="n">{run.totals.success}</td><td class="n">{run.totals.error}</td>'
        f"<td>{escape(run.started_at.isoformat(timespec='seconds') if run.started_at else '')}"
        f"</td><td>{escape(run.retry_of or '')}</td></tr>"
        for run in runs
    )
    return (
        "<table><tr><th>run</th><th>status</th><th>progress</th><th>success</th>"
        f"<th>error</th><th>started (UTC)</th><th>retry of</th></tr>{rows}</table>"
    )


def _updated(read_at: datetime, live: bool) -> str:
    when = escape(read_at.strftime("%Y-%m-%d %H:%M:%S UTC"))
    if live:
        return f"Data read at {when}; a run is running: this page reloads every {REFRESH_S} s."
    return f"Data read at {when}; no run is running: reload the page to read it again."


def _nav(ray_dashboard: str | None) -> str:
    links = [
        ("/runs", "/runs"),
        ("/images", "/images"),
        ("/monitoring?format=json", "/monitoring?format=json"),
        ("/healthz", "/healthz"),
        ("/docs", "/docs"),
    ]
    if ray_dashboard:
        links.append((ray_dashboard, "Ray dashboard"))
    return "".join(f'<a href="{escape(href)}">{escape(text)}</a>' for href, text in links)


def render_dashboard(
    totals: Totals,
    images: int,
    reasons: Sequence[tuple[str, int]],
    recent: Sequence[ImageItem],
    runs: Sequence[Run],
    read_at: datetime,
    ray_dashboard: str | None = None,
) -> str:
    """The whole page: totals, recent runs, the histogram, errors by reason, the newest
    images; when its data was read; a link to ``ray_dashboard`` when there is one."""
    live = any(run.status == "running" for run in runs)
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">\n' if live else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh}<title>itm dashboard</title>
<style>{STYLE}</style>
</head>
<body>
<h1>itm</h1>
<nav>{_nav(ray_dashboard)}</nav>
<p id="updated">{_updated(read_at, live)}</p>
<section class="totals" id="totals">{_totals(totals, images)}</section>
<h2>Recent runs</h2>
<section id="runs">{_runs(runs)}</section>
<h2>Successes and errors per minute</h2>
<img class="chart" id="chart" src="/monitoring" alt="histogram of successes and errors \
per minute" width="1000" height="400">
<h2>Errors by reason</h2>
<section id="reasons">{_reasons(reasons)}</section>
<h2>Newest images</h2>
<section id="gallery">{_gallery(recent)}</section>
</body>
</html>
"""
