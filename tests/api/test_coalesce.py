"""The coalescer of expensive work (shared runs, a bound on waiting, failures not kept, values
kept for a while) and the gate of MongoDB reads (a short wait, then a refusal)."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from itm.api.coalesce import Busy, Coalescer
from itm.api.coalesce import Gate as Slots


class Gate:
    """A computation that blocks until released, counting its runs per key."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Semaphore(0)
        self.runs: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, key: str) -> str:
        with self.lock:
            self.runs[key] = self.runs.get(key, 0) + 1
        self.started.release()
        assert self.open.wait(10)
        if key == "boom":
            raise ValueError(key)
        return key.upper()

    def first_run(self, pool: ThreadPoolExecutor, coalescer: Coalescer, key: str) -> Future:
        """``coalescer(key)`` in ``pool``, once its run has started (and blocks)."""
        future = pool.submit(coalescer, key)
        assert self.started.acquire(timeout=10)
        return future

    def together(self, coalescer: Coalescer, key: str, callers: int) -> set[str]:
        """What ``callers`` calls of ``coalescer(key)`` got, all made while the first runs."""
        with ThreadPoolExecutor(callers) as pool:
            first = self.first_run(pool, coalescer, key)
            rest = [pool.submit(coalescer, key) for _ in range(callers - 1)]
            self.open.set()
            return {f.result() for f in [first, *rest]}


def test_identical_concurrent_calls_share_one_run() -> None:
    gate = Gate()
    coalescer = Coalescer(gate, running=1, waiting=0)
    assert gate.together(coalescer, "a", 8) == {"A"}
    assert gate.runs == {"a": 1}
    assert coalescer("a") == "A" and gate.runs == {"a": 1}  # remembered


def test_beyond_running_and_waiting_is_busy_at_once() -> None:
    gate = Gate()
    coalescer = Coalescer(gate, running=1, waiting=1)
    with ThreadPoolExecutor(4) as pool:
        running = gate.first_run(pool, coalescer, "a")
        waiting = pool.submit(coalescer, "b")  # admitted: waits for the one turn
        while len(coalescer._pending) < 2:
            threading.Event().wait(0.01)
        with pytest.raises(Busy):
            coalescer("c")
        shared = pool.submit(coalescer, "a")  # a pending key is shared, never refused
        gate.open.set()
        assert (running.result(), waiting.result(), shared.result()) == ("A", "B", "A")
    assert coalescer("c") == "C"  # room again once they are done
    assert gate.runs == {"a": 1, "b": 1, "c": 1}


def test_failure_reaches_every_caller_and_is_not_remembered() -> None:
    gate = Gate()
    coalescer = Coalescer(gate)
    with ThreadPoolExecutor(2) as pool:
        first = gate.first_run(pool, coalescer, "boom")
        second = pool.submit(coalescer, "boom")
        gate.open.set()
        for future in (first, second):
            with pytest.raises(ValueError):
                future.result()
    with pytest.raises(ValueError):
        coalescer("boom")
    assert gate.runs == {"boom": 2}


def test_cache_keeps_the_latest_keys() -> None:
    gate = Gate()
    gate.open.set()
    coalescer = Coalescer(gate, cache=2)
    for key in ("a", "b", "a", "c", "a", "b"):
        coalescer(key)
    assert gate.runs == {"a": 1, "b": 2, "c": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_reused_until_max_age_then_made_again() -> None:
    gate, clock = Gate(), Clock()
    gate.open.set()
    coalescer = Coalescer(gate, max_age=1.0, clock=clock)
    coalescer("a")
    clock.now = 0.9
    coalescer("a")
    assert gate.runs == {"a": 1}
    clock.now = 1.0
    coalescer("a")
    assert gate.runs == {"a": 2}


def test_max_age_zero_keeps_nothing_but_concurrent_calls_still_share() -> None:
    gate = Gate()
    coalescer = Coalescer(gate, running=1, waiting=0, max_age=0, clock=Clock())
    assert gate.together(coalescer, "a", 4) == {"A"}
    assert gate.runs == {"a": 1}
    coalescer("a")
    assert gate.runs == {"a": 2}


def test_a_full_gate_refuses_after_its_wait_and_admits_when_a_slot_frees() -> None:
    slots = Slots(2, wait=0, what="readers")
    full = "readers: 2 at once already, none done within 0 ms"
    with slots(), slots(), pytest.raises(Busy, match=full), slots():
        pass
    with slots(), slots():  # both slots were given back, even by the refused caller
        pass


def test_a_gate_gives_its_slot_back_when_the_work_fails() -> None:
    slots = Slots(1, wait=0, what="readers")
    with pytest.raises(ValueError), slots():
        raise ValueError("boom")
    with slots():
        pass
