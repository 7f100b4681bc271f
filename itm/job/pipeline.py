"""The job's driver on Ray: download → (md5 ∥ grayscale) → writers, in groups, with
backpressure (the tasks themselves are in ``itm.job.tasks``).

Each download task takes a chunk of input lines and downloads them in threads. It
is a streaming generator: it hands over each *group* of lines as soon as they are
downloaded, so a slow URL holds one thread, never its chunk-mates. Per group the
driver submits md5 and gray at once, and waits on neither:

    download_chunk ══ group ─┬─> md5_group ──┐
    (one chunk, threads)     └─> gray_group ─┴─> writer.write (one per share)

A writer's *batch*, one ``write`` call, holds lines of its share of the md5 space.
With one writer, a group is its batch, submitted with md5 and gray; with K, the
driver routes a group's lines once its md5s are known (a few hundred bytes), and a
writer's batch gathers its share of several groups (``--batch-size`` lines, or what
came within ``GROUP_WAIT``).

The downloaded bytes are numpy arrays in the object store, so ``md5_group`` and
``gray_group`` read the same shared memory in parallel, without copies.

One source of bytes per line: a download task is never re-run by Ray (it would
fetch new bytes behind our back, e.g. a random picsum photo, after md5 or gray
read the old ones). When a download task dies, or a group's bytes are lost while
Ray would still need them (before md5 or gray read them, or to rebuild a grayscale
lost with its node before the writer read it), the driver downloads those lines
again as a whole, before the writer has seen any of them.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import ray
from ray import ObjectRefGenerator
from ray.actor import ActorHandle

from itm.config import Settings
from itm.job.host_gate import start_host_slots
from itm.job.imaging import GrayImage
from itm.job.tasks import GROUP_WAIT, download_chunk, gray_group, md5_group
from itm.job.urls import shown_url
from itm.job.writer import MongoUnavailable
from itm.outcomes import Counts, Failure, Line, Reason

CHUNK_ROUNDS = 16  # a chunk keeps every thread of its task busy this many times
ATTEMPTS = 4  # submissions of a line whose task died or whose bytes were lost (as Ray retries)
DOWNLOAD_SHARE = 0.001  # of --download-resource per download task: a node holds many
BACKSTOP_GRACE = 10.0  # seconds past the deadline before a silent download task is cancelled
PROGRESS_EVERY = 1.0  # seconds between two heartbeats of the driver (with its oldest lines)
IN_FLIGHT_SHOWN = 5  # oldest lines in flight the run document shows


@dataclass
class _Chunk:
    """A download task in flight: the lines it has not handed over yet."""

    pending: dict[int, str]
    attempt: int
    quiet_since: float = field(default_factory=time.monotonic)
    since: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def shard_of(md5: str | None, line: int, shards: int) -> int:
    """The writer of a line: the one that owns its image's share of the md5 space, so an
    image is always written by the same writer; a line without an image by its number."""
    return line % shards if md5 is None else int(md5[:8], 16) % shards


def start_politeness(settings: Settings) -> ActorHandle[Any] | None:
    """The run's per-host slot actor (none for ``--per-host 0``); a job calls it first, so
    that the actor's process starts alongside the writers' rather than after them. A
    silent download process loses its slots after a line's deadline and then some."""
    return start_host_slots(settings.per_host, settings.deadline + BACKSTOP_GRACE)


def run_pipeline(
    lines: Iterable[Line],
    writers: Sequence[ActorHandle[Any]],
    run_id: str,
    settings: Settings,
    on_written: Callable[[Counts], None] = lambda counts: None,
) -> Counts:
    """Push every line through the pipeline; return the outcomes this call wrote.

    Sizing adapts to the cluster: one download task per node (``concurrency``
    threads in all), plus one while a task finishes its slowest lines; at most two
    groups per CPU between download and writers, so the grayscale tasks fill every
    CPU while memory stays flat however long the input is. That also bounds Ray's
    worker processes: one per download task, one per CPU, one per writer. The first
    writer also keeps the run's heartbeat.
    """
    return _Driver(writers, run_id, settings, on_written).run(lines)


