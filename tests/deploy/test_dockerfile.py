"""The Dockerfile and .dockerignore, checked offline with the real tools that read them.

The Dockerfile: hadolint, and its stages read as Docker reads them. .dockerignore:
the Docker SDK's own context matcher. No Docker engine is needed; hadolint and
docker-compose must be installed (.ci/run installs them): a missing tool fails these
tests, it does not skip them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.deploy import ray_pin, tool
from tests.support.jobs import ROOT

pytestmark = pytest.mark.external  # hadolint, docker-compose


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_does_fail_a_bad_dockerfile() -> None:
    """The control: the linter the test above trusts really reports problems."""
    bad = "FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp\n"
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "-"],
        input=bad,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout


def test_every_hadolint_ignore_is_justified() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and "hadolint" not in before, (
                f"line {i + 1}: explain the ignored rule in a comment just above it"
            )


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split by FROM."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_final_stage_is_slim_unprivileged_and_without_build_tools() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    final = stages[-1]
    assert re.fullmatch(r"FROM python:3\.11-slim\S*", final[0])
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    body = "\n".join(final)
    assert not re.search(r"\b(gcc|g\+\+|build-essential|make|cmake|git)\b", body)
    assert "COPY --from=build /opt/itm /opt/itm" in body
    assert "ITM_HOST=0.0.0.0" in body
    build = "\n".join(stages[0])
    assert f"ray.__version__ == '{ray_pin()}'" in build
    # The dependency layer's stub package must go with its build tree, or the stale
    # stub itm/__init__.py ends up in the image instead of the real one.
    (stub,) = [line for line in stages[0] if "pip uninstall --yes itm" in line]
    assert re.search(r"rm -rf [^&]*\bbuild\b", stub), stub


def docker_context_matcher():
    """The Docker SDK's own .dockerignore matcher (docker-py, which docker-compose uses)."""
    try:
        from docker.utils.build import exclude_paths  # type: ignore[import-not-found]

        return lambda root, patterns: set(exclude_paths(root, patterns))
    except ImportError:
        pass
    shebang = Path(tool("docker-compose")).read_text(errors="replace").splitlines()[0]
    assert shebang.startswith("#!"), "docker-compose is not the Python (v1) one"
    interpreter = shebang[2:].strip().split()

    def match(root: str, patterns: list[str]) -> set[str]:
        code = (
            "import json, sys\nfrom docker.utils.build import exclude_paths\n"
            "print(json.dumps(sorted(exclude_paths(sys.argv[1], json.loads(sys.argv[2])))))"
        )

        out = subprocess.run(
            [*interpreter, "-c", code, root, json.dumps(patterns)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return set(json.loads(out))

    return match


def test_dockerignore_sends_what_the_dockerfile_copies_and_no_secret(tmp_path: Path) -> None:
    sources = {
        src.rstrip("/")
        for stage in dockerfile_stages()
        for line in stage
        if line.upper().startswith("COPY ") and "--from=" not in line
        for src in [w for w in line.split()[1:-1] if not w.startswith("--")]
    }
    assert {"pyproject.toml", "itm", "urls.txt"} <= sources
    tree = {
        **{f"{s}/__init__.py" if s == "itm" else s: "x" for s in sources},
        "itm/__pycache__/run.cpython-311.pyc": "x",
        ".env": "MONGO_INITDB_ROOT_PASSWORD=secret",
        "cluster.env": "ITM_MONGO_URI=secret",
        ".git/config": "x",
        ".itm/mongo/collection.wt": "x",
        ".venv/bin/python": "x",
        "tests/test_x.py": "x",
        "notebooks/n.ipynb": "x",
    }
    for rel, content in tree.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    sent = docker_context_matcher()(str(tmp_path), patterns)
    missing = {s for s in sources if s not in sent}
    assert not missing, f"COPY sources left out of the build context: {missing}"
    assert "itm/__init__.py" in sent
    leaked = {
        p
        for p in sent
        if p.split("/")[0] in {".env", "cluster.env", ".git", ".itm", ".venv", "tests", "notebooks"}
    }
    assert not leaked and not any("__pycache__" in p for p in sent), leaked
