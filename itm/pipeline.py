"""The job on Ray: download → (md5 ∥ grayscale) → writer, in batches, with backpressure.

Per batch of input lines the driver submits four calls and waits on none of them:

    download_batch ─┬─> md5_batch ──┐
                    └─> gray_batch ─┴─> writer.write

The downloaded bytes are numpy arrays in the object store, so ``md5_batch`` and
``gray_batch`` read the same shared memory in parallel, without copies. Batches
keep Ray's per-task cost (about 1 ms) small next to the work.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import ray
from ray.actor import ActorHandle

from itm.config import Settings
from itm.download import fetch
from itm.errors import Failure
from itm.imaging import GrayImage, grayscale_png, md5_hex
from itm.lines import Line
from itm.writer import Counts, MongoUnavailable


@dataclass(frozen=True)
class Downloaded:
    """One line after its download: the bytes (zero-copy in the object store) or why not."""

    data: np.ndarray | None
    failure: Failure | None = None


def _download(line: str, settings: Settings) -> Downloaded:
    try:
        return Downloaded(np.frombuffer(fetch(line, settings), dtype=np.uint8))
    except Failure as failure:
        return Downloaded(None, failure)


# Downloads wait on the network, not on a CPU: they reserve none, so their number
# is set by ``Settings.concurrency`` alone; a batch downloads its lines in threads.
# SPREAD puts them on every node of a cluster (a task that needs no CPU would
# otherwise stay on the driver's node); md5 and gray then run where the bytes are.
@ray.remote(num_cpus=0, scheduling_strategy="SPREAD")
def download_batch(lines: list[Line], settings: Settings) -> list[Downloaded]:
    with ThreadPoolExecutor(max_workers=len(lines), thread_name_prefix="download") as pool:
        return list(pool.map(lambda line: _download(line[1], settings), lines))


# Hashing a batch takes microseconds per image: it needs no CPU of its own.
@ray.remote(num_cpus=0)
def md5_batch(batch: list[Downloaded]) -> list[str | None]:
    return [None if item.data is None else md5_hex(item.data) for item in batch]


@ray.remote(num_cpus=1)
def gray_batch(batch: list[Downloaded], settings: Settings) -> list[GrayImage | Failure]:
    return [_gray(item, settings) for item in batch]


def _gray(item: Downloaded, settings: Settings) -> GrayImage | Failure:
    if item.failure is not None:
        return item.failure
    try:
        return grayscale_png(item.data, settings.max_pixels, settings.png_level)
    except Failure as failure:
        return failure
    except Exception as exc:  # a decoder bug must not cost the other lines of the batch
        return Failure("processing_error", f"{type(exc).__name__}: {exc}")


def submit(writer: ActorHandle, run_id: str, lines: list[Line], settings_ref: ray.ObjectRef
           ) -> tuple[ray.ObjectRef, ray.ObjectRef]:
    """Start one batch; return (its download ref, its writer ref)."""
    downloaded = download_batch.remote(lines, settings_ref)
    md5s = md5_batch.remote(downloaded)
    grays = gray_batch.remote(downloaded, settings_ref)
    return downloaded, writer.write.remote(run_id, lines, md5s, grays)


def run_batches(
    lines: Iterable[Line],
    writer: ActorHandle,
    run_id: str,
    settings: Settings,
    on_batch: Callable[[Counts], None] = lambda counts: None,
) -> Counts:
    """Push every line through the pipeline; return the outcomes this call wrote.

    Backpressure: at most ``concurrency // batch_size`` download tasks run at once,
    and past them at most as many batches as the cluster has CPUs (at least as many
    as downloads), so the grayscale tasks can fill every CPU while memory stays flat
    however long the input is.
    """
    downloads_cap = max(1, settings.concurrency // settings.batch_size)
    batches_cap = downloads_cap + max(downloads_cap, int(ray.cluster_resources().get("CPU", 1)))
    settings_ref = ray.put(settings)
    batches = _batched(lines, settings.batch_size)
    downloading: set[ray.ObjectRef] = set()
    writing: dict[ray.ObjectRef, list[Line]] = {}
    total = Counts()
    exhausted = False
    while True:
        while not exhausted and len(downloading) < downloads_cap and len(writing) < batches_cap:
            batch = next(batches, None)
            if batch is None:
                exhausted = True
                break
            downloaded, written = submit(writer, run_id, batch, settings_ref)
            downloading.add(downloaded)
            writing[written] = batch
        if not writing:
            return total
        # fetch_local=False: the driver only learns that a download ended; the bytes stay put.
        ready, _ = ray.wait([*downloading, *writing], num_returns=1, fetch_local=False)
        for ref in ready:
            if ref in downloading:
                downloading.discard(ref)
            else:
                counts = _result(writer, run_id, writing.pop(ref), ref)
                total.add(counts)
                on_batch(counts)


def _result(writer: ActorHandle, run_id: str, lines: list[Line], ref: ray.ObjectRef) -> Counts:
    """The writer's counts for a batch; if a task of the batch failed for good (Ray has
    retried it already), its lines are still recorded, each as an error."""
    try:
        return ray.get(ref)
    except (MongoUnavailable, ray.exceptions.RayActorError):
        raise  # the writer itself is gone or gave up: the job cannot go on
    except ray.exceptions.RayError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        failure = Failure("worker_failed", f"a task of this batch failed: {detail}")
        return ray.get(writer.write.remote(
            run_id, lines, [None] * len(lines), [failure] * len(lines)
        ))


def _batched(lines: Iterable[Line], size: int) -> Iterator[list[Line]]:
    iterator = iter(lines)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
