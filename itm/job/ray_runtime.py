"""Joining a Ray cluster, or starting a local one that stays on loopback."""

from __future__ import annotations

import os
import socket

import ray
from ray._private import ray_constants
from ray._private.worker import BaseContext

# A local Ray on a laptop: no token auth (it breaks the dashboard API and the
# `ray`/`serve` CLIs), no usage stats, and every service bound to 127.0.0.1
# (Ray 2.60 binds to all interfaces unless this cluster mode is turned off).
LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}

# Ray kills an idle worker process above the CPU count after ~1 s, and starts a new
# one (~1-3 s of CPU) for the next task that finds none idle: a job's bursts of
# downloads would start workers again and again. The job bounds the tasks it runs at
# once, so a local Ray keeps every worker it started until the job ends. A cluster
# gets the same from `ray start --system-config` (see cluster.yaml).
LOCAL_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 3_600_000}


def init_ray(
    address: str | None, dashboard: bool = True, num_cpus: int | None = None
) -> str | None:
    """Connect to ``address`` (``auto``, ``ray://…``, ``host:port``) or start a local Ray.

    For a local Ray, environment variables the user set win over ``LOCAL_ENV``.
    Returns the dashboard URL, if a dashboard runs.
    """
    if address:
        _check_reachable(address)
        return _dashboard(ray.init(address=address, log_to_driver=False))
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    # Ray read this variable when it was imported, before we could set it; its
    # children read it at their start and bind to loopback, so the driver must too.
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    # address="local": always a new Ray of our own, never one that a `ray start` or a
    # test cluster left recorded in /tmp/ray (that is what --ray-address auto is for).
    return _dashboard(ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        _system_config=LOCAL_SYSTEM_CONFIG,
    ))


def _dashboard(context: BaseContext) -> str | None:
    url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url or None


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes: Ray retries an unreachable GCS for a long time."""
    if address == "auto" or "://" in address:
        return  # Ray resolves these itself and fails fast when nothing is there
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"nothing answers at {address}: {exc}") from None
