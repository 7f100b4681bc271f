"""What of a URL or a MongoDB URI may be stored, served or printed: its secrets masked.

One pure function, ``redact``, for every place that keeps or shows a line (an event's
``url``, an image's ``source_url``, a run's ``in_flight``) or a MongoDB URI (messages):
userinfo in any spelling a parser may take for one, and the values of parameters
whose names say they are secrets. Shared by the job and the API; no Ray, no MongoDB.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

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


# -- the documents: one type per collection, with its builder -------------------------
# A field renamed here is renamed for the writer, the API, the tests and the docs: the
# "Data" section of docs/architecture.md names exactly these fields (tests/test_docs.py).
