"""The docs cover the code: every setting, every reason, every route, every field, every link.

In the manner of datasette: the README's Configuration and Outcomes tables are
generated from ``Settings`` and ``Reason`` by cog, and fail here when stale; adding a
route without documenting it fails here, with the name of what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cogapp import Cog
from fastapi.routing import APIRoute

from itm import store
from itm.api import create_app
from itm.config import Settings
from tests.support.corpus import KINDS
from tests.support.jobs import ROOT
from tests.support.reference import configuration_table, outcomes_table

README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def section(text: str, heading: str) -> str:
    """The body of the section whose heading line is ``heading``, up to the next one."""
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(r"\n#{1,3} ", body, maxsplit=1)[0]


def first_cells(table: str) -> list[str]:
    return [
        cell for cell in re.findall(r"^\| ?([^|]+?) ?\|", table, re.MULTILINE) if cell.strip("-")
    ]


def test_the_generated_tables_are_up_to_date() -> None:
    assert Cog().process_string(README, "README.md") == README, (
        "README.md differs from what its [[[cog]]] blocks generate: "
        "run `python -m cogapp -r README.md`"
    )


@pytest.mark.parametrize(
    "heading, table", [("### Configuration", configuration_table), ("### Outcomes", outcomes_table)]
)
def test_each_generated_table_is_in_its_section(heading: str, table: Callable[[], str]) -> None:
    assert table() in section(README, heading)


def test_every_route_is_in_the_routes_table() -> None:
    rows = {
        cell.strip("`").split("?")[0]: row
        for row, cell in (
            (line, first_cells(line + "\n")[0])
            for line in section(README, "### Routes").splitlines()
            if line.startswith("| `")
        )
    }
    app = create_app(Settings(mongo_uri="mongodb://127.0.0.1:9/"))
    missing = []
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue  # /openapi.json, /docs and its OAuth2 redirect: documented as /docs
        for method in route.methods - {"HEAD"}:
            if f"{method} {route.path}" not in rows:
                missing.append(f"{method} {route.path}")
        if "HEAD" in route.methods and "HEAD" not in rows.get(f"GET {route.path}", ""):
            missing.append(f"HEAD {route.path}")
    assert missing == []


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_relative_link_leads_somewhere(doc: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.MULTILINE)
            if anchor not in {slug(heading) for heading in headings}:
                broken.append(target)
    assert broken == []


def test_the_readme_points_to_every_doc() -> None:
    for doc in DOCS[1:]:
        assert f"](docs/{doc.name})" in README, doc.name


def test_the_grayscale_table_is_the_corpus() -> None:
    """Each kind of the corpus test is a row, and its outcome opens the "yields" cell."""
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section(architecture, "## Grayscale, exactly").splitlines()
        if line.startswith("| `")
    ]
    table = {kind.strip("`"): yields for kind, _, yields in rows}
    assert set(table) == set(KINDS)
    for kind, outcome in KINDS.items():
        assert table[kind].removeprefix("`").startswith(outcome), kind


def test_the_data_section_names_every_field_of_the_contract() -> None:
    """One bullet per collection of ``itm.store``, naming (in backticks) its fields, the
    fields of its nested documents, and nothing else."""
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    bullets = {
        found[1]: found[0]
        for found in re.findall(
            r"^(- `(\w+)`:.*?)(?=^- |\Z)",
            section(architecture, "## Data (database `itm`)"),
            re.MULTILINE | re.DOTALL,
        )
    }
    assert set(bullets) == set(store.DOCUMENTS)
    for collection, types in store.DOCUMENTS.items():
        named = set(re.findall(r"`(\w+)`", bullets[collection])) - {collection}
        fields = set().union(*(kind.__required_keys__ | kind.__optional_keys__ for kind in types))
        assert named == fields, collection
