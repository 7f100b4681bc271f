"""The API as a Ray Serve application.

The deployment builds its FastAPI app on the replica (Serve's late-bound
ingress): only the ``Settings`` travel to the replica, never an app holding a
MongoDB client or matplotlib state.

Two request paths, chosen by the environment Serve's processes start with
(``serve_env``, applied by ``python -m itm.run`` before it starts its local Ray):

- **direct ingress** (the default of a local Ray): the replica itself runs the
  uvicorn server of the public port, as plain uvicorn would. Serve's proxy
  still starts, on another port of the same host (a free one), as a fallback.
- **the proxy path** (``--no-direct-ingress``, or a Ray cluster started
  without ``serve_env``): Serve's proxy actor owns the port and hands every
  request to a replica through Ray: one more hop, and its CPU, per request.
"""

from __future__ import annotations

import os
import socket
import time

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from itm.api.app import create_app, require_mongo_uri
from itm.api.overload import RETRY_AFTER_S
from itm.config import Settings, free_port

APP_NAME = "itm"

# Serve reads its switches from the environment when each of its processes starts,
# so they are set before ``ray.init`` starts a local Ray; a variable the user set wins.
# The trims of the request path (both paths): user code and router on the replica's
# main event loop (no thread hop per request), request logs buffered, not echoed.
SERVE_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}
# Read by Serve's controller, which a config file's runtime_env does not reach: the
# controller reconciles every 0.5 s, not 0.1 s (Serve's default). Its loop is a large
# share of the CPU an idle Serve burns, and the shorter interval buys reaction times
# (deploys, a dead replica) that a one-host API does not need.
CONTROLLER_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}
DIRECT_INGRESS = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
MIN_PORT = "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"
MAX_PORT = "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"
# Direct ingress, with the replica's port range narrowed to the public port. No load
# balancer has to notice a stopping replica here, so it stops at once (Serve's default
# holds it 30 s), and a restarted replica takes the port back at once (not after 150 s).
DIRECT_INGRESS_ENV = {
    DIRECT_INGRESS: "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
    "RAY_SERVE_PORT_QUARANTINE_S": "0",
}


def serve_env(settings: Settings) -> dict[str, str]:
    """The environment Serve's processes need for the request path ``settings`` asks for."""
    env = {**SERVE_ENV, **CONTROLLER_ENV}
    if not settings.direct_ingress:
        return env
    # Serve's range excludes its maximum: [port, port + 1) is the public port alone.
    port_range = {MIN_PORT: str(settings.port), MAX_PORT: str(settings.port + 1)}
    return {**env, **DIRECT_INGRESS_ENV, **port_range}


def apply_serve_env(settings: Settings) -> None:
    """Set ``serve_env`` in this process, for the Ray it starts next; the user's values win."""
    for key, value in serve_env(settings).items():
        os.environ.setdefault(key, value)


def direct_ingress_on(port: int) -> bool:
    """Whether this process's environment makes the replica own ``port`` (see ``serve_env``)."""
    env = os.environ
    return (
        env.get(DIRECT_INGRESS) == "1"
        and env.get(MIN_PORT) == str(port)
        and env.get(MAX_PORT) == str(port + 1)
    )


# No CPU reserved: the replica mostly waits on MongoDB, and a whole CPU of a small
# machine (or of a job's Ray) held by an idle API would starve the pipeline.
# Requests run in FastAPI's thread pool, so one replica serves many at once. On a
# cluster, raise num_replicas (or set autoscaling_config) in serve_config.yaml.
@serve.deployment(
    name="itm-api",
    ray_actor_options={"num_cpus": 0},
    # Requests in flight are finished when it stops; checked every 0.2 s, not 2 s.
    graceful_shutdown_wait_loop_s=0.2,
    graceful_shutdown_timeout_s=10,
    # Serve's own 503 (its queue full) tells clients when to come back, as the app's do.
    backpressure_config=BackpressureConfig(retry_after_s=RETRY_AFTER_S),
)
@serve.ingress()
class ApiDeployment:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.settings)


def api_application(settings: Settings) -> Application:
    """The bound deployment, with the request bounds of ``settings``; fails here, before
    any replica starts, without a MongoDB URI."""
    require_mongo_uri(settings)
    bounds = ApiDeployment.options(  # type: ignore[attr-defined]
        max_ongoing_requests=settings.api_max_ongoing, max_queued_requests=settings.api_max_queued
    )
    return bounds.bind(settings)  # type: ignore[no-any-return]  # Serve's decorators are untyped


def serve_api(settings: Settings, timeout: float = 30.0) -> None:
    """Serve the API at ``settings.host:settings.port`` on the Ray this process is connected to.

    Returns once the port accepts connections; the caller keeps the process alive
    and calls ``serve.shutdown()`` at the end.
    """
    direct = direct_ingress_on(settings.port)
    # Under direct ingress the replica owns the public port: the proxy takes a free one.
    proxy_port = free_port() if direct else settings.port
    serve.start(http_options={"host": settings.host, "port": proxy_port})
    serve.run(api_application(settings), name=APP_NAME, route_prefix="/")
    _wait_for_port(settings.host, settings.port, timeout)


def _wait_for_port(host: str, port: int, timeout: float) -> None:
    """Fail loudly when nothing listens on the public port (say, a cluster without direct
    ingress while this process's environment asked for it)."""
    address = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the API was deployed but nothing listens on {host}:{port}"
                ) from None
            time.sleep(0.05)
