"""One registry of reasons: the code raises only ``Reason`` members, each one described."""

from __future__ import annotations

import ast

from itm.outcomes import Failure, Reason, describe, parse_reasons
from tests.support.jobs import ROOT


def failure_reasons() -> list[ast.expr]:
    """The first argument of every ``Failure(...)`` in itm/."""
    found = []
    for path in (ROOT / "itm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Failure":
                found.append(node.args[0])
    return found


def test_every_failure_names_a_reason_member_or_passes_one_on() -> None:
    for first in failure_reasons():
        match first:
            case ast.Attribute(value=ast.Name(id="Reason"), attr=name):
                assert name in Reason.__members__
            case ast.Call(func=ast.Attribute(value=ast.Name(id="Reason"), attr="http")):
                pass
            case ast.Attribute(attr="reason"):  # an existing failure's reason, kept
                pass
            case _:
                raise AssertionError(f"Failure({ast.unparse(first)}, …): use a Reason")


def test_every_reason_is_described_and_is_its_value() -> None:
    assert all(reason.description for reason in Reason)
    assert len({reason.value for reason in Reason}) == len(Reason)
    assert Reason.TIMEOUT == "timeout" and isinstance(Reason.TIMEOUT, str)
    assert Reason.TIMEOUT.value == "timeout"


def test_every_named_reason_can_be_chosen_for_a_retry() -> None:
    named = [reason.value for reason in Reason if reason is not Reason.HTTP]
    assert parse_reasons(",".join(named)) == named


def test_a_failure_carries_the_plain_value() -> None:
    failure = Failure(Reason.TIMEOUT, "no data")
    assert type(failure.reason) is str and failure.reason == "timeout"
    assert Failure(Reason.http(404), "x").reason == "http_404"
    assert describe("http_404") == Reason.HTTP.description
    assert describe("timeout") == Reason.TIMEOUT.description
    assert describe("mystery") == ""
