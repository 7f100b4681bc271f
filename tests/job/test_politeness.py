"""The per-host tokens' bookkeeping, without Ray or a clock."""

from __future__ import annotations

import pytest

from itm.job.politeness import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    REFUSALS_BEFORE_BACKOFF,
    HostTokens,
    pause_of,
)


def asked(tokens: HostTokens, tickets: range | list[int], host: str, now: float = 0.0) -> list[int]:
    for ticket in tickets:
        tokens.ask(ticket, host, now)
    return tokens.grant(now)[0]


def test_at_most_per_host_tokens_per_host_in_order() -> None:
    tokens = HostTokens(per_host=2, lease=60)
    assert asked(tokens, range(5), "a") == [0, 1]
    assert asked(tokens, [10], "b") == [10]  # another host is not held up
    tokens.give_back(1, 1.0)
    assert tokens.grant(1.0) == ([2], 60.0)  # others wait: wake when a lease would end
    tokens.give_back(0, 1.0)
    tokens.give_back(2, 1.0)
    assert tokens.grant(1.0) == ([3, 4], None)


def test_a_redirect_gives_the_old_host_back() -> None:
    tokens = HostTokens(per_host=1, lease=60)
    assert asked(tokens, [1, 2], "a") == [1]
    assert sorted(asked(tokens, [1], "b")) == [1, 2]
    assert (tokens.holds(1), tokens.holds(2)) == ("b", "a")


def test_a_waiter_that_gives_up_leaves_the_queue() -> None:
    tokens = HostTokens(per_host=1, lease=60)
    assert asked(tokens, [1, 2, 3], "a") == [1]
    tokens.timed_out(2, 5.0)
    tokens.give_back(1, 5.0)
    assert tokens.grant(5.0) == ([3], None)
    assert tokens.stats.timed_out == 1
    tokens.give_back(99, 5.0)  # unknown tickets are ignored


def test_a_lost_token_is_taken_back_after_its_lease() -> None:
    tokens = HostTokens(per_host=1, lease=10)
    assert asked(tokens, [1, 2], "a") == [1]
    assert tokens.grant(5.0) == ([], 10.0)  # wake up when the lease ends
    assert tokens.grant(10.0) == ([2], None)
    assert tokens.holds(1) is None
    assert tokens.stats.reclaimed == 1


def test_pauses_grow_with_the_refusals_up_to_a_cap() -> None:
    pauses = [pause_of(score) for score in range(12)]
    assert pauses[:REFUSALS_BEFORE_BACKOFF] == [0.0] * REFUSALS_BEFORE_BACKOFF
    assert pauses[REFUSALS_BEFORE_BACKOFF] == BACKOFF_FIRST
    assert pauses == sorted(pauses)
    assert pauses[-1] == BACKOFF_CAP


def test_a_host_that_keeps_refusing_is_backed_off_and_others_are_not() -> None:
    tokens = HostTokens(per_host=8, lease=60)
    for _ in range(REFUSALS_BEFORE_BACKOFF):
        tokens.answered("a", 503, 0.0)
    assert tokens.stats.backed_off == {"a": REFUSALS_BEFORE_BACKOFF}
    assert asked(tokens, [1, 2], "a", now=0.0) == [1]  # one start, then a pause
    assert asked(tokens, [3], "b", now=0.0) == [3]
    assert tokens.grant(0.5) == ([], BACKOFF_FIRST)
    assert tokens.grant(BACKOFF_FIRST) == ([2], None)
    tokens.answered("a", 429, 2.0)  # one more refusal: the pause doubles
    assert asked(tokens, [4], "a", now=2.0) == []
    assert tokens.grant(2.0) == ([], BACKOFF_FIRST + 2 * BACKOFF_FIRST)


def test_answers_step_the_backoff_down() -> None:
    tokens = HostTokens(per_host=8, lease=60)
    for status in [503] * REFUSALS_BEFORE_BACKOFF + [200]:
        tokens.answered("a", status, 0.0)
    assert asked(tokens, [1, 2], "a") == [1, 2]  # score below the threshold: no pause


@pytest.mark.parametrize(("retry_after", "until"), [(2.0, 3.0), (500.0, 1.0 + BACKOFF_CAP)])
def test_retry_after_holds_the_whole_host_within_the_cap(retry_after: float, until: float) -> None:
    tokens = HostTokens(per_host=8, lease=600)
    tokens.answered("a", 503, 1.0, retry_after)
    assert asked(tokens, [1], "a", now=1.0) == []
    assert tokens.grant(1.0) == ([], until)
    assert tokens.grant(until) == ([1], None)
    assert tokens.stats.backed_off == {}  # one refusal is no backoff


def test_per_host_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HostTokens(per_host=0, lease=1)
