"""The Ray tasks of the job: download a chunk (a streaming generator that hands over
groups), the MD5 of a group, the grayscale of a group. Thin: the work is the pure
code of ``itm.job.download`` and ``itm.job.imaging``; ``itm.job.pipeline`` drives them.

``download_chunk`` is never re-run by Ray (``max_retries=0``): it would fetch new
bytes behind the driver's back (a new random photo) after md5 or gray read the old
ones; the driver downloads such lines again itself (see ``itm.job.pipeline``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.actor import ActorHandle

from itm.config import Settings
from itm.job.decode_turns import decode_turn
from itm.job.download import HostHand, fetch, first_host
from itm.job.host_gate import LocalGate
from itm.job.imaging import GrayImage, grayscale_png, md5_hex
from itm.outcomes import Failure, Line, Reason

GROUP_WAIT = 0.1  # seconds a downloaded line may wait for its group to fill
GROUP_BYTES = 32 * 1024 * 1024  # a group of large images goes on before --batch-size lines


@dataclass(frozen=True)
class Downloaded:
    """One line after its download: the bytes (zero-copy in the object store) or why not."""

    data: np.ndarray | None
    failure: Failure | None = None

    @property
    def size(self) -> int:
        return 0 if self.data is None else self.data.nbytes


def _fetch_line(line: str, settings: Settings, hand: HostHand) -> Downloaded:
    try:
        return Downloaded(np.frombuffer(fetch(line, settings, hand), dtype=np.uint8))
    except Failure as failure:
        return Downloaded(None, failure)


def groups(
    done: queue.SimpleQueue[tuple[Line, Downloaded]],
    total: int,
    size: int,
    max_bytes: int = GROUP_BYTES,
    wait: float = GROUP_WAIT,
) -> Iterator[list[tuple[Line, Downloaded]]]:
    """Cut ``total`` finished downloads, as they arrive on ``done``, into groups.

    A group goes on at ``size`` lines, at ``max_bytes``, or ``wait`` seconds after
    its first line arrived: full groups on a fast network, no line held long on a
    slow one, a bounded group of large images.
    """
    remaining = total
    while remaining:
        group = [done.get()]
        weight = group[0][1].size
        flush_at = time.monotonic() + wait
        while len(group) < min(size, remaining) and weight < max_bytes:
            try:
                group.append(done.get(timeout=max(0.0, flush_at - time.monotonic())))
            except queue.Empty:
                break
            weight += group[-1][1].size
        remaining -= len(group)
        yield group


# Downloads wait on the network, not on a CPU: they reserve none; the driver bounds
# how many run (one per node, plus one finishing its slowest lines). SPREAD puts them
# on every node of a cluster; md5 and gray then run where the bytes are.
# max_retries=0: see the module's docstring (one source of bytes per line).
# Each group is two objects: its line numbers (for the driver), then its bytes; the
# generator pauses while the driver has not taken its last groups (backpressure).
@ray.remote(  # type: ignore[call-overload,untyped-decorator]  # Ray's stubs lack this option
    num_cpus=0, scheduling_strategy="SPREAD", max_retries=0, _generator_backpressure_num_objects=4
)
def download_chunk(
    lines: list[Line], settings: Settings, threads: int, host_slots: ActorHandle[Any] | None
) -> Iterator[object]:
    done: queue.SimpleQueue[tuple[Line, Downloaded]] = queue.SimpleQueue()
    todo: queue.SimpleQueue[Line | None] = queue.SimpleQueue()
    gate = None if host_slots is None else LocalGate(host_slots, settings.per_host)
    # A line is taken only when an earlier one has been handed over: memory stays flat.
    slots = threading.Semaphore(threads)
    workers = min(threads, len(lines))

    def work() -> None:
        hand = HostHand(gate)
        while (line := todo.get()) is not None:
            done.put((line, _fetch_line(line[1], settings, hand)))

    def expect(at: int) -> None:
        """Tell the gate of the line ``threads`` ahead: its slot is asked for while the
        lines before it download, not when it starts."""
        if gate is not None and at < len(lines) and (host := first_host(lines[at][1])):
            gate.expect(host)

    def feed() -> None:
        for at in range(workers):
            expect(at)
        for at, line in enumerate(lines):
            slots.acquire()
            todo.put(line)
            expect(at + workers)

    for _ in range(workers):
        threading.Thread(target=work, name="download", daemon=True).start()
    threading.Thread(target=feed, daemon=True).start()
    try:
        for group in groups(done, len(lines), settings.batch_size):
            yield [number for (number, _), _ in group]
            yield [item for _, item in group]
            for _ in group:
                slots.release()
    finally:
        for _ in range(workers):  # each ends after its current line
            todo.put(None)
        if gate is not None:
            gate.close()


# md5 shares the CPU slots with gray although it takes microseconds per image: a
# task that reserves no CPU gets a new worker process (seconds of CPU to start)
# whenever none is idle; so the pure steps never need more workers than CPUs.
@ray.remote(num_cpus=1)
def md5_group(group: list[Downloaded]) -> list[str | None]:
    return [None if item.data is None else md5_hex(item.data) for item in group]


@ray.remote(num_cpus=1)
def gray_group(group: list[Downloaded], settings: Settings) -> list[GrayImage | Failure]:
    return [_gray(item, settings) for item in group]


def _gray(item: Downloaded, settings: Settings) -> GrayImage | Failure:
    if item.failure is not None:
        return item.failure
    assert item.data is not None  # a download has its bytes or its failure
    try:
        return grayscale_png(item.data, settings.max_pixels, settings.png_level, decode_turn)
    except Failure as failure:
        return failure
    except Exception as exc:  # a decoder bug must not cost the other lines of the group
        return Failure(Reason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
