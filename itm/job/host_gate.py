"""The per-host limit across a Ray cluster, without a remote call per line.

One small async actor (``HostSlotActor``) keeps ``itm.job.politeness.HostSlots`` for
the whole cluster and leases slots to download processes. In each download process
a ``LocalGate`` hands the slots it holds to its threads: a thread takes a slot of
its host locally, and gives it back locally, line after line. The actor hears from
a process only when what it needs changes: more slots of a host than it holds,
slots it no longer needs (kept ``KEEP`` seconds in case the next lines want them),
the hosts' answers (for the backoff). One thread of the process sends those changes
in one call at a time, so everything that accumulates while a call is on its way
goes in the next one: the busier the cluster, the more changes per call. Another
thread keeps one long poll open, on which grants and recalls come back; it is also
the process's heartbeat, which renews its lease. No actor at all with
``--per-host 0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle

from itm.job.politeness import REFUSALS, Change, Grant, HostSlots, Mail, with_answers

POLL = 1.0  # seconds a poll waits for mail: the process's heartbeat
KEEP = 1.0  # seconds a process keeps a slot nobody uses, for its next lines of the host


# max_concurrency: every download process keeps one poll waiting, and its calls must
# still get in (Ray's default for async actors is 1,000).
@ray.remote(num_cpus=0, max_restarts=3, max_concurrency=100_000)  # type: ignore[call-overload]  # Ray's stubs lack it
class HostSlotActor:
    """``HostSlots`` behind an asyncio loop: a poll is a future, answered when its
    process has mail or after ``POLL`` seconds."""

    def __init__(self, per_host: int, lease: float) -> None:
        self.polls: dict[str, asyncio.Future[None]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.slots = HostSlots(per_host, lease)
        self.calls = 0

    async def tell(
        self, holder: str, changes: dict[str, Change], timed_out: int = 0, leave: bool = False
    ) -> Mail:
        """A process's changes; returns its mail (what the changes granted at once)."""
        self.calls += 1
        now = time.monotonic()
        self.slots.tell(holder, changes, now)
        self.slots.timed_out(timed_out)
        if leave:
            self.slots.leave(holder)
            if (poll := self.polls.get(holder)) is not None and not poll.done():
                poll.set_result(None)
        self._dispatch(now)
        return self.slots.mail(holder)

    async def poll(self, holder: str) -> Mail:
        """The process's mail, waiting up to ``POLL`` seconds for some."""
        self.calls += 1
        self.slots.seen(holder, time.monotonic())
        if not self.slots.has_mail(holder):
            future = self.polls[holder] = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(future, POLL)
            self.polls.pop(holder, None)
        return self.slots.mail(holder)

    async def stats(self) -> dict[str, Any]:
        """What the slots did since the actor started, and its process's CPU seconds."""
        return asdict(self.slots.stats) | {
            "calls": self.calls,
            "cpu_seconds": time.process_time(),
        }

    def _dispatch(self, now: float) -> None:
        wake = self.slots.grant(now)
        for holder, future in self.polls.items():
            if not future.done() and self.slots.has_mail(holder):
                future.set_result(None)
        if wake is not None and (self.timer is None or wake < self.timer.when()):
            if self.timer is not None:
                self.timer.cancel()
            # The loop's clock is time.monotonic, the slots' too.
            self.timer = asyncio.get_running_loop().call_at(wake, self._wake)

    def _wake(self) -> None:
        self.timer = None
        self._dispatch(time.monotonic())


@dataclass
class _Waiter:
    granted: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Host:
    """One host's slots in this process."""

    owned: int = 0  # leased to this process
    busy: int = 0  # in use by a thread
    asked: int = 0  # asked of the actor, not granted yet
    recalled: int = 0  # to give back as soon as they are free
    expected: int = 0  # lines of the host about to start (``expect``)
    single: bool = False  # each slot for one start only (the host is backed off)
    idle_since: float = 0.0
    waiters: deque[_Waiter] = field(default_factory=deque)
    change: dict[str, Any] = field(default_factory=dict)  # for the next call

    def free(self) -> int:
        return self.owned - self.busy


