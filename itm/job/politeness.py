"""Per-host download slots: at most ``per_host`` downloads talk to one host at once,
across the cluster, and a host that keeps refusing is backed off. Pure bookkeeping,
no clock, no Ray: ``itm.job.host_gate`` runs one ``HostSlots`` in a Ray actor for the
whole cluster, and each download process hands the slots it holds to its threads.

Slots are leased to *holders* (download processes), not to lines: a holder asks for
slots of a host when its own lines need more than it holds, uses each slot for line
after line without asking again, and gives back what it no longer needs. So the
cluster-wide bookkeeping costs per change of a holder's needs, not per line, while
no more than ``per_host`` slots of a host are ever out at once.

- **Fairness.** Holders waiting for a host are served in turn, one slot each. While
  some wait, a holder that has held more than its share (``per_host`` over the
  holders that want the host) for ``ROTATE`` seconds is asked to give the surplus
  back as its lines finish, so one node's lines cannot keep a host from the others.
- **Backoff**, per host, for the rest of the run: every refusal (429 or 503) adds
  one to the host's *refusal score*, every other answer takes one off (never below
  zero); from ``REFUSALS_BEFORE_BACKOFF`` on, starts to that host are spaced by a
  pause of ``BACKOFF_FIRST`` seconds, doubled for every further point, at most
  ``BACKOFF_CAP``; a ``Retry-After`` holds every start to the host until it has
  passed (at most ``BACKOFF_CAP`` from now). A backed-off host's slots are
  *single-use*: each start is granted here, so the pause holds cluster-wide, and
  the slots out when the backoff begins are called back.
- **Leases.** A holder's slots are a lease renewed by each of its calls; a holder
  silent for ``lease`` seconds (a dead worker) loses them, so a lost give-back never
  shrinks a host for good.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

REFUSALS = frozenset({429, 503})
REFUSALS_BEFORE_BACKOFF = 3
BACKOFF_FIRST = 1.0  # seconds between two starts once a host is backed off
BACKOFF_CAP = 30.0  # the longest pause or Retry-After honoured for the whole host
ROTATE = 1.0  # seconds a holder keeps slots beyond its share while others wait


def pause_of(score: int) -> float:
    """Seconds between two starts to a host with this refusal score."""
    if score < REFUSALS_BEFORE_BACKOFF:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (score - REFUSALS_BEFORE_BACKOFF))


@dataclass(frozen=True)
class Change:
    """What a holder tells about one host: slots it wants more of (``ask``) or no longer
    waits for (``cancel``), slots it gives back, and the host's answers since its last
    call, in order, as runs (``answers``: ``k > 0`` is k refusals in a row, ``k < 0``
    is -k other answers), with the last ``Retry-After`` (seconds), if any."""

    ask: int = 0
    cancel: int = 0
    give_back: int = 0
    answers: tuple[int, ...] = ()
    retry_after: float | None = None


def with_answers(runs: tuple[int, ...], statuses: list[int]) -> tuple[int, ...]:
    """``runs`` (``Change.answers``) followed by ``statuses``: a host answering 200 a
    thousand times is one number to send, not a thousand."""
    out = list(runs)
    for status in statuses:
        step = 1 if status in REFUSALS else -1
        if out and (out[-1] > 0) == (step > 0):
            out[-1] += step
        else:
            out.append(step)
    return tuple(out)


@dataclass(frozen=True)
class Grant:
    """Slots granted to a holder for a host; ``single``: each for one start only."""

    slots: int
    single: bool


@dataclass
class Mail:
    """What a holder has to learn: slots granted, slots to give back (``recall``)."""

    grants: dict[str, Grant] = field(default_factory=dict)
    recall: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.grants or self.recall)


@dataclass
class _Host:
    held: dict[str, int] = field(default_factory=dict)  # holder → slots
    since: dict[str, float] = field(default_factory=dict)  # holder → last grant
    recalled: dict[str, int] = field(default_factory=dict)  # holder → slots asked back
    waiting: dict[str, int] = field(default_factory=dict)  # holder → slots wanted, in turn
    score: int = 0
    refusals: int = 0  # in all, for the report
    not_before: float = 0.0  # no start before (Retry-After)
    last_start: float = float("-inf")

    def out(self) -> int:
        return sum(self.held.values())

    def start_at(self) -> float:
        return max(self.not_before, self.last_start + pause_of(self.score))


@dataclass
class SlotStats:
    """What a run's slots did: for the job's summary and the benchmarks."""

    granted: int = 0
    timed_out: int = 0  # lines that got no slot within their deadline
    reclaimed: int = 0  # slots taken back from holders that went silent
    backed_off: dict[str, int] = field(default_factory=dict)  # host → refusals, if backed off


class HostSlots:
    """At most ``per_host`` slots per host out to holders, granted in turn, backoff applied."""

    def __init__(self, per_host: int, lease: float) -> None:
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        self.per_host = per_host
        self.lease = lease
        self.stats = SlotStats()
        self._hosts: dict[str, _Host] = {}
        self._seen: dict[str, float] = {}  # holder → its last call
        self._mail: defaultdict[str, Mail] = defaultdict(Mail)
        self._due: set[str] = set()  # hosts that may grant or recall now

    def tell(self, holder: str, changes: dict[str, Change], now: float) -> None:
        """Apply a holder's changes (its call is also its heartbeat)."""
        self._seen[holder] = now
        for name, change in changes.items():
            host = self._host(name)
            for run in change.answers:
                self._answered(name, host, run, now, change.retry_after)
            if change.give_back:
                self._take_back(host, holder, change.give_back)
            wanted = host.waiting.get(holder, 0) + change.ask - change.cancel
            if wanted > 0:
                host.waiting[holder] = wanted
            else:
                host.waiting.pop(holder, None)
            self._due.add(name)

    def seen(self, holder: str, now: float) -> None:
        self._seen[holder] = now

    def leave(self, holder: str) -> None:
        """A holder that stops: everything it held or waited for goes to the others."""
        self._seen.pop(holder, None)
        self._mail.pop(holder, None)
        for name, host in self._hosts.items():
            if holder in host.held or holder in host.waiting:
                self._take_back(host, holder, host.held.get(holder, 0))
                host.waiting.pop(holder, None)
                self._due.add(name)

    def timed_out(self, lines: int) -> None:
        self.stats.timed_out += lines

    def mail(self, holder: str) -> Mail:
        """What ``holder`` has to learn since its last call (and forget it here)."""
        return self._mail.pop(holder, None) or Mail()

    def has_mail(self, holder: str) -> bool:
        return bool(self._mail.get(holder))

    def grant(self, now: float) -> float | None:
        """Grant and recall what can be now; return when to call again (``None``: on the
        next ``tell``), for hosts held up by a pause, a rotation or a silent holder."""
        wake = self._reclaim(now)
        for name in list(self._due):
            at = self._serve(name, self._hosts[name], now)
            if at is None:
                self._due.discard(name)
            else:
                wake = at if wake is None else min(wake, at)
        return wake

    def _serve(self, name: str, host: _Host, now: float) -> float | None:
        """Grant what ``host`` can now, recall what others wait for; return when it may
        do more, if someone waits."""
        single = _backed_off(host, now)
        while host.waiting and host.out() < self.per_host:
            if single and now < host.start_at():
                return host.start_at()
            holder = next(iter(host.waiting))  # in turn: one slot, then to the back
            wanted = host.waiting.pop(holder) - 1
            if wanted:
                host.waiting[holder] = wanted
            host.held[holder] = host.held.get(holder, 0) + 1
            host.since[holder] = now
            host.last_start = now
            self.stats.granted += 1
            grants = self._mail[holder].grants
            slots = grants[name].slots if name in grants else 0
            grants[name] = Grant(slots + 1, single)
        if not host.waiting:
            if not host.held and not single and not host.score:
                del self._hosts[name]  # nothing to remember: memory stays flat over many hosts
            return None
        if single:
            return None  # single-use slots come back after one start each
        return self._rotate(name, host, now)

    def _rotate(self, name: str, host: _Host, now: float) -> float | None:
        """Recall, from holders past their share for ``ROTATE`` seconds, the surplus."""
        share = self.per_host // len(host.held.keys() | host.waiting.keys())
        wake: float | None = None
        for holder, slots in host.held.items():
            if slots - host.recalled.get(holder, 0) <= share:
                continue
            due = host.since[holder] + ROTATE
            if now < due:
                wake = due if wake is None else min(wake, due)
            else:
                self._recall(name, host, holder, slots - share - host.recalled.get(holder, 0))
        return wake

    def _recall(self, name: str, host: _Host, holder: str, slots: int) -> None:
        host.recalled[holder] = host.recalled.get(holder, 0) + slots
        recall = self._mail[holder].recall
        recall[name] = recall.get(name, 0) + slots

    def _take_back(self, host: _Host, holder: str, slots: int) -> None:
        left = host.held.get(holder, 0) - slots
        if left > 0:
            host.held[holder] = left
            host.recalled[holder] = max(0, host.recalled.get(holder, 0) - slots)
        else:
            host.held.pop(holder, None)
            host.since.pop(holder, None)
            host.recalled.pop(holder, None)

    def _reclaim(self, now: float) -> float | None:
        """Take back the slots of holders silent for a lease; when to look again."""
        silent = [holder for holder, seen in self._seen.items() if now - seen >= self.lease]
        for holder in silent:
            self.stats.reclaimed += sum(host.held.get(holder, 0) for host in self._hosts.values())
            self.leave(holder)
        return min(self._seen.values()) + self.lease if self._seen else None

    def _answered(
        self, name: str, host: _Host, run: int, now: float, retry_after: float | None
    ) -> None:
        """Score a run of answers (``Change.answers``); a host that enters its backoff
        calls back every slot it has out (they were granted for any number of starts)."""
        was_backed_off = _backed_off(host, now)
        if run > 0:
            host.score += run
            host.refusals += run
            if host.score >= REFUSALS_BEFORE_BACKOFF:
                self.stats.backed_off[name] = host.refusals
            if retry_after:
                host.not_before = max(host.not_before, now + min(retry_after, BACKOFF_CAP))
        else:
            host.score = max(0, host.score + run)
        if _backed_off(host, now) and not was_backed_off:
            for holder, slots in host.held.items():
                if slots > host.recalled.get(holder, 0):
                    self._recall(name, host, holder, slots - host.recalled.get(holder, 0))

    def _host(self, name: str) -> _Host:
        host = self._hosts.get(name)
        if host is None:
            host = self._hosts[name] = _Host()
        return host


def _backed_off(host: _Host, now: float) -> bool:
    """Starts to the host are granted one by one (spaced by its pause, or its Retry-After)."""
    return host.score >= REFUSALS_BEFORE_BACKOFF or host.not_before > now
