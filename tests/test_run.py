"""`python -m itm.run` as a user runs it: embedded MongoDB, local Ray, then the API until Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from itm.config import free_port
from tests.support.jobs import ItmProcess, write_urls
from tests.support.servers import PicsumServer, picsum_lines

pytestmark = pytest.mark.ray  # `python -m itm.run` starts its own local Ray


def test_the_job_then_the_api_then_ctrl_c(canonical_lines: list[str], tmp_path: Path) -> None:
    """As a user runs it, with the defaults: the Ray dashboard too, linked from the page."""
    port = free_port()
    with PicsumServer() as server:
        urls = write_urls(tmp_path, picsum_lines(server.url, canonical_lines[:40]))
        itm = ItmProcess(
            *("--urls", str(urls), "--port", str(port), "--data-dir", str(tmp_path / "itm")),
            "--allow-private-addresses",  # the local picsum is on loopback: opt in, explicitly
        )
        try:
            itm.wait_for("Ctrl-C to stop.", timeout=240)
            text = itm.output
            assert "embedded MongoDB at mongodb://127.0.0.1:" in text
            assert re.search(r"40 lines in .* s", text)
            image_url = re.search(rf"http://localhost:{port}/image/[0-9a-f]{{32}}", text).group()
            with urllib.request.urlopen(image_url, timeout=30) as reply:
                assert reply.headers["Content-Type"] == "image/png"
                assert reply.read().startswith(b"\x89PNG")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as reply:
                assert reply.status == 200
            ray_dashboard = re.search(r"Ray dashboard (http://127\.0\.0\.1:\d+)", text).group(1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
                assert f'<a href="{ray_dashboard}">Ray dashboard</a>' in reply.read().decode()
            with urllib.request.urlopen(ray_dashboard, timeout=30) as reply:  # one click away
                assert reply.status == 200
                assert "<title>Ray Dashboard</title>" in reply.read().decode()
        finally:
            itm.signal(signal.SIGINT, pause=0)
            code = itm.wait()
    assert code == 0, itm.output
    assert "stopping the API" in itm.output
    storage = str(tmp_path / "itm" / "mongo")
    alive = subprocess.run(["pgrep", "-f", storage], capture_output=True, text=True).stdout
    assert not alive, "the embedded MongoDB outlived itm"
