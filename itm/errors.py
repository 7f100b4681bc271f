"""The one error type of a line's outcome: a machine-readable reason and a human detail."""

from __future__ import annotations


class Failure(Exception):
    """Why one input line failed. ``reason`` is a stable key (``http_404``, ``timeout``,
    ``too_large``, ``not_an_image``, ``invalid_url``…), ``detail`` is for people.

    Raised by the pure steps and returned as a value by the Ray tasks, so that one
    bad line never fails a whole batch.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"
