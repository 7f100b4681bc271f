"""The per-host limit across a Ray cluster: one small async actor keeps the tokens
(``itm.job.politeness.HostTokens``), the download threads of every node ask it.

Cost: a hop to another host than the thread's last one is one blocking actor call
(taking the new host's token gives the old one back); a line on the same host
keeps the thread's token, without a call, for ``itm.job.download.KEEP_TOKEN``; a
thread with nothing to do gives its token back with a call nobody waits for. No
actor at all with ``--per-host 0``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

import ray
from ray.actor import ActorHandle

from itm.job.politeness import HostTokens

ACTOR_NAME = "itm-host-tokens"  # in the driver's own namespace: one per driver
GRACE = 5.0  # seconds a take may exceed its wait on the caller's side (the actor's own pace)


# max_concurrency: every download thread of the cluster may be waiting in a take at
# once, and give-backs must still get in (Ray's default for async actors is 1,000).
@ray.remote(num_cpus=0, max_restarts=3, max_concurrency=100_000)  # type: ignore[call-overload]  # Ray's stubs lack it
class HostTokenActor:
    """``HostTokens`` behind an asyncio loop: a waiting take is a future, woken when its
    host grants it a token or its time is up."""

    def __init__(self, per_host: int, lease: float) -> None:
        self.futures: dict[int, asyncio.Future[bool]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self._start(per_host, lease)

    async def reset(self, per_host: int, lease: float) -> None:
        """A new run: fresh tokens, scores and counts (nobody holds or waits for any)."""
        for future in self.futures.values():  # left by a run that died: they give up
            if not future.done():
                future.set_result(False)
        self._start(per_host, lease)

    def _start(self, per_host: int, lease: float) -> None:
        self.tokens = HostTokens(per_host, lease)
        self.calls = 0
        self.cpu_started = time.process_time()

    async def take(
        self,
        ticket: int,
        host: str,
        seconds: float,
        statuses: list[int],
        retry_after: float | None = None,
    ) -> bool:
        """Wait up to ``seconds`` for a token of ``host``; give back the one ``ticket``
        held until now (if any), with the answers its host gave since."""
        self.calls += 1
        self._answered(ticket, statuses, retry_after)
        future = asyncio.get_running_loop().create_future()
        self.futures[ticket] = future
        self.tokens.ask(ticket, host, time.monotonic())
        self._dispatch()
        try:
            return await asyncio.wait_for(future, seconds)
        except asyncio.TimeoutError:
            self.tokens.timed_out(ticket, time.monotonic())
            self._dispatch()
            return False
        finally:
            self.futures.pop(ticket, None)

    async def give_back(
        self, ticket: int, statuses: list[int], retry_after: float | None = None
    ) -> None:
        """Release the token ``ticket`` holds (or its place in a queue), with the answers
        its host gave since it was taken."""
        self.calls += 1
        self._answered(ticket, statuses, retry_after)
        self.tokens.give_back(ticket, time.monotonic())
        self._dispatch()

    async def stats(self) -> dict[str, Any]:
        return asdict(self.tokens.stats) | {
            "calls": self.calls,
            "cpu_seconds": time.process_time() - self.cpu_started,
        }

    def _answered(self, ticket: int, statuses: list[int], retry_after: float | None) -> None:
        host = self.tokens.holds(ticket)
        if host is not None:
            for status in statuses:
                self.tokens.answered(host, status, time.monotonic(), retry_after)

    def _dispatch(self) -> None:
        granted, wake = self.tokens.grant(time.monotonic())
        for ticket in granted:
            future = self.futures.get(ticket)
            if future is not None and not future.done():
                future.set_result(True)
        if wake is not None and (self.timer is None or wake < self.timer.when()):
            if self.timer is not None:
                self.timer.cancel()
            # The loop's clock is time.monotonic, the tokens' too.
            self.timer = asyncio.get_running_loop().call_at(wake, self._wake)

    def _wake(self) -> None:
        self.timer = None
        self._dispatch()


class HostGate:
    """What a download thread holds: ``itm.job.download.HostGate`` over the actor."""

    def __init__(self, actor: ActorHandle[Any], per_host: int) -> None:
        self.actor = actor
        self.per_host = per_host

    def take(
        self, ticket: int, host: str, seconds: float, statuses: list[int], retry_after: float | None
    ) -> bool:
        ref = self.actor.take.remote(ticket, host, seconds, statuses, retry_after)
        try:
            return bool(ray.get(ref, timeout=seconds + GRACE))
        except ray.exceptions.GetTimeoutError:
            self.give_back(ticket, [], None)
            return False
        except ray.exceptions.RayError:
            return True  # the bookkeeping is gone (it restarts empty); the line must go on

    def give_back(self, ticket: int, statuses: list[int], retry_after: float | None) -> None:
        self.actor.give_back.remote(ticket, statuses, retry_after)  # nobody waits for it


def start_host_tokens(per_host: int, lease: float) -> ActorHandle[Any] | None:
    """The run's token actor, or ``None`` for ``--per-host 0`` (unlimited: no actor).

    The next run of the same driver process (tests, a notebook) reuses the actor,
    reset, rather than paying a new worker process; it ends with the driver.
    """
    if not per_host:
        return None
    actor: ActorHandle[Any] = HostTokenActor.options(  # type: ignore[attr-defined]
        name=ACTOR_NAME, get_if_exists=True
    ).remote(per_host, lease)
    ray.get(actor.reset.remote(per_host, lease))  # before any download task can ask it
    return actor
