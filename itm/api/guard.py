"""The API's doors: which ``Host`` it answers, and ``X-Content-Type-Options: nosniff``.

DNS rebinding: a web page at ``attacker.example`` makes that name resolve to
127.0.0.1, then reads the API bound there as its own origin. The browser still
sends ``Host: attacker.example``, so the API answers only the names it knows:
``localhost``, the name it binds (``--host``, when a name), those of
``--api-allowed-hosts``, and any IP address (a page can only reach an address by
that address, a cross-origin read the browser refuses; so addresses are no door for
rebinding, and a container's, a node's or a load balancer's probe by address works).

``nosniff`` stops a browser from guessing a type other than the one the API
declares (a PNG or JSON read as HTML): on every response of the app, its errors too.
"""

from __future__ import annotations

import ipaddress
import json

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from itm.config import Settings

NOSNIFF = (b"x-content-type-options", b"nosniff")
ALLOWED_HOSTS_FLAG = "--api-allowed-hosts (ITM_API_ALLOWED_HOSTS)"
ANY_ADDRESS = ("", "0.0.0.0", "::")


def allowed_names(settings: Settings) -> frozenset[str]:
    """The host names (lowercase) the API answers besides IP addresses: ``localhost``, the
    ``--host`` it binds when that is a name, and ``--api-allowed-hosts`` (comma-separated;
    ``*.example.com`` for its subdomains, ``*`` for every name)."""
    names = {"localhost", settings.host.lower()} - set(ANY_ADDRESS)
    extra = settings.api_allowed_hosts or ""
    names |= {name.strip().lower().rstrip(".") for name in extra.split(",") if name.strip()}
    return frozenset(names)


def host_allowed(host: str | None, names: frozenset[str]) -> bool:
    """Whether a request with this ``Host`` header (port included or not) may be answered.

    A request without one comes from no browser (they all send it): answered.
    """
    if host is None or "*" in names:
        return True
    name = host.lower()
    if name.startswith("["):  # [v6]:port
        name = name[: name.find("]") + 1]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
        return True
    except ValueError:
        pass
    return name in names or any(
        allowed.startswith("*.") and name.endswith(allowed[1:]) for allowed in names
    )


class Guard:
    """Refuses a request whose ``Host`` is not allowed (400), adds ``nosniff`` to every
    response. Pure ASGI, outermost: streamed bodies pass through untouched."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), NOSNIFF]}
            await send(message)

        host = next((value for key, value in scope["headers"] if key == b"host"), None)
        if host_allowed(None if host is None else host.decode("latin-1"), self.names):
            await self.app(scope, receive, send_nosniff)
            return
        shown = host.decode("latin-1")[:100] if host else ""
        detail = f"Host {shown!r} is not a name of this API: add it to {ALLOWED_HOSTS_FLAG}"
        await Response(
            json.dumps({"detail": detail}), status_code=400, media_type="application/json"
        )(scope, receive, send_nosniff)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A crash's 500, as Starlette answers it, with ``nosniff`` too: Starlette sends it
    from outside every middleware."""
    return PlainTextResponse(
        "Internal Server Error", status_code=500, headers={"X-Content-Type-Options": "nosniff"}
    )


def guard(app: FastAPI, settings: Settings) -> None:
    """Put ``Guard`` in front of ``app`` (add it last: outermost)."""
    app.add_middleware(Guard, names=allowed_names(settings))
    app.add_exception_handler(Exception, _internal_error)
