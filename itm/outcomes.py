"""The one outcome vocabulary: a line, its failure and reasons, the counts of outcomes.

Both wings speak it: the job produces outcomes, the API shows them. Pure: no Ray, no
MongoDB.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

Line = tuple[int, str]  # (1-based line number, text of the line)


class Reason(str, Enum):
    """Every reason a line can fail with, and what it means.

    ``value`` is what events store and metrics tag; ``description`` is the one text of
    the reason, shown by the dashboard and generated into the README's Outcomes table.
    ``HTTP`` stands for its family, ``http_<status>``: build one with ``Reason.http``.
    """

    _value_: str
    description: str

    def __new__(cls, value: str, description: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    INVALID_URL = (
        "invalid_url",
        "not an absolute http(s) URL: empty, not UTF-8, another scheme (`file://` is never "
        'opened), `user:password@` inside in any spelling (see "Secrets"), a URL over 2,048 '
        'characters, or a line over 8,192 characters ("line too long")',
    )
    BLOCKED_ADDRESS = (
        "blocked_address",
        "the host, or a redirect, leads to an address that is not public (loopback, private, "
        "link-local, …); the detail names the address and the flag that allows it "
        '(see "Fetch policy")',
    )
    HTTP = (
        "http_<status>",
        "the server answered that status instead of 200 (`http_404`, `http_503`, …)",
    )
    TIMEOUT = (
        "timeout",
        "no connection, no data, or no complete answer within `--deadline`; or no turn for "
        "the host within it (`--per-host`: the detail says so)",
    )
    CONNECTION_ERROR = (
        "connection_error",
        "the connection was refused, reset or closed early, the host name was not found, "
        "or TLS failed (certificate refused, CA certificates unreadable)",
    )
    TOO_MANY_REDIRECTS = ("too_many_redirects", "more redirects than `--max-redirects`")
    TOO_LARGE = ("too_large", "a body over `--max-bytes`, decompressed size counted")
    DOWNLOAD_ERROR = (
        "download_error",
        "the answer is not valid HTTP (malformed status line or headers, unknown "
        "`Content-Encoding`, corrupt compressed body)",
    )
    NOT_AN_IMAGE = (
        "not_an_image",
        "HTML, SVG, truncated, corrupt or unknown data, or a variant of an image format that "
        "Pillow does not decode; the detail gives the format guessed (or none), the size and "
        "the first bytes",
    )
    UNSUPPORTED_FORMAT = (
        "unsupported_format",
        "an image format itm refuses to decode: EPS (Pillow would run Ghostscript on it), "
        'WMF, and formats Pillow has no decoder for (see "Images"); the detail names it',
    )
    DECOMPRESSION_BOMB = (
        "decompression_bomb",
        "an image over `--max-pixels`, whether its header says so or its decoder finds out "
        "(an ICO entry, a TIFF tile, a GIF frame)",
    )
    PROCESSING_ERROR = ("processing_error", "the decoder failed in an unexpected way")
    WORKER_FAILED = (
        "worker_failed",
        "a task of the line's group failed each time it was submitted",
    )
    STORAGE_ERROR = (
        "storage_error",
        "MongoDB refused the line's documents (too large, invalid); the rest of the batch "
        "is stored",
    )

    @staticmethod
    def http(status: int) -> str:
        """The reason of an answer with that status instead of 200: ``http_404``, …"""
        return f"http_{status}"


class Failure(Exception):
    """Why one input line failed. ``reason`` is the stable value of a ``Reason``,
    ``detail`` is for people.

    Raised by the pure steps and returned as a value by the Ray tasks, so that one
    bad line never fails a whole batch.
    """

    def __init__(self, reason: Reason | str, detail: str) -> None:
        reason = reason.value if isinstance(reason, Reason) else reason
        super().__init__(reason, detail)
        self.reason: str = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


HTTP_STATUS = re.compile(r"http_[1-5]\d\d")
HTTP_CLASS = re.compile(r"http_([1-5])xx")


def parse_reasons(spec: str) -> list[str]:
    """The reasons of a comma-separated list such as ``timeout,http_404,http_5xx``.

    Accepted: every ``Reason`` but the family placeholder ``http_<status>``, an
    ``http_<status>`` such as ``http_503``, and a class such as ``http_5xx`` (every
    ``http_5NN``). Anything else is a ``ValueError`` that lists what is valid: a typo
    must not select nothing.
    """
    reasons = [part.strip() for part in spec.split(",") if part.strip()]
    named = {reason.value for reason in Reason} - {Reason.HTTP.value}
    unknown = [
        r
        for r in reasons
        if r not in named and not HTTP_STATUS.fullmatch(r) and not HTTP_CLASS.fullmatch(r)
    ]
    if unknown or not reasons:
        valid = ", ".join(sorted(named | {"http_<status> (e.g. http_404)", "http_4xx", "http_5xx"}))
        raise ValueError(
            f"unknown reason(s) {', '.join(unknown) or '(none given)'}; valid: {valid}"
        )
    return reasons


def reason_filter(reasons: list[str] | None) -> Callable[[str], bool]:
    """Whether a stored reason is one of ``reasons`` (``http_5xx`` names a class); any if None."""
    if not reasons:
        return lambda reason: True
    names = {r for r in reasons if not HTTP_CLASS.fullmatch(r)}
    classes = tuple(f"http_{r[5]}" for r in reasons if HTTP_CLASS.fullmatch(r))
    return lambda reason: (
        reason in names
        or (HTTP_STATUS.fullmatch(reason) is not None and reason.startswith(classes))
    )


def describe(reason: str) -> str:
    """What a stored reason means (``http_404`` is one of the ``http_<status>`` family)."""
    if reason.startswith("http_") and reason[5:].isdigit():
        return Reason.HTTP.description
    return next((member.description for member in Reason if member.value == reason), "")


@dataclass
class Counts:
    """Outcomes of some lines: what the progress bar and the summary show."""

    success: int = 0
    error: int = 0
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def lines(self) -> int:
        return self.success + self.error

    def add(self, other: Counts) -> None:
        self.success += other.success
        self.error += other.error
        self.duplicates += other.duplicates
        self.reasons.update(other.reasons)

    def as_totals(self) -> dict[str, Any]:
        """As the run document keeps them (``totals``), and the API shows them."""
        return {
            "lines": self.lines,
            "success": self.success,
            "error": self.error,
            "duplicates": self.duplicates,
            "reasons": dict(self.reasons),
        }

    @classmethod
    def of_events(cls, events: Iterable[Mapping[str, Any]]) -> Counts:
        """Counts of event documents, or of groups of them that carry their size ``n``."""
        counts = cls()
        for event in events:
            n = event.get("n", 1)
            if event["status"] == "success":
                counts.success += n
                counts.duplicates += n if event.get("duplicate") else 0
            else:
                counts.error += n
                counts.reasons[event["reason"]] += n
        return counts
