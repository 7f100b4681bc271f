"""Per-host download tokens: at most ``per_host`` downloads talk to one host at once,
and a host that keeps refusing is backed off. Pure bookkeeping, no clock, no Ray:
``itm.job.host_gate`` runs one ``HostTokens`` in a Ray actor for the whole cluster.

A *ticket* is one URL's exchange. It holds the token of at most one host, the one
it is talking to now: asking for another host (a redirect) gives the old one back.
A waiting ticket is served first come, first served per host.

The backoff rule, per host, for the rest of the run:

- every refusal (429 or 503) adds one to the host's *refusal score*, every other
  answer takes one off (never below zero);
- from ``REFUSALS_BEFORE_BACKOFF`` on, starts of downloads to that host are spaced
  by a pause of ``BACKOFF_FIRST`` seconds, doubled for every further point of the
  score, at most ``BACKOFF_CAP``;
- a ``Retry-After`` holds every start to the host until it has passed (at most
  ``BACKOFF_CAP`` from now), whatever the score.

A token is a lease: one whose holder vanished (a dead worker) is taken back after
``lease`` seconds, so a lost release never shrinks a host for good.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

REFUSALS = frozenset({429, 503})
REFUSALS_BEFORE_BACKOFF = 3
BACKOFF_FIRST = 1.0  # seconds between two starts once a host is backed off
BACKOFF_CAP = 30.0  # the longest pause or Retry-After honoured for the whole host


def pause_of(score: int) -> float:
    """Seconds between two starts to a host with this refusal score."""
    if score < REFUSALS_BEFORE_BACKOFF:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (score - REFUSALS_BEFORE_BACKOFF))


@dataclass
class _Host:
    holders: dict[int, float] = field(default_factory=dict)  # ticket → lease end
    waiting: deque[int] = field(default_factory=deque)
    score: int = 0
    refusals: int = 0  # in all, for the report
    not_before: float = 0.0  # no start before (Retry-After)
    last_start: float = float("-inf")


@dataclass
class HostStats:
    """What a run's tokens did: for the job's summary and the benchmark."""

    granted: int = 0
    timed_out: int = 0
    reclaimed: int = 0  # leases taken back from holders that never gave them back
    backed_off: dict[str, int] = field(default_factory=dict)  # host → refusals, if backed off


class HostTokens:
    """At most ``per_host`` tokens per host, handed out in order, with the backoff rule."""

    def __init__(self, per_host: int, lease: float) -> None:
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        self.per_host = per_host
        self.lease = lease
        self.stats = HostStats()
        self._hosts: dict[str, _Host] = {}
        self._held: dict[int, str] = {}  # ticket → host it holds
        self._waits: dict[int, str] = {}  # ticket → host it waits for
        self._due: set[str] = set()  # hosts whose waiters may be served now

    def ask(self, ticket: int, host: str, now: float) -> None:
        """Queue ``ticket`` for a token of ``host``; call ``grant`` to learn when it has one."""
        self.give_back(ticket, now)
        self._host(host).waiting.append(ticket)
        self._waits[ticket] = host
        self._due.add(host)

    def holds(self, ticket: int) -> str | None:
        return self._held.get(ticket)

    def give_back(self, ticket: int, now: float) -> None:
        """Release the token ``ticket`` holds, or stop waiting for one."""
        if (host := self._held.pop(ticket, None)) is not None:
            self._hosts[host].holders.pop(ticket, None)
            self._due.add(host)
        elif (host := self._waits.pop(ticket, None)) is not None:
            self._hosts[host].waiting.remove(ticket)

    def timed_out(self, ticket: int, now: float) -> None:
        """A waiter whose deadline came first."""
        if ticket in self._waits:
            self.stats.timed_out += 1
        self.give_back(ticket, now)

    def answered(
        self, host: str, status: int, now: float, retry_after: float | None = None
    ) -> None:
        """Record an answer of ``host``: refusals raise its score, other answers lower it."""
        state = self._host(host)
        if status in REFUSALS:
            state.score += 1
            state.refusals += 1
            if state.score >= REFUSALS_BEFORE_BACKOFF:
                self.stats.backed_off[host] = state.refusals
            if retry_after:
                state.not_before = max(state.not_before, now + min(retry_after, BACKOFF_CAP))
        else:
            state.score = max(0, state.score - 1)

    def grant(self, now: float) -> tuple[list[int], float | None]:
        """Tickets that hold a token from now on, and when to call again (``None``: on
        the next ``ask`` or ``give_back``), for waiters held by a pause or a lease."""
        granted: list[int] = []
        wake: float | None = None
        for name in list(self._due):
            host = self._hosts[name]
            at = self._serve(name, host, now, granted)
            if at is None:
                self._due.discard(name)
            else:
                wake = at if wake is None else min(wake, at)
        return granted, wake

    def _serve(self, name: str, host: _Host, now: float, granted: list[int]) -> float | None:
        """Grant what ``host`` can now; return when it may grant more, if someone waits."""
        while host.waiting:
            start = max(host.not_before, host.last_start + pause_of(host.score))
            if now < start:
                return start
            if len(host.holders) >= self.per_host and not self._reclaim(host, now):
                return min(host.holders.values())
            ticket = host.waiting.popleft()
            del self._waits[ticket]
            host.holders[ticket] = now + self.lease
            host.last_start = now
            self._held[ticket] = name
            self.stats.granted += 1
            granted.append(ticket)
        return None

    def _reclaim(self, host: _Host, now: float) -> bool:
        expired = [ticket for ticket, end in host.holders.items() if end <= now]
        for ticket in expired:
            del host.holders[ticket]
            del self._held[ticket]
        self.stats.reclaimed += len(expired)
        return bool(expired)

    def _host(self, name: str) -> _Host:
        host = self._hosts.get(name)
        if host is None:
            host = self._hosts[name] = _Host()
        return host
