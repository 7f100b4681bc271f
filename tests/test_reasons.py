"""One registry of reasons: the code raises only those, the README lists them all."""

from __future__ import annotations

import ast
import re

from itm.outcomes import REASONS
from tests.conftest import ROOT


def reasons_in_code() -> set[str]:
    """The reason of every ``Failure(...)`` in itm/, an f-string's fixed start as a pattern."""
    found = set()
    for path in (ROOT / "itm").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Failure":
                first = node.args[0]
                if isinstance(first, ast.Constant):
                    found.add(first.value)
                elif isinstance(first, ast.JoinedStr):  # f"http_{code}"
                    found.add(first.values[0].value + "<status>")
    return found


def test_the_code_raises_only_registered_reasons() -> None:
    assert reasons_in_code() - set(REASONS) == set()


def test_the_readme_lists_every_reason() -> None:
    readme = (ROOT / "README.md").read_text()
    outcomes = readme.split("### Outcomes", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_<>]+)` \|", outcomes, re.MULTILINE))
    assert listed == set(REASONS)
