"""Waiting for something that another process or thread makes true: never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

# A timing assertion checks a deadline that is the behaviour under test, and allows a
# loaded machine this much beyond it: it fails on a hang, not on a busy CI runner.
SLACK = 10.0
# ...and this much to a whole job, which starts Ray, its writer and its workers first.
JOB_SLACK = 60.0


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 120.0, every: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; fail the test, naming ``what``, after ``timeout`` s."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting for {what} after {timeout:g} s"
        time.sleep(every)
