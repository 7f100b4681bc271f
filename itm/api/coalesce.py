"""Expensive work done once for identical concurrent requests, and never too much at once.

Pure threading, no web framework. The API's chart drawing (a long stretch of CPU
holding the GIL) goes through a ``Coalescer`` so that a burst of requests, even each for
another window, cannot pin the replica; the reads that do not depend on the caller
(the dashboard's, the first page of images, the default histogram) go through one
with a short ``max_age``, so that identical requests share one read of MongoDB; and
every request's reads of MongoDB pass a ``Gate``, so that a busy database is a 503 at
once rather than a queue of reads that each end at their time limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Busy(RuntimeError):
    """As much work as allowed is running or waiting: refuse rather than queue."""


class Gate:
    """At most ``slots`` callers inside at once.

    A caller that finds no free slot within ``wait`` seconds raises ``Busy``: a short
    wait absorbs a burst, a long one would only be a queue in disguise. ``wait=None``
    waits for a slot as long as it takes.
    """

    def __init__(self, slots: int, wait: float | None, what: str) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self._wait = wait
        self._refusal = f"{what}: {slots} at once already"
        if wait is not None:
            self._refusal += f", none done within {wait * 1000:g} ms"

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self._wait):
            raise Busy(self._refusal)
        try:
            yield
        finally:
            self._slots.release()


class Coalescer(Generic[K, V]):
    """``fn(key)``, remembered for the last ``cache`` keys for ``max_age`` seconds, and bounded.

    Concurrent calls with one key share one run of ``fn``. At most ``running``
    runs at once and ``waiting`` more wait for a turn; a call that would need
    one more raises ``Busy`` at once. A failed run is not remembered: its
    callers get its exception, the next call tries again. A value's age counts
    from the start of the run that made it; ``max_age=0`` remembers nothing (only
    concurrent calls share).
    """

    def __init__(
        self,
        fn: Callable[[K], V],
        running: int = 1,
        waiting: int = 4,
        cache: int = 32,
        *,
        max_age: float = math.inf,
        what: str = "computations",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._turns = Gate(running, None, what)
        self._capacity = running + waiting
        self._cache = cache
        self._max_age = max_age
        self._what = what
        self._clock = clock
        self._done: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._pending: dict[K, Future[V]] = {}

    def __call__(self, key: K) -> V:
        with self._lock:
            done = self._done.get(key)
            if done is not None and self._clock() - done[1] < self._max_age:
                self._done.move_to_end(key)
                return done[0]
            shared = self._pending.get(key)
            if shared is None:
                if len(self._pending) >= self._capacity:
                    raise Busy(f"{self._what}: {len(self._pending)} running or waiting")
                mine: Future[V] = Future()
                self._pending[key] = mine
        if shared is not None:
            return shared.result()
        try:
            with self._turns():
                born = self._clock()
                value = self._fn(key)
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            mine.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            self._done[key] = (value, born)
            self._done.move_to_end(key)
            while len(self._done) > self._cache:
                self._done.popitem(last=False)
        mine.set_result(value)
        return value