@dataclass
class _Group:
    """Lines between their download and their writers: the ``lines`` of ``attempt``,
    whose grayscale ``grays`` the writers read; ``parts`` not written yet."""

    lines: list[Line]
    attempt: int
    grays: ray.ObjectRef[list[GrayImage | Failure]]
    parts: int = 0


@dataclass
class _Batch:
    """One writer's next call: its share of several groups (``positions`` in each)."""

    parts: list[tuple[_Group, list[int]]] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    md5s: list[str | None] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)


class _Driver:
    def __init__(
        self,
        writers: Sequence[ActorHandle[Any]],
        run_id: str,
        settings: Settings,
        on_written: Callable[[Counts], None],
    ) -> None:
        self.writers, self.run_id, self.settings = list(writers), run_id, settings
        self.on_written = on_written
        resource = settings.download_resource
        # Download tasks run on the nodes that offer the download resource, if one is set.
        self.download_chunk = (
            download_chunk.options(resources={resource: DOWNLOAD_SHARE})
            if resource
            else download_chunk
        )
        nodes = max(
            1,
            sum(
                1
                for node in ray.nodes()
                if node["Alive"] and (resource is None or node["Resources"].get(resource))
            ),
        )
        self.nodes = nodes
        self.threads = max(1, settings.concurrency // nodes)
        self.groups_cap = 2 * max(1, int(ray.cluster_resources().get("CPU", 1))) + nodes
        self.settings_ref = ray.put(settings)
        # One actor for the whole cluster leases the per-host slots to download processes.
        self.host_slots = start_politeness(settings)
        self.downloading: dict[ObjectRefGenerator, _Chunk] = {}
        self.routing: dict[ray.ObjectRef[list[str | None]], _Group] = {}  # md5s to come
        self.batches: dict[int, _Batch] = {}  # per writer, its share of routed groups
        self.writing: dict[ray.ObjectRef[Counts], list[tuple[_Group, list[int]]]] = {}
        self.groups = 0  # between download and writers
        self.resubmits: deque[tuple[list[Line], int]] = deque()  # chunks to submit again
        self.total = Counts()
        self.reported = 0.0  # monotonic time of the last heartbeat

    def run(self, lines: Iterable[Line]) -> Counts:
        if self.host_slots is None:
            return self._run(lines)
        before = self.host_slots.stats.remote()  # an actor of an earlier run goes on
        total = self._run(lines)
        self._report_hosts(before)
        return total

    def _report_hosts(self, before: ray.ObjectRef[dict[str, Any]]) -> None:
        """One line on what the per-host limit did in this run: hosts backed off (for the
        actor's life), slots, its cost."""
        assert self.host_slots is not None
        try:
            start, end = ray.get([before, self.host_slots.stats.remote()], timeout=10)
        except ray.exceptions.RayError:
            return
        spent = {name: end[name] - start[name] for name in ("granted", "timed_out", "calls")}
        backed = ", ".join(f"{host} ({n} refusals)" for host, n in end["backed_off"].items())
        print(
            f"itm: --per-host {self.settings.per_host}: {spent['granted']} slots granted, "
            f"{spent['timed_out']} waits timed out, backed off: {backed or 'none'}; slot "
            f"actor {spent['calls']} calls, {end['cpu_seconds'] - start['cpu_seconds']:.2f} "
            "s CPU",
            flush=True,
        )

    def _run(self, lines: Iterable[Line]) -> Counts:
        chunks = _chunks(lines, self.threads * CHUNK_ROUNDS, self.nodes)
        exhausted = False
        while True:
            while self._room_for_a_download() and (self.resubmits or not exhausted):
                if self.resubmits:
                    self._submit_chunk(*self.resubmits.popleft())
                elif (part := next(chunks, None)) is not None:
                    self._submit_chunk(part, 1)
                else:
                    exhausted = True
            if not self.downloading and not self.groups and not self.resubmits:
                return self.total
            has_room = self.groups < self.groups_cap
            waitables = [*self.routing, *self.writing]
            if has_room:
                waitables += self.downloading
            # Everything ready at once, else a wait for the first: one pass for many results.
            ready: list[Any] = []
            if waitables:
                everything = len(waitables)
                ready, _ = ray.wait(waitables, num_returns=everything, timeout=0, fetch_local=False)
            if waitables and not ready:
                wait = GROUP_WAIT if self.batches else 1.0  # a batch must not wait for long
                ready, _ = ray.wait(waitables, num_returns=1, timeout=wait, fetch_local=False)
            now = time.monotonic()
            for chunk in self.downloading.values():
                if not has_room:  # the task waits on us, not on the network
                    chunk.quiet_since = now
            for ref in ready:
                if isinstance(ref, ObjectRefGenerator):
                    if self.groups < self.groups_cap:  # else it is taken in a later pass
                        self._take_group(ref)
                elif ref in self.routing:
                    self._route(ref)
                else:
                    self._written(ref)
            self._backstop(now)
            self._flush(now)
            if now - self.reported >= PROGRESS_EVERY:
                self.reported = now
                # Fire and forget: the writer records it between two writes.
                self.writers[0].progress.remote(self.run_id, self._oldest_in_flight())

    def _oldest_in_flight(self) -> list[dict[str, Any]]:
        """The first lines still pending in the oldest download tasks: a task's threads
        take its lines in order, so these are the ones downloading for longest."""
        oldest = []
        for chunk in sorted(self.downloading.values(), key=lambda chunk: chunk.since):
            for line, url in itertools.islice(chunk.pending.items(), IN_FLIGHT_SHOWN):
                oldest.append({"line": line, "url": shown_url(url), "since": chunk.since})
            if len(oldest) >= IN_FLIGHT_SHOWN:
                break
        return oldest[:IN_FLIGHT_SHOWN]

    def _room_for_a_download(self) -> bool:
        if self.groups >= self.groups_cap or len(self.downloading) > self.nodes:
            return False
        # Past one task per node, a new one only while another finishes its last lines.
        return len(self.downloading) < self.nodes or any(
            len(chunk.pending) < self.threads for chunk in self.downloading.values()
        )

    def _submit_chunk(self, lines: list[Line], attempt: int) -> None:
        generator = self.download_chunk.remote(
            lines, self.settings_ref, self.threads, self.host_slots
        )
        self.downloading[generator] = _Chunk(dict(lines), attempt)

    def _take_group(self, generator: ObjectRefGenerator) -> None:
        chunk = self.downloading[generator]
        try:
            numbers = ray.get(next(generator))
            data = next(generator)
        except StopIteration:
            del self.downloading[generator]
            self._resubmit(list(chunk.pending.items()), chunk.attempt)  # empty unless a bug
            return
        except ray.exceptions.RayError as exc:  # the task died: its worker, its node
            del self.downloading[generator]
            self._resubmit(list(chunk.pending.items()), chunk.attempt, exc)
            return
        group = [(number, chunk.pending.pop(number)) for number in numbers]
        chunk.quiet_since = time.monotonic()
        md5s = md5_group.remote(data)
        grays = gray_group.remote(data, self.settings_ref)
        self.groups += 1
        if len(self.writers) == 1:  # no routing: the writer waits for md5s and grays itself
            whole = _Group(group, chunk.attempt, grays, parts=1)
            ref = self.writers[0].write.remote(self.run_id, group, md5s, grays)
            self.writing[ref] = [(whole, list(range(len(group))))]
        else:
            self.routing[md5s] = _Group(group, chunk.attempt, grays)

    def _route(self, ref: ray.ObjectRef[list[str | None]]) -> None:
        """A group's md5s are known: each writer gets the lines of its share."""
        group = self.routing.pop(ref)
        try:
            md5s = ray.get(ref)
        except ray.exceptions.RayError as exc:  # no writer has seen these lines
            self.groups -= 1
            self._resubmit(group.lines, group.attempt, exc)
            return
        self._share(group, md5s)

    def _share(self, group: _Group, md5s: list[str | None]) -> None:
        """Add each line of ``group`` to the batch of its writer; a full batch goes."""
        shares: dict[int, list[int]] = {}
        for at, ((line, _), md5) in enumerate(zip(group.lines, md5s, strict=True)):
            shares.setdefault(shard_of(md5, line, len(self.writers)), []).append(at)
        for shard, positions in shares.items():
            batch = self.batches.setdefault(shard, _Batch())
            batch.parts.append((group, positions))
            batch.lines += [group.lines[at] for at in positions]
            batch.md5s += [md5s[at] for at in positions]
            group.parts += 1
            if len(batch.lines) >= self.settings.batch_size:
                self._write(shard)

    def _write(self, shard: int) -> None:
        """The batch of one writer, in one call: it reads its lines' grayscale in place
        from each group's (every group a top-level argument, so Ray has them ready)."""
        batch = self.batches.pop(shard)
        ref = self.writers[shard].write.remote(
            self.run_id,
            batch.lines,
            batch.md5s,
            *[group.grays for group, _ in batch.parts],
            positions=[positions for _, positions in batch.parts],
        )
        self.writing[ref] = batch.parts

    def _flush(self, now: float) -> None:
        """Batches go once they waited ``GROUP_WAIT``, or when no more lines can join them."""
        last = not self.downloading and not self.routing and not self.resubmits
        for shard, batch in list(self.batches.items()):
            if last or now - batch.since >= GROUP_WAIT:
                self._write(shard)

    def _written(self, ref: ray.ObjectRef[Counts]) -> None:
        parts = self.writing.pop(ref)
        for group, _ in parts:
            group.parts -= 1
            if group.parts == 0:
                self.groups -= 1
        try:
            counts = ray.get(ref)
        except (MongoUnavailable, ray.exceptions.RayActorError):
            raise  # the writer itself is gone or gave up: the job cannot go on
        except ray.exceptions.RayError as exc:
            # md5 or gray failed for good, or a group's bytes were lost: the writer
            # has seen none of these lines; download them again.
            for group, positions in parts:
                self._resubmit([group.lines[at] for at in positions], group.attempt, exc)
            return
        self.total.add(counts)
        self.on_written(counts)

    def _resubmit(self, lines: list[Line], attempt: int, error: Exception | None = None) -> None:
        """Download ``lines`` again as a new chunk (their task died, or their bytes were lost),
        or, past ``ATTEMPTS`` submissions, write them as ``worker_failed``."""
        if not lines:
            return
        if attempt < ATTEMPTS:
            self.resubmits.append((lines, attempt + 1))
            return
        text = str(error).strip()
        detail = text.splitlines()[-1] if text else type(error).__name__
        self._record(lines, Failure(Reason.WORKER_FAILED, f"a task of this group failed: {detail}"))

    def _record(self, lines: list[Line], failure: Failure) -> None:
        """Write lines that have no bytes as errors, each by the writer of its number."""
        self.groups += 1
        self._share(_Group(lines, ATTEMPTS, ray.put([failure] * len(lines))), [None] * len(lines))

    def _backstop(self, now: float) -> None:
        """Cancel a download task silent for longer than any line may take; its lines time out.

        Every line ends within its deadline, so a task with lines left always hands
        over a group by then: one that does not is stuck (a thread in C code, a node
        that died without Ray noticing yet).
        """
        limit = self.settings.deadline + BACKSTOP_GRACE
        for generator, chunk in list(self.downloading.items()):
            if now - chunk.quiet_since > limit:
                ray.cancel(generator, force=True)
                del self.downloading[generator]
                self._record(
                    list(chunk.pending.items()),
                    Failure(
                        Reason.TIMEOUT,
                        f"no answer within the {self.settings.deadline:g} s deadline "
                        f"(download task cancelled after {limit:g} s)",
                    ),
                )


def _chunks(lines: Iterable[Line], size: int, parts: int) -> Iterator[list[Line]]:
    """Chunks of ``size`` lines; an input shorter than ``parts`` chunks is cut in ``parts``
    equal ones instead, so that a short job still downloads on every node."""
    iterator = iter(lines)
    head = list(itertools.islice(iterator, size * parts))
    step = size if len(head) == size * parts else max(1, -(-len(head) // parts))
    for start in range(0, len(head), step):
        yield head[start : start + step]
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
