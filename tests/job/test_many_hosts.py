"""A download worker meeting thousands of hosts keeps its file descriptors bounded."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from itm.config import Settings
from itm.job.download import fetch
from itm.job.transport import IDLE_SECONDS, SWEEP_SECONDS
from tests.support.many_hosts import ManyHosts
from tests.support.waiting import wait_until

HOSTS = 5000
THREADS = 16  # one download task's threads: --concurrency on one node
# Loopback test servers: opted in to private addresses, explicitly.
SETTINGS = Settings(concurrency=THREADS, deadline=20.0, retries=0, allow_private_addresses=True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_5000_hosts_keep_the_fds_bounded_and_idle_sockets_close() -> None:
    with ManyHosts(HOSTS) as server:
        before = open_fds()
        peak = before
        with ThreadPoolExecutor(THREADS) as pool:
            for body in pool.map(lambda url: fetch(url, SETTINGS), server.urls()):
                assert body == server.jpeg
                peak = max(peak, open_fds())
        # At most one connection in use per thread, and --concurrency idle ones in all.
        assert peak - before <= 2 * THREADS + 2, (before, peak)
        assert open_fds() - before <= THREADS + 1
        # Idle sockets close a few seconds after their last use, with nothing more fetched.
        wait_until(
            lambda: open_fds() <= before,
            "the idle connections to close",
            timeout=IDLE_SECONDS + SWEEP_SECONDS + 5,
        )
