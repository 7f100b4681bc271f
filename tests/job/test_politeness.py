"""The per-host slots' bookkeeping, without Ray or a clock."""

from __future__ import annotations

import pytest

from itm.job.politeness import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    REFUSALS_BEFORE_BACKOFF,
    ROTATE,
    Change,
    Grant,
    HostSlots,
    pause_of,
    with_answers,
)


def granted(slots: HostSlots, holder: str, now: float = 0.0) -> dict[str, Grant]:
    slots.grant(now)
    return slots.mail(holder).grants


def test_at_most_per_host_slots_per_host_across_holders() -> None:
    slots = HostSlots(per_host=3, lease=60)
    slots.tell("p", {"a": Change(ask=2), "b": Change(ask=1)}, 0.0)
    slots.tell("q", {"a": Change(ask=2)}, 0.0)
    assert granted(slots, "p") == {"a": Grant(2, False), "b": Grant(1, False)}
    assert granted(slots, "q") == {"a": Grant(1, False)}  # a's third slot; one more waits
    slots.tell("p", {"a": Change(give_back=1)}, 0.5)
    assert granted(slots, "q", 0.5) == {"a": Grant(1, False)}
    assert granted(slots, "p", 0.5) == {}


def test_waiting_holders_are_served_in_turn() -> None:
    slots = HostSlots(per_host=2, lease=60)
    slots.tell("p", {"a": Change(ask=2)}, 0.0)
    assert granted(slots, "p") == {"a": Grant(2, False)}
    slots.tell("q", {"a": Change(ask=2)}, 0.1)
    slots.tell("r", {"a": Change(ask=2)}, 0.1)
    slots.tell("p", {"a": Change(give_back=2, ask=2)}, 0.2)  # p wants them again
    slots.grant(0.2)
    # q and r asked first: one slot each, p queues behind them.
    one = {"a": Grant(1, False)}
    assert [slots.mail(holder).grants for holder in "pqr"] == [{}, one, one]


def test_a_holder_past_its_share_gives_the_surplus_back_after_a_while() -> None:
    slots = HostSlots(per_host=4, lease=60)
    slots.tell("p", {"a": Change(ask=4)}, 0.0)
    assert granted(slots, "p") == {"a": Grant(4, False)}
    slots.tell("q", {"a": Change(ask=4)}, 0.1)
    assert slots.grant(0.1) == ROTATE  # p got its slots at 0: it keeps them until then
    assert not slots.mail("p")
    slots.grant(ROTATE)
    assert slots.mail("p").recall == {"a": 2}  # its share of 4 between two holders
    slots.grant(ROTATE + 0.5)
    assert not slots.mail("p")  # asked once
    slots.tell("p", {"a": Change(give_back=2)}, ROTATE + 1)
    assert granted(slots, "q", ROTATE + 1) == {"a": Grant(2, False)}


def test_a_cancelled_ask_is_not_granted() -> None:
    slots = HostSlots(per_host=1, lease=60)
    slots.tell("p", {"a": Change(ask=1)}, 0.0)
    slots.tell("q", {"a": Change(ask=1)}, 0.0)
    slots.tell("q", {"a": Change(cancel=1)}, 1.0)
    slots.tell("p", {"a": Change(give_back=1)}, 2.0)
    slots.grant(2.0)
    assert slots.mail("q").grants == {}


def test_a_silent_holder_loses_its_slots_after_its_lease() -> None:
    slots = HostSlots(per_host=1, lease=10)
    slots.tell("p", {"a": Change(ask=1)}, 0.0)
    assert granted(slots, "p") == {"a": Grant(1, False)}
    slots.tell("q", {"a": Change(ask=1)}, 5.0)
    slots.grant(9.0)
    assert slots.mail("q").grants == {}
    slots.seen("q", 9.0)
    slots.grant(10.0)
    assert slots.mail("q").grants == {"a": Grant(1, False)}
    assert slots.stats.reclaimed == 1


