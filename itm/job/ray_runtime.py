"""Joining a Ray cluster, or starting a local one that stays on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import ray
import ray._private.node
import ray._private.utils
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

# Ray kills an idle worker process above the CPU count after 1 s (its default),
# and starts a new one (seconds of CPU) for the next task that finds none idle: a job's bursts of
# downloads would start workers again and again. The job bounds the tasks it runs at
# once, so a local Ray keeps every worker it started until the job ends. A cluster
# gets the same from `ray start --system-config` (see cluster.yaml).
LOCAL_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 3_600_000}

# The driver's Ray logger: warnings only; itm prints its own line on the Ray it uses.
QUIET = logging.WARNING


class _LeanNode(ray._private.node.Node):
    """A local Ray head without the services that a run without dashboard never uses.

    ``ray.init`` starts them whatever its arguments, each a Python process that pays
    a second or more of CPU importing Ray: the autoscaler monitor (one laptop never scales),
    the log monitor (it streams worker logs to drivers; ours asks for none), and a
    dashboard head even with ``include_dashboard=False`` (it then only reports usage
    stats, which ``LOCAL_ENV`` turns off), which ``ray.init`` waits for. Ray 2.60's
    ``Node`` starts each in its own method.
    """

    def start_monitor(self) -> None:
        pass

    def start_log_monitor(self) -> None:
        pass

    def start_api_server(self, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        pass


def _as_minimal_install() -> ImportError:
    """Ray's test for its dashboard packages, answered as a minimal ``pip install ray``.

    The raylet then starts its dashboard agent in minimal mode: no metrics server
    and no agent modules, so it is up at once, where the full agent (seconds of CPU)
    holds the raylet's registration, hence ``ray.init``, until it serves. The driver
    also skips importing aiohttp and OpenTelemetry to find the answer.
    Metrics (``itm_lines_total``) are then not exported: nothing scrapes them
    without a dashboard.
    """
    return ImportError("itm: a local Ray without dashboard runs its agent minimal")


@contextlib.contextmanager
def _lean_node() -> Iterator[None]:
    """While ``ray.init`` starts a local Ray: a ``_LeanNode``, its dashboard agent minimal."""
    saved = ray._private.node.Node, ray._private.utils.get_dashboard_dependency_error
    ray._private.node.Node = _LeanNode  # type: ignore[misc]
    ray._private.utils.get_dashboard_dependency_error = _as_minimal_install
    try:
        yield
    finally:
        node, ray._private.utils.get_dashboard_dependency_error = saved
        ray._private.node.Node = node  # type: ignore[misc]


def init_ray(
    address: str | None, dashboard: bool = True, num_cpus: int | None = None, lean: bool = True
) -> str | None:
    """Connect to ``address`` (``auto``, ``ray://…``, ``host:port``) or start a local Ray.

    For a local Ray, environment variables the user set win over ``LOCAL_ENV``. Without
    a dashboard it is lean (``_lean_node``) unless ``lean`` is false: a run that serves
    the API keeps Ray's full set of services, as Serve was tested on.
    Returns the dashboard URL, if a dashboard runs.
    """
    if address:
        _check_reachable(address)
        return _dashboard(ray.init(address=address, log_to_driver=False, logging_level=QUIET))
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    # Ray read this variable when it was imported, before we could set it; its
    # children read it at their start and bind to loopback, so the driver must too.
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    # address="local": always a new Ray of our own, never one that a `ray start` or a
    # test cluster left recorded in /tmp/ray (that is what --ray-address auto is for).
    with _lean_node() if lean and not dashboard else contextlib.nullcontext():
        return _dashboard(
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
                logging_level=QUIET,
                _system_config=LOCAL_SYSTEM_CONFIG,
            )
        )


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
