"""The one error type of a line's outcome, and the registry of every reason it can carry."""

from __future__ import annotations

# Every reason a line can fail with, and what it means. The README's Outcomes list
# mirrors this table (a test keeps them equal), and a test checks that every
# ``Failure("…")`` in the code names a reason listed here.
REASONS: dict[str, str] = {
    "invalid_url": "the line is not an absolute http(s) URL: empty, not UTF-8, another "
    "scheme (`file://` is never opened), user:password inside, longer than 2,048 characters, "
    "or a line over 8 KiB",
    "blocked_address": "the host, or a redirect, leads to an address that is not public "
    "(loopback, private, link-local, …); the detail names it and the flag that allows it",
    "http_<status>": "the server answered with that status instead of 200 (`http_404`, …)",
    "timeout": "no connection, no data, or no complete answer within the deadline",
    "connection_error": "the connection was refused, reset or closed early, or TLS failed",
    "too_many_redirects": "more redirects than `--max-redirects`",
    "too_large": "a body over `--max-bytes` (decompressed size counts)",
    "download_error": "the server's answer is not valid HTTP (malformed headers, an "
    "unknown Content-Encoding, a corrupt compressed body)",
    "not_an_image": "HTML, SVG, truncated or unknown data",
    "decompression_bomb": "an image over `--max-pixels`",
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

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"
