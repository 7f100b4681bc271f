"""The house rules, read from the imports: two wings that never import each other.

``itm/job/`` (the job) and ``itm/api/`` (the API) share only the top-level modules;
the top-level modules import neither wing, except ``itm.run``, which drives both.
Tests and benchmarks share helpers through ``tests.support``, never ``conftest``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.jobs import ROOT

SHARED = {"itm", "itm.config", "itm.store", "itm.outcomes", "itm.redaction", "itm.embedded"}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return found


def itm_imports(path: Path) -> set[str]:
    return {name for name in imports(path) if name == "itm" or name.startswith("itm.")}


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in ("job", "api") else None


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_the_wings_never_import_each_other() -> None:
    crossings = []
    for path in (ROOT / "itm").rglob("*.py"):
        here = module_of(path)
        for name in itm_imports(path):
            other = wing(name)
            if here == "itm.run" or other is None:
                continue
            if wing(here) != other:
                crossings.append(f"{here} imports {name}")
    assert crossings == []


def test_only_run_uses_both_wings() -> None:
    both = [
        module_of(path)
        for path in (ROOT / "itm").rglob("*.py")
        if {wing(name) for name in itm_imports(path)} >= {"job", "api"}
    ]
    assert both == ["itm.run"]


def test_the_shared_modules_are_the_top_level_ones() -> None:
    """A top-level package (``itm.embedded``) counts as one module, its parts inside it."""
    itm = ROOT / "itm"
    top = {module_of(path) for path in [*itm.glob("*.py"), *itm.glob("*/__init__.py")]}
    assert top == SHARED | {"itm.run", "itm.job", "itm.api"}


def test_helpers_come_from_tests_support_not_conftest() -> None:
    users = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    bad = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in users
        for name in imports(path)
        if name.startswith("tests.") and not name.startswith("tests.support")
    ]
    assert bad == []