class LocalGate:
    """The per-host slots of one download process: ``itm.job.download.HostGate``.

    ``take`` and ``give_back`` run in the download threads and never call Ray; the
    sender and poller threads talk to the actor. ``close`` gives everything back (once
    the threads are done with their lines).
    """

    def __init__(self, actor: ActorHandle[Any], per_host: int) -> None:
        self.actor = actor
        self.per_host = per_host
        self.holder = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._hosts: dict[str, _Host] = {}
        self._dirty: set[str] = set()
        self._urgent = False  # a change the actor must hear of now
        self._timed_out = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._send, name="itm-slots-send", daemon=True),
            threading.Thread(target=self._poll, name="itm-slots-poll", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def take(self, host: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for a slot of ``host``; False if none came."""
        with self._lock:
            state = self._hosts.setdefault(host, _Host())
            state.expected = max(0, state.expected - 1)
            if state.free() > 0 and not state.waiters:
                state.busy += 1
                return True
            waiter = _Waiter()
            state.waiters.append(waiter)
            self._want_more(host, state)
        if waiter.granted.wait(max(0.0, seconds)):
            return True
        with self._lock:
            if waiter.granted.is_set():  # granted as the wait ended
                return True
            state.waiters.remove(waiter)
            self._timed_out += 1
            surplus = min(state.asked, state.owned + state.asked - self._needed(state))
            if surplus > 0:
                state.asked -= surplus
                self._note(host, state, cancel=surplus)
            return False

    def expect(self, host: str) -> None:
        """A line of ``host`` will ask for a slot soon: ask the actor now if it must be,
        so that the slot is there, not a round trip away, when the line starts."""
        with self._lock:
            state = self._hosts.setdefault(host, _Host())
            state.expected += 1
            self._want_more(host, state)

    def give_back(self, host: str, statuses: list[int], retry_after: float | None) -> None:
        """Free the slot of ``host`` a thread held, with the answers the host gave it."""
        with self._lock:
            state = self._hosts[host]
            state.busy -= 1
            refused = bool(REFUSALS.intersection(statuses))
            if statuses:  # refusals at once; other answers with the next call
                self._note(host, state, urgent=refused, statuses=statuses, retry_after=retry_after)
            if refused:
                state.single = True  # until the actor says otherwise: let it space the starts
            if state.single or state.recalled:
                state.recalled = max(0, state.recalled - 1)
                state.owned -= 1
                self._note(host, state, give_back=1)
                if state.waiters:
                    self._want_more(host, state)
            else:
                self._hand_over(state, time.monotonic())

    def close(self) -> None:
        """Give every slot back and stop talking to the actor."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        self._threads[0].join(timeout=5.0)

    # -- in the lock -------------------------------------------------------------------

    def _needed(self, state: _Host) -> int:
        return min(self.per_host, state.busy + len(state.waiters) + state.expected)

    def _want_more(self, host: str, state: _Host) -> None:
        more = self._needed(state) - state.owned - state.asked
        if more > 0:
            state.asked += more
            self._note(host, state, ask=more)

    def _hand_over(self, state: _Host, now: float) -> None:
        """Free slots to waiting threads, in turn."""
        while state.waiters and state.free() > 0:
            state.busy += 1
            state.waiters.popleft().granted.set()
        if state.free() > 0:
            state.idle_since = now

    def _note(self, host: str, state: _Host, urgent: bool = True, **change: Any) -> None:
        """Add to what the next call tells the actor about ``host``; an ``urgent`` change
        makes that call now, the others wait for one (at most ``KEEP`` / 2 seconds)."""
        pending = state.change
        for key, value in change.items():
            if key == "statuses":
                pending["answers"] = with_answers(pending.get("answers", ()), value)
            elif key == "retry_after":
                pending[key] = value if value is not None else pending.get(key)
            else:
                pending[key] = pending.get(key, 0) + value
        self._dirty.add(host)
        if urgent:
            self._urgent = True
            self._changed.notify()

    def _apply(self, mail: Mail, now: float) -> None:
        for host, grant in mail.grants.items():
            state = self._hosts.setdefault(host, _Host())
            state.owned += grant.slots
            state.asked = max(0, state.asked - grant.slots)
            state.single = grant.single
            self._hand_over(state, now)
        for host, slots in mail.recall.items():
            if (recalled := self._hosts.get(host)) is not None:
                recalled.recalled = min(recalled.owned, recalled.recalled + slots)
                self._give_back_free(host, recalled, recalled.recalled)

    def _give_back_free(self, host: str, state: _Host, slots: int) -> None:
        slots = min(slots, state.free())
        if slots > 0:
            state.owned -= slots
            state.recalled = max(0, state.recalled - slots)
            self._note(host, state, give_back=slots)

    def _expire(self, now: float) -> None:
        """Give back the slots nobody used for ``KEEP`` seconds; forget idle hosts."""
        for host, state in self._hosts.items():
            if not (state.waiters or state.expected) and now - state.idle_since >= KEEP:
                self._give_back_free(host, state, state.free())
        idle = [h for h, s in self._hosts.items() if not (s.owned or s.asked or s.change)]
        for host in idle:
            del self._hosts[host]

    def _take_changes(self) -> dict[str, Change]:
        changes = {}
        for host in self._dirty:
            state = self._hosts.get(host)
            if state is not None and state.change:
                changes[host] = Change(**state.change)
                state.change = {}
        self._dirty.clear()
        return changes

    # -- the two threads that talk to the actor ----------------------------------------

    def _send(self) -> None:
        """One call at a time: what changed while a call was on its way goes in the next."""
        while True:
            with self._lock:
                self._changed.wait_for(lambda: self._urgent or self._closed, timeout=KEEP / 2)
                self._expire(time.monotonic())
                changes, timed_out = self._take_changes(), self._timed_out
                self._urgent, self._timed_out = False, 0
                closed = self._closed
            if changes or timed_out or closed:
                try:
                    mail = ray.get(self.actor.tell.remote(self.holder, changes, timed_out, closed))
                except ray.exceptions.RayError:
                    mail = self._without_actor(changes)
                with self._lock:
                    self._apply(mail, time.monotonic())
            if closed:
                return

    def _poll(self) -> None:
        while not self._closed:
            try:
                mail = ray.get(self.actor.poll.remote(self.holder))
            except ray.exceptions.RayError:
                time.sleep(POLL)
                continue
            with self._lock:
                self._apply(mail, time.monotonic())

    def _without_actor(self, changes: dict[str, Change]) -> Mail:
        """The actor is gone (it restarts empty): grant what was asked, so lines go on."""
        grants = {host: Grant(change.ask, False) for host, change in changes.items() if change.ask}
        return Mail(grants=grants)


def start_host_slots(per_host: int, lease: float) -> ActorHandle[Any] | None:
    """The run's slot actor, or ``None`` for ``--per-host 0`` (unlimited: no actor).

    Later runs of the same driver on the same Ray with the same settings (tests, a
    notebook, runs side by side in threads) share the actor, its slots and its
    backoff: the limit holds across them, and no new worker process is paid. The
    handle is kept here: an actor lives as long as the handle that created it (a
    handle found again by name does not keep it alive), and it ends with the driver.
    Nobody waits for a new actor to start: it starts while the download tasks do.
    """
    if not per_host:
        return None
    context = ray.get_runtime_context()
    key = (context.gcs_address, context.get_job_id(), per_host, lease)
    actor = _ACTORS.get(key)
    if actor is None:
        actor = _ACTORS[key] = HostSlotActor.remote(per_host, lease)  # type: ignore[attr-defined]
    return actor


# (Ray, driver's job, per_host, lease) → the actor
_ACTORS: dict[tuple[str, str, int, float], ActorHandle[Any]] = {}
