"""The README's reference tables, generated from the code that defines them.

The README calls these through cog (https://nedbatchelder.com/code/cog/); after
changing a setting or a reason, regenerate them with ``python -m cogapp -r README.md``
(``tests/test_docs.py`` fails until they match).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from itm.config import Settings, base_type, shown_default
from itm.outcomes import Reason


def cell(text: str) -> str:
    """Text as a Markdown table cell."""
    return text.replace("|", "\\|")


def markdown(text: str) -> str:
    """Plain help text as a table cell: flags as code, ``docs/*.md`` paths as links."""
    parts = text.split("`")
    for prose in range(0, len(parts), 2):  # what is already code stays as it is
        parts[prose] = re.sub(r"(?<![\w-])(--[a-z][a-z-]*)", r"`\1`", parts[prose])
        parts[prose] = re.sub(r"docs/([\w-]+\.md)(#[\w-]+)?", r"[docs/\1](docs/\1\2)", parts[prose])
    return "`".join(parts)


def configuration_table() -> str:
    """One row per field of ``Settings``: its flag, its default, its help."""
    rows = ["| flag | default | what it does |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if base_type(f) is bool:
            flag += f"/--no-{flag[2:]}"
        default = shown_default(f)
        if isinstance(f.default, (str, Path)) and not f.metadata["shown"]:
            default = f"`{default}`"
        rows.append(f"| `{flag}` | {default} | {cell(markdown(f.metadata['help']))} |")
    return "\n".join(rows) + "\n"


def outcomes_table() -> str:
    """One row per ``Reason``: its value and its description."""
    rows = ["| reason | when |", "| --- | --- |"]
    rows += [f"| `{reason.value}` | {cell(reason.description)} |" for reason in Reason]
    return "\n".join(rows) + "\n"
