"""The MongoDB data contract: collection names, indexes and the client settings.

Shared by the writer actor (the only writer) and the API (a reader), so that both
agree on one schema:

- ``images``: one document per distinct image, unique on ``md5``; ``gray`` holds
  the grayscale PNG, or ``gray_id`` names a file of the GridFS bucket ``gray``
  when the PNG is too large for a document.
- ``events``: one document per processed input line, unique on (``run_id``, ``line``);
  inserted once, never updated.
- ``monitoring``: one document per minute, unique on ``minute``: ``success``,
  ``error``, ``reasons`` (errors per reason), ``by_run`` (the same per run, under
  ``field_key(run_id)``, with ``duplicates``); ``tallies`` is the writer's bookkeeping.
- ``runs``: one document per run, ``_id`` is the run id; ``minutes`` lists the
  minutes that hold its counters, so a run's totals are a sum over a few documents.

A line counts in the UTC minute its processing finished: ``floor_minute`` is that
bucketing, for the writer that counts and the API that reads.

No secret is stored: ``redact`` is what of a URL (``url``, ``source_url``,
``in_flight``) or of a MongoDB URI (in messages) may be stored or shown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import unquote

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.database import Database

IMAGES = "images"
EVENTS = "events"
MONITORING = "monitoring"
RUNS = "runs"
GRAY_BUCKET = "gray"

T = TypeVar("T")

# A document may hold 16 MiB; keep room for the other fields.
MAX_INLINE_PNG = 15 * 1024 * 1024

MINUTE = timedelta(minutes=1)  # the width of a monitoring bucket
# Windows are clamped into this range: nothing itm counted is older than the Unix
# epoch, and the margin below year 10000 keeps datetime and matplotlib arithmetic
# from overflowing, whatever bounds a client asks for.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9998, 12, 31, tzinfo=timezone.utc)


def connect(uri: str, timeout_ms: int = 5000, **options: Any) -> MongoClient[dict[str, Any]]:
    """A client that returns tz-aware UTC datetimes and fails fast when nobody answers;
    ``options`` go to ``MongoClient`` as they are."""
    return MongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="itm",
        **options,
    )


MASK = "***"
# Where a URL's authority starts, in every spelling a parser may take for one: after
# ``scheme:`` and any slashes or backslashes (a browser reads ``http:\\`` and ``http:``
# as ``http://``), or after ``//``. It ends at ``/``, ``?`` or ``#``, as Python reads it.
_AUTHORITY = re.compile(r"^(\s*(?:[A-Za-z][A-Za-z0-9+.-]*:[/\\]*|[/\\]{2,}))([^/?#]*)")
# An authority that a host and port can be: else a ``:`` is a password's, cut short by
# an unencoded ``/``, ``?`` or ``#`` (``http://user:pa/ss@host/``).
_HOST_PORT = re.compile(r"(?:\[[^\]]*\]|[^:\[\]]*)(?::\d*)?")
# Parameter names (lowercased, without ``-``, ``_`` and ``.``) whose values are secrets:
# these names, and those ending in one of the suffixes.
SECRET_NAMES = frozenset({"key", "sig", "sign", "auth", "pwd", "pass", "hmac", "jwt"})
SECRET_SUFFIXES = (
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "credential",
    "credentials",
    "apikey",
    "sessionid",
    "sessid",
)


def redact(text: str) -> str:
    """``text`` (a URL, a MongoDB URI, an input line) with every secret in it replaced by
    ``***``, for what is stored, served, printed or logged.

    Secrets are the userinfo (``user:password@``, in every spelling of ``has_userinfo``)
    and the values of parameters whose name says secret (``is_secret_name``): in the
    query (``?token=…``, ``X-Amz-Signature=…``), the fragment (``#access_token=…``) and
    path parameters (``;jsessionid=…``), and ``NAME:value`` pairs of a parameter's value
    (MongoDB's ``authMechanismProperties=AWS_SESSION_TOKEN:…``). The rest stays as it was
    written, so the text still says which URL it was. Pure: no parsing that could fail.
    """
    shown = []
    while text:  # a line may hold several URLs: each word gets its own look
        start, rest = _split_userinfo(text) or ("", text)
        space = re.search(r"\s+", rest)
        word, text = (rest[: space.start()], rest[space.end() :]) if space else (rest, "")
        path, hash_sign, fragment = word.partition("#")
        path, question_mark, query = path.partition("?")
        shown += [start, _redact_params(path, "/;")]
        if question_mark:
            shown += ["?", _redact_params(query, "&;")]
        if hash_sign:
            shown += ["#", _redact_params(fragment, "&;")]
        shown.append(space.group() if space else "")
    return "".join(shown)


def has_userinfo(text: str) -> bool:
    """Whether ``text`` carries a ``user:password@`` that ``redact`` hides: in its authority
    (after ``scheme://``, ``//``, ``scheme:`` or ``scheme:\\\\``), or in an authority that
    no host can be, cut short by an unencoded ``/``, ``?`` or ``#`` in the password."""
    return _split_userinfo(text) is not None


def is_secret_name(name: str) -> bool:
    """Whether a parameter named ``name`` (percent-encoded or not, any case) holds a secret."""
    plain = re.sub(r"[-_.\s]", "", unquote(name)).lower()
    return plain in SECRET_NAMES or plain.endswith(SECRET_SUFFIXES)


def _split_userinfo(text: str) -> tuple[str, str] | None:
    """``text`` cut after its authority, the userinfo masked; ``None`` without userinfo."""
    found = _AUTHORITY.match(text)
    if found is None:
        return None
    prefix, authority = found.groups()
    end = found.end()
    if "@" in authority:
        host = authority.rpartition("@")[2]
        return f"{prefix}{MASK}@{host}", text[end:]
    if _HOST_PORT.fullmatch(authority) is None and "@" in text[end:]:
        tail = text[end:].rpartition("@")[2]  # a password may hold "@" too: the last one
        host = re.match(r"[^/?#]*", tail)
        assert host is not None  # matches the empty string at least
        return f"{prefix}{MASK}@{host.group()}", tail[host.end() :]
    return None


def _redact_params(text: str, separators: str) -> str:
    """``name=value`` pairs of ``text``, cut by ``separators``, with secret values masked."""

    def mask(found: re.Match[str]) -> str:
        lead, name, value = found.groups()
        if is_secret_name(name):
            return f"{lead}{name}={MASK if value else ''}"
        return f"{lead}{name}={_redact_pairs(value)}"

    return re.sub(rf"(^|[{separators}])([^{separators}=]*)=([^{separators}]*)", mask, text)


def _redact_pairs(value: str) -> str:
    """``NAME:value,NAME:value`` (MongoDB's ``authMechanismProperties``) with the values of
    secret names masked; the whole value when it is percent-encoded."""
    plain = unquote(value)
    pairs = [pair.partition(":") for pair in plain.split(",")]
    if not any(colon and is_secret_name(name) for name, colon, _ in pairs):
        return value
    if plain != value:
        return MASK
    return ",".join(
        f"{name}:{MASK}" if colon and is_secret_name(name) else name + colon + rest
        for name, colon, rest in pairs
    )


def ensure_indexes(db: Database[Any]) -> None:
    """Create the indexes the contract relies on (idempotent)."""
    db[IMAGES].create_index([("md5", ASCENDING)], unique=True)
    db[IMAGES].create_index([("inserted_at", DESCENDING), ("md5", DESCENDING)])
    db[EVENTS].create_index([("run_id", ASCENDING), ("line", ASCENDING)], unique=True)
    db[MONITORING].create_index([("minute", ASCENDING)], unique=True)
    db[RUNS].create_index([("started_at", DESCENDING), ("_id", DESCENDING)])


def field_key(name: str) -> str:
    """A reason or a run id as a field name: no dots, no leading ``$``."""
    return name.replace(".", "_").lstrip("$") or "unknown"


WINDOW = 10_000  # line numbers per query when a whole run is read


def events_by_line(
    db: Database[Any], run_id: str, projection: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The run's events in line order, by windows of lines (see ``by_window``)."""
    projection = {"_id": 0, "line": 1, **projection}
    return by_window(
        db,
        run_id,
        lambda window: db[EVENTS].find(window, projection).sort("line", ASCENDING),
    )


def by_window(
    db: Database[Any],
    run_id: str,
    read: Callable[[dict[str, Any]], Iterable[T]],
) -> Iterator[T]:
    """``read`` over the run's events, ``WINDOW`` line numbers per query, in line order.

    No query touches more than a window's events, however long the run: SecantusDB
    fetches and sorts every match of a query before its ``limit`` (a page of a
    million-line run took minutes), and answers nothing else meanwhile, so pymongo's
    heartbeat gives up and cancels the query. An empty window (a gap in the run's
    lines) is followed by a jump to the next line that has an event, or the end.
    """
    after = 0
    while True:
        found = list(read({"run_id": run_id, "line": {"$gt": after, "$lte": after + WINDOW}}))
        yield from found
        after += WINDOW
        if not found:
            following = db[EVENTS].find_one(
                {"run_id": run_id, "line": {"$gt": after}},
                {"_id": 0, "line": 1},
                sort=[("line", ASCENDING)],
            )
            if following is None:
                return
            after = following["line"] - 1


def to_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # within a day of datetime.min or datetime.max
        return EARLIEST if moment.year == 1 else LATEST


def floor_minute(moment: datetime, width: timedelta = MINUTE) -> datetime:
    """The UTC minute that contains ``moment`` (tests of the writer pass a shorter ``width``)."""
    moment = to_utc(moment)
    return moment - (moment - EARLIEST) % width