def test_a_holder_that_leaves_frees_its_slots() -> None:
    slots = HostSlots(per_host=1, lease=60)
    slots.tell("p", {"a": Change(ask=1)}, 0.0)
    slots.tell("q", {"a": Change(ask=1)}, 0.0)
    slots.leave("p")
    assert granted(slots, "q") == {"a": Grant(1, False)}


def test_pauses_grow_with_the_refusals_up_to_a_cap() -> None:
    pauses = [pause_of(score) for score in range(12)]
    assert pauses[:REFUSALS_BEFORE_BACKOFF] == [0.0] * REFUSALS_BEFORE_BACKOFF
    assert pauses[REFUSALS_BEFORE_BACKOFF] == BACKOFF_FIRST
    assert pauses == sorted(pauses)
    assert pauses[-1] == BACKOFF_CAP


def refused(times: int) -> Change:
    return Change(answers=with_answers((), [503] * times))


def test_answers_are_sent_as_runs() -> None:
    assert with_answers((), [200, 200, 503, 429, 404]) == (-2, 2, -1)
    assert with_answers((-2,), [200, 503]) == (-3, 1)


def test_a_backed_off_host_gets_single_starts_spaced_by_its_pause() -> None:
    slots = HostSlots(per_host=8, lease=60)
    slots.tell("p", {"a": Change(ask=4)}, 0.0)
    assert granted(slots, "p") == {"a": Grant(4, False)}
    slots.tell("q", {"a": refused(REFUSALS_BEFORE_BACKOFF), "b": Change(ask=1)}, 0.0)
    assert slots.stats.backed_off == {"a": REFUSALS_BEFORE_BACKOFF}
    slots.grant(0.0)
    assert slots.mail("p").recall == {"a": 4}  # slots for many starts are called back
    assert slots.mail("q").grants == {"b": Grant(1, False)}  # another host is not held up
    slots.tell("p", {"a": Change(give_back=4, ask=2)}, 0.1)
    assert slots.grant(0.1) == BACKOFF_FIRST  # one start per pause after the last grant
    assert slots.mail("p").grants == {}
    assert granted(slots, "p", BACKOFF_FIRST) == {"a": Grant(1, True)}
    slots.tell("p", {"a": Change(give_back=1, answers=(1,))}, 1.5)  # the pause doubles
    assert slots.grant(1.5) == BACKOFF_FIRST + 2 * BACKOFF_FIRST


def test_answers_step_the_backoff_down() -> None:
    slots = HostSlots(per_host=8, lease=60)
    slots.tell("p", {"a": Change(answers=with_answers((), [503, 503, 503, 200]))}, 0.0)
    slots.tell("p", {"a": Change(ask=2)}, 0.0)
    assert granted(slots, "p") == {"a": Grant(2, False)}  # below the threshold: no pause


@pytest.mark.parametrize(("retry_after", "until"), [(2.0, 3.0), (500.0, 1.0 + BACKOFF_CAP)])
def test_retry_after_holds_the_whole_host_within_the_cap(retry_after: float, until: float) -> None:
    slots = HostSlots(per_host=8, lease=600)
    slots.tell("p", {"a": Change(answers=(1,), retry_after=retry_after, ask=1)}, 1.0)
    assert slots.grant(1.0) == until
    assert slots.mail("p").grants == {}
    assert granted(slots, "p", until) == {"a": Grant(1, False)}  # the wait is over
    assert slots.stats.backed_off == {}  # one refusal is no backoff


def test_idle_hosts_are_forgotten() -> None:
    slots = HostSlots(per_host=2, lease=60)
    for n in range(1000):
        slots.tell("p", {f"h{n}": Change(ask=1)}, 0.0)
        slots.grant(0.0)
        slots.tell("p", {f"h{n}": Change(give_back=1)}, 0.0)
        slots.grant(0.0)
    assert slots.mail("p").grants.keys() == {f"h{n}" for n in range(1000)}
    assert len(slots._hosts) == 0


def test_per_host_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HostSlots(per_host=0, lease=1)
