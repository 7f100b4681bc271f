"""The API wing: the FastAPI app that reads MongoDB, and its Ray Serve deployment.

``uvicorn --factory itm.api:create_app`` names this package. ``create_app`` is
imported on first use, so that a module of the wing (``itm.api.queries``, say)
loads without FastAPI.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from itm.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
