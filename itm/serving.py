"""The API as a Ray Serve application.

The deployment builds its FastAPI app on the replica (Serve's late-bound
ingress): only the ``Settings`` travel to the replica, never an app holding a
MongoDB client or matplotlib state.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from itm.api import create_app, require_mongo_uri
from itm.config import Settings

APP_NAME = "itm"


# No CPU reserved: the replica mostly waits on MongoDB, and a whole CPU of a small
# machine (or of a job's Ray) held by an idle API would starve the pipeline.
# Requests run in FastAPI's thread pool, so one replica serves many at once: admit
# 32 (Serve's default of 5 would queue a dashboard's image requests in the proxy).
@serve.deployment(name="itm-api", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32)
@serve.ingress()
class ApiDeployment:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.settings)


def api_application(settings: Settings) -> Application:
    """The bound deployment; fails here, before any replica starts, without a MongoDB URI."""
    require_mongo_uri(settings)
    return ApiDeployment.bind(settings)


def serve_api(settings: Settings) -> None:
    """Serve the API at ``settings.host:settings.port`` on the Ray this process is connected to.

    Returns once the app answers; the caller keeps the process alive and calls
    ``serve.shutdown()`` at the end.
    """
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(api_application(settings), name=APP_NAME, route_prefix="/")
