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
    """Every reason a line can fail with; ``value`` is what events store and metrics tag.

    ``HTTP`` stands for its family, ``http_<status>``: build one with ``Reason.http``.
    """

    INVALID_URL = "invalid_url"
    BLOCKED_ADDRESS = "blocked_address"
    HTTP = "http_<status>"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TOO_LARGE = "too_large"
    DOWNLOAD_ERROR = "download_error"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECOMPRESSION_BOMB = "decompression_bomb"
    PROCESSING_ERROR = "processing_error"
    WORKER_FAILED = "worker_failed"
    STORAGE_ERROR = "storage_error"

    @staticmethod
    def http(status: int) -> str:
        """The reason of an answer with that status instead of 200: ``http_404``, …"""
        return f"http_{status}"


# Every reason a line can fail with, and what it means. The README's Outcomes list
# mirrors this table (a test keeps them equal), and a test checks that every
# ``Failure(…)`` in the code names a ``Reason``, whose values are these keys.
REASONS: dict[str, str] = {
    "invalid_url": "the line is not an absolute http(s) URL: empty, not UTF-8, another "
    "scheme (`file://` is never opened), user:password inside, longer than 2,048 characters, "
    "or a line over 8 KiB",
    "blocked_address": "the host, or a redirect, leads to an address that is not public "
    "(loopback, private, link-local, …); the detail names it and the flag that allows it",
    "http_<status>": "the server answered with that status instead of 200 (`http_404`, …)",
    "timeout": "no connection, no data, or no complete answer within the deadline (or no "
    "turn for the host under `--per-host`)",
    "connection_error": "the connection was refused, reset or closed early, or TLS failed",
    "too_many_redirects": "more redirects than `--max-redirects`",
    "too_large": "a body over `--max-bytes` (decompressed size counts)",
    "download_error": "the server's answer is not valid HTTP (malformed headers, an "
    "unknown Content-Encoding, a corrupt compressed body)",
    "not_an_image": "HTML, SVG, truncated, corrupt or unknown data, or a variant of an "
    "image format that Pillow does not decode; the detail gives the format guessed, the "
    "size and the first bytes",
    "unsupported_format": "an image format itm refuses to decode, because Pillow would hand "
    "it to another program (EPS: Ghostscript) or has no decoder of its own; the detail "
    "names it",
    "decompression_bomb": "an image over `--max-pixels`, whether its header says so or its "
    "decoder finds out",
    "processing_error": "the decoder failed in an unexpected way",
    "worker_failed": "a task of the batch failed even after Ray's retries",
    "storage_error": "MongoDB refused the line's documents (too large, invalid); the rest "
    "of the batch is stored",
}


class Failure(Exception):
    """Why one input line failed. ``reason`` is a stable key from ``REASONS``,
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

    Accepted: every reason of ``REASONS``, an ``http_<status>`` such as ``http_503``,
    and a class such as ``http_5xx`` (every ``http_5NN``). Anything else is a
    ``ValueError`` that lists what is valid: a typo must not select nothing.
    """
    reasons = [part.strip() for part in spec.split(",") if part.strip()]
    named = set(REASONS) - {"http_<status>"}
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
        reason = Reason.HTTP.value
    return REASONS.get(reason, "")


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
