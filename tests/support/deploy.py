"""Helpers of the deployment files' tests: the real tools and parsers that read them.

The tools must be installed (.ci/run installs them): a missing tool fails a test,
it does not skip it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Any

import click
import pytest

from tests.support.jobs import ROOT


def tool(name: str) -> str:
    """The path of a command-line tool, or a test failure saying how to get it."""
    candidates = [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed; .ci/run installs it (see the test module's doc)")
    return found


def ray_command(*path: str) -> click.Command:
    """A subcommand of Ray's real `ray` CLI, e.g. ``ray_command("job", "submit")``."""
    with warnings.catch_warnings():  # Ray's own imports warn (pydantic deprecations)
        warnings.simplefilter("ignore")
        from ray.scripts.scripts import cli

    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def parse_ray(argv: list[str]) -> dict[str, Any]:
    """Parse `ray start …` or `ray job submit …` with Ray's own click commands.

    Unknown options and bad values raise ``click.UsageError``: nothing is run.
    """
    assert argv[0] == "ray", argv
    path = ("job", "submit") if argv[1] == "job" else (argv[1],)
    rest = argv[1 + len(path) :]
    return ray_command(*path).make_context("ray " + " ".join(path), rest).params


def ray_pin() -> str:
    """The exact Ray version pyproject.toml pins."""
    (pin,) = re.findall(r'"ray(?:\[[^\]]*\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    return pin
