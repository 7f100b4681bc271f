"""One registry of reasons: the code raises only ``Reason`` members, each one described;
``--reasons`` names them, their statuses or their classes."""

from __future__ import annotations

import ast

import pytest

from itm.outcomes import Failure, Reason, describe, parse_reasons, reason_filter
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


def test_reasons_name_registered_reasons_statuses_or_classes() -> None:
    assert parse_reasons(" timeout, http_503,http_5xx ") == ["timeout", "http_503", "http_5xx"]
    for bad in ("", "http_600", "http_5x", "timeouts", "http_<status>"):
        with pytest.raises(ValueError, match="valid: "):
            parse_reasons(bad)


def test_a_reason_filter_takes_names_statuses_and_classes() -> None:
    wanted = reason_filter(["timeout", "http_404", "http_5xx"])
    assert [
        r for r in ("timeout", "http_404", "http_403", "http_503", "http_5xx") if wanted(r)
    ] == [
        "timeout",
        "http_404",
        "http_503",
    ]
    assert not wanted("connection_error") and reason_filter(None)("anything")
