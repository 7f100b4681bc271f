"""Content negotiation: what a client's ``Accept`` and ``If-None-Match`` ask for."""

from __future__ import annotations

PNG = "image/png"


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison of an ``If-None-Match`` list with our (strong) ETag."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def wants_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers ``application/json`` to a PNG (named, not ``*/*``)."""
    quality = {}
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = q
    json_q = quality.get("application/json", 0.0)
    return json_q > 0 and json_q >= quality.get(PNG, quality.get("image/*", 0.0))
