"""Waiting for something that another process or thread makes true: never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 120.0, every: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail the test, naming ``what``, after ``timeout`` s."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting for {what} after {timeout:g} s"
        time.sleep(every)
