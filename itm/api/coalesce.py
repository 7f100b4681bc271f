"""Expensive work done once for identical concurrent requests, and never too much at once.

Pure threading, no web framework: the API's chart drawing (~0.1 s of CPU holding
the GIL) goes through a ``Coalescer`` so that a burst of requests, even each for
another window, cannot pin the replica.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Busy(RuntimeError):
    """As many computations as allowed are running or waiting: refuse rather than queue."""


class Coalescer(Generic[K, V]):
    """``fn(key)``, remembered for the last ``cache`` keys, and bounded.

    Concurrent calls with one key share one run of ``fn``. At most ``running``
    runs at once and ``waiting`` more wait for a turn; a call that would need
    one more raises ``Busy`` at once. A failed run is not remembered: its
    callers get its exception, the next call tries again.
    """

    def __init__(
        self, fn: Callable[[K], V], running: int = 1, waiting: int = 4, cache: int = 32
    ) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._turns = threading.Semaphore(running)
        self._capacity = running + waiting
        self._cache = cache
        self._done: OrderedDict[K, V] = OrderedDict()
        self._pending: dict[K, Future[V]] = {}

    def __call__(self, key: K) -> V:
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key]
            shared = self._pending.get(key)
            if shared is None:
                if len(self._pending) >= self._capacity:
                    raise Busy(f"{len(self._pending)} computations running or waiting")
                mine: Future[V] = Future()
                self._pending[key] = mine
        if shared is not None:
            return shared.result()
        try:
            with self._turns:
                value = self._fn(key)
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            mine.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            self._done[key] = value
            while len(self._done) > self._cache:
                self._done.popitem(last=False)
        mine.set_result(value)
        return value
