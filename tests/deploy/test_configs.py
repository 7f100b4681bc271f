"""The deployment files, checked offline with the real tools that will read them.

- docker-compose.yml: parsed, interpolated and validated by Docker Compose itself
  (`docker-compose config`), then its wiring checked on what Compose resolved.
- cluster.yaml / cluster.local.yaml: Ray's own cluster-config preparation (defaults
  filled in) and JSON-schema validation, as `ray up` does before it launches anything.
- Dockerfile: hadolint. .dockerignore: the Docker SDK's own context matcher.
- Every `ray start` / `ray job submit` / `python -m itm.run` command line in these
  files: parsed by the real command-line parsers (Ray's click commands, itm's argparse).

No Docker engine, cloud account or SSH host is needed; the tools must be installed
(.ci/run installs them): a missing tool fails these tests, it does not skip them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pymongo.uri_parser import parse_uri

pytestmark = pytest.mark.external  # docker-compose and hadolint

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
CLUSTER_FILES = ("cluster.yaml", "cluster.local.yaml")
SERVICES = {"mongo", "ray-head", "ray-worker", "job", "api", "mongo-express"}
PASSWORDS = ("MONGO_INITDB_ROOT_PASSWORD", "ITM_JOB_MONGO_PASSWORD", "ITM_API_MONGO_PASSWORD")


# --------------------------------------------------------------------------- helpers


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


def clean_env() -> dict[str, str]:
    """This process's environment without anything Compose could interpolate from."""
    prefixes = ("MONGO_", "ITM_", "RAY_", "COMPOSE_", "ME_CONFIG_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("docker-compose"),
            "--project-directory",
            str(ROOT),
            "--file",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
            *args,
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Compose .env file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def command_argv(service: dict[str, Any]) -> list[str]:
    """A service's command as the container gets it (Compose splits strings like a shell)."""
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


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


def parse_itm_run(argv: list[str]):
    """Parse `python -m itm.run …` with itm's own flag parser (no ITM_* variables)."""
    from itm.config import Settings

    assert argv[:3] == ["python", "-m", "itm.run"], argv
    return Settings.from_args(argv[3:], environ={})


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """{container port: (host ip, host port)} of a resolved service's published ports."""
    result = {}
    for spec in service.get("ports", []):
        if isinstance(spec, dict):  # long syntax
            result[int(spec["target"])] = (spec.get("host_ip", ""), int(spec["published"]))
            continue
        spec = spec.split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            result[int(parts[2])] = (parts[0], int(parts[1]))
        elif len(parts) == 2:
            result[int(parts[1])] = ("", int(parts[0]))
        else:
            result[int(parts[0])] = ("", 0)  # container port only: no fixed host port
    return result


def size_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(text).strip().lower())
    assert match, text
    return int(match[1]) * 1024 ** " kmg".index(match[2] or " ")


def ray_pin() -> str:
    """The exact Ray version pyproject.toml pins."""
    (pin,) = re.findall(r'"ray(?:\[[^\]]*\])?==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    return pin


# --------------------------------------------------------------------- docker compose


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it with the documented .env.example."""
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_passes_docker_compose_validation() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_compose_refuses_to_run_without_mongo_credentials(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("# no credentials\n")
    result = compose("config", "--quiet", env_file=empty)
    assert result.returncode != 0
    assert "MONGO_INITDB_ROOT_" in result.stderr and ".env.example" in result.stderr


def test_compose_has_the_services_of_the_product(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == SERVICES


def test_env_example_documents_every_variable_the_compose_file_uses(raw: dict[str, Any]) -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used <= documented, used - documented
    assert set(PASSWORDS) | {"MONGO_INITDB_ROOT_USERNAME"} <= set(dotenv(ENV_EXAMPLE))


def test_mongo_is_the_official_image_on_a_volume_with_a_healthcheck(
    resolved: dict[str, Any], raw: dict[str, Any]
) -> None:
    mongo = resolved["services"]["mongo"]
    assert re.fullmatch(r"mongo:\d+", mongo["image"]), "official image, major version pinned"
    assert "ports" not in mongo, "MongoDB is not published to the host"
    mounts = (
        {v["target"]: v for v in mongo["volumes"]}
        if isinstance(mongo["volumes"][0], dict)
        else {v.split(":")[1]: {"source": v.split(":")[0]} for v in mongo["volumes"]}
    )
    assert mounts["/data/db"]["source"] in resolved["volumes"], "a named volume"
    test = " ".join(mongo["healthcheck"]["test"])
    assert "mongosh" in test and "ping" in test
    # The credentials come from the environment (.env), not from the file.
    raw_env = raw["services"]["mongo"]["environment"]
    for key in ("MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"):
        assert raw_env[key].startswith("${" + key), raw_env[key]
        assert mongo["environment"][key] == dotenv(ENV_EXAMPLE)[key]


def test_compose_refuses_to_run_without_any_of_the_passwords(tmp_path: Path) -> None:
    for missing in PASSWORDS:
        env = tmp_path / f"without-{missing}.env"
        env.write_text(
            "".join(f"{k}={v}\n" for k, v in dotenv(ENV_EXAMPLE).items() if k != missing)
        )
        result = compose("config", "--quiet", env_file=env)
        assert result.returncode != 0 and missing in result.stderr, (missing, result.stderr)


def test_each_part_reaches_mongo_with_its_own_least_privileged_user(
    resolved: dict[str, Any],
) -> None:
    """Root stays in mongo (and the debug-only mongo-express); the Ray nodes get the
    readWrite user, the API the read-only one; the init script creates exactly those."""
    creds = dotenv(ENV_EXAMPLE)
    services = resolved["services"]
    users = {}
    for name in ("ray-head", "ray-worker", "api"):
        env = services[name]["environment"]
        parsed = parse_uri(env["ITM_MONGO_URI"])
        assert parsed["nodelist"] == [("mongo", 27017)]
        assert parsed["options"]["authSource"] == "admin"
        assert env["ITM_DB"] == services["mongo"]["environment"]["ITM_DB"] == "itm"
        assert env["RAY_AUTH_MODE"] == "disabled", "the CLIs and the Jobs API need it (Ray 2.60)"
        users[name] = (parsed["username"], parsed["password"])
    assert users["ray-head"] == users["ray-worker"] == ("itm-job", creds["ITM_JOB_MONGO_PASSWORD"])
    assert users["api"] == ("itm-api", creds["ITM_API_MONGO_PASSWORD"])
    root = parse_uri(services["mongo-express"]["environment"]["ME_CONFIG_MONGODB_URL"])
    assert (root["username"], root["password"]) == (
        creds["MONGO_INITDB_ROOT_USERNAME"],
        creds["MONGO_INITDB_ROOT_PASSWORD"],
    )
    for name, service in services.items():
        if name not in {"mongo", "mongo-express"}:
            assert creds["MONGO_INITDB_ROOT_PASSWORD"] not in str(service), name
        if name not in {"mongo", "api"}:
            assert creds["ITM_API_MONGO_PASSWORD"] not in str(service), name
    # The init script: mounted where the official image runs it on a new volume,
    # executable (so run, not sourced), and granting exactly these roles.
    mongo = services["mongo"]
    mounts = [
        v
        if isinstance(v, dict)
        else {"source": v.split(":")[0], "target": v.split(":")[1], "read_only": True}
        for v in mongo["volumes"]
    ]
    (init,) = [m for m in mounts if m["target"] == "/docker-entrypoint-initdb.d"]
    assert Path(init["source"]).resolve() == ROOT / "mongo-init" and init.get("read_only")
    for key in ("ITM_JOB_MONGO_PASSWORD", "ITM_API_MONGO_PASSWORD"):
        assert mongo["environment"][key] == creds[key]
    scripts = sorted((ROOT / "mongo-init").iterdir())
    assert [s.name for s in scripts] == ["itm-users.sh"]
    assert os.access(scripts[0], os.X_OK)
    assert subprocess.run(["bash", "-n", str(scripts[0])], check=False).returncode == 0
    text = scripts[0].read_text()
    granted = re.findall(
        r'createUser\(\{user: "([^"]+)", pwd: process\.env\.(\w+),\s*roles: \[\{role: "(\w+)", '
        r"db: itm\}\]\}\)",
        text,
    )
    assert sorted(granted) == [
        ("itm-api", "ITM_API_MONGO_PASSWORD", "read"),
        ("itm-job", "ITM_JOB_MONGO_PASSWORD", "readWrite"),
    ], granted
    assert "const itm = process.env.ITM_DB;" in text


def test_ray_head_runs_the_dashboard_and_publishes_it_on_loopback(
    resolved: dict[str, Any],
) -> None:
    head = resolved["services"]["ray-head"]
    argv = command_argv(head)
    params = parse_ray(argv)
    assert argv[:2] == ["ray", "start"] and params["head"] and params["block"]
    assert params["dashboard_host"] == "0.0.0.0", "reached by the job service and the host"
    assert published(head) == {params["dashboard_port"]: ("127.0.0.1", 8265)}
    # The healthcheck asks the dashboard, on the port it was started on, for the GCS.
    check = " ".join(head["healthcheck"]["test"])
    assert f"127.0.0.1:{params['dashboard_port']}/api/gcs_healthz" in check
    # /dev/shm must hold the object store, or Ray falls back to disk.
    assert size_bytes(head["shm_size"]) > params["object_store_memory"]


def test_ray_worker_scales_and_joins_the_head(resolved: dict[str, Any]) -> None:
    worker = resolved["services"]["ray-worker"]
    head = parse_ray(command_argv(resolved["services"]["ray-head"]))
    for key in ("container_name", "hostname"):
        assert key not in worker, f"{key} would forbid --scale ray-worker=N"
    assert all(host_port == 0 for _, host_port in published(worker).values())
    params = parse_ray(command_argv(worker))
    assert params["address"] == f"ray-head:{head['port']}" and params["block"]
    assert not params["head"]
    assert size_bytes(worker["shm_size"]) > params["object_store_memory"]
    assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"}}


def job_argv(tmp_path: Path, job_args: str | None) -> list[str]:
    """The argv the job container execs, with ITM_JOB_ARGS set (or not) in .env.

    Compose resolves the file (interpolation included); then the service's real
    command runs in `sh`, with a `ray` on PATH that prints the argv it gets.
    """
    env = tmp_path / ".env"
    env.write_text(
        ENV_EXAMPLE.read_text() + (f"ITM_JOB_ARGS={job_args}\n" if job_args is not None else "")
    )
    result = compose("config", env_file=env)
    assert result.returncode == 0, result.stderr
    job = yaml.safe_load(result.stdout)["services"]["job"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ray"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    shell, flag, script = job["command"]
    assert (shell, flag) == ("sh", "-c")
    # `config` prints $ as $$ (its output is a compose file again); the container gets $.
    script = script.replace("$$", "$")
    environment = {k: str(v) for k, v in job["environment"].items()}
    (tmp_path / "a-file-a-glob-would-match").touch()
    out = subprocess.run(
        [shell, flag, script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", **environment},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return ["ray", *json.loads(out)]


@pytest.mark.parametrize(
    ("job_args", "expected"),
    [
        (None, {}),
        ("", {}),
        ("--batch-size 8", {"batch_size": 8}),
        (
            "--concurrency 128 --batch-size 48  --retries 0",
            {"concurrency": 128, "batch_size": 48, "retries": 0},
        ),
        ("--urls *", {"urls": Path("*")}),
    ],
)
def test_job_submits_itm_run_with_any_number_of_job_args(
    tmp_path: Path, resolved: dict[str, Any], job_args: str | None, expected: dict[str, Any]
) -> None:
    """Unset, empty, one flag or several: each word of ITM_JOB_ARGS is one argument
    (Docker Compose and podman-compose alike: the container's shell splits it)."""
    services = resolved["services"]
    head = parse_ray(command_argv(services["ray-head"]))
    argv = job_argv(tmp_path, job_args)
    submit = parse_ray(argv)
    assert submit["address"] == f"http://ray-head:{head['dashboard_port']}"
    entrypoint = list(submit["entrypoint"])
    assert "" not in entrypoint
    settings = parse_itm_run(entrypoint)
    assert settings.ray_address == "auto" and not settings.serve, "the API is its own service"
    defaults = parse_itm_run(["python", "-m", "itm.run"])
    for key, value in expected.items():
        assert getattr(settings, key) == value != getattr(defaults, key), key
    if "urls" not in expected:
        # The job reads urls.txt from the image, where the Dockerfile puts it.
        assert settings.urls == Path("/app/urls.txt")
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert re.search(r"^WORKDIR /app$", dockerfile, re.M)
        assert re.search(r"^COPY (\S+ )*urls\.txt( \S+)* \./$", dockerfile, re.M)
    # The MongoDB password is not on a command line (the dashboard shows it).
    assert settings.mongo_uri is None and "mongodb://" not in " ".join(argv)


def test_job_runs_once_after_mongo_and_the_head(resolved: dict[str, Any]) -> None:
    job = resolved["services"]["job"]
    assert job["restart"] == "no"
    assert "ITM_MONGO_URI" not in job["environment"], "the driver gets it from the head"
    assert job["depends_on"] == {
        "mongo": {"condition": "service_healthy"},
        "ray-head": {"condition": "service_healthy"},
    }


def test_api_serves_port_5000_from_its_own_container(resolved: dict[str, Any]) -> None:
    api = resolved["services"]["api"]
    shell, flag, script = api["command"]
    assert (shell, flag) == ("sh", "-c")
    start, _, serve = script.partition(" && exec ")
    params = parse_ray(shlex.split(start))
    assert params["head"] and params["include_dashboard"] is False
    assert size_bytes(api["shm_size"]) > params["object_store_memory"]
    assert shlex.split(serve) == ["serve", "run", "--address=auto", "serve_config.yaml"]
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert config["http_options"] == {"host": "0.0.0.0", "port": 5000}
    assert published(api) == {5000: ("127.0.0.1", 5000)}, "host loopback only"
    assert "127.0.0.1:5000/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"] == {"mongo": {"condition": "service_healthy"}}


def test_every_dependency_waits_for_a_healthcheck(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name, service in services.items():
        for target, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, target)
            assert services[target]["healthcheck"]["test"], target


def test_mongo_express_is_behind_the_debug_profile(resolved: dict[str, Any]) -> None:
    express = resolved["services"]["mongo-express"]
    assert express["profiles"] == ["debug"]
    assert re.fullmatch(r"mongo-express:\d+", express["image"])
    assert published(express)[8081] == ("127.0.0.1", 8081)
    assert (
        express["environment"]["ME_CONFIG_BASICAUTH_PASSWORD"]
        == dotenv(ENV_EXAMPLE)["MONGO_INITDB_ROOT_PASSWORD"]
    )
    for name in SERVICES - {"mongo-express"}:
        assert "profiles" not in resolved["services"][name], f"{name} must start by default"


def test_itm_services_share_the_dockerfile_image(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    names = ("ray-head", "ray-worker", "job", "api")
    assert len({services[name]["image"] for name in names}) == 1
    for name in names:
        assert Path(services[name]["build"]["context"]) == ROOT
        assert services[name]["init"] is True, "tini forwards signals to ray/python"


# ------------------------------------------------------------------ Dockerfile, context


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
        import json

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


# ------------------------------------------------------------------- ray cluster configs


def load_cluster(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def prepare(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before launching anything: Ray's own code."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_config_passes_rays_validation(name: str) -> None:
    config = load_cluster(name)
    prepared = prepare(config)
    node_types = prepared["available_node_types"]
    head_type = prepared["head_node_type"]
    assert head_type in node_types
    workers = [t for t in node_types.values() if t is not node_types[head_type]] or [
        node_types[head_type]
    ]
    assert sum(t["min_workers"] for t in workers) >= 1, "at least one worker node from the start"
    assert all(t["min_workers"] <= t["max_workers"] <= prepared["max_workers"] for t in workers)
    # Our commands replaced Ray's defaults (which would install another Ray).
    assert prepared["head_start_ray_commands"] == config["head_start_ray_commands"]
    assert prepared["worker_start_ray_commands"] == config["worker_start_ray_commands"]
    assert prepared["setup_commands"] == config["setup_commands"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_rays_validation_rejects_a_broken_variant(name: str) -> None:
    """The control: the validation above really checks the schema."""
    import jsonschema

    broken = load_cluster(name)
    broken["idle_timeout_minutes"] = "ten"
    with pytest.raises(jsonschema.ValidationError):
        prepare(broken)


def test_aws_node_types_are_complete() -> None:
    config = load_cluster("cluster.yaml")
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert node.get("InstanceType"), name
        assert node.get("ImageId", "").startswith(("ami-", "resolve:ssm:")), name
        assert "resources" in node_type, f"{name}: the schema requires it ({{}}: autodetect)"


def test_local_config_lists_its_machines() -> None:
    provider = load_cluster("cluster.local.yaml")["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_installs_this_checkout_with_the_pinned_ray(name: str) -> None:
    config = load_cluster(name)
    target = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    setup = "\n".join(config["setup_commands"])
    assert f'"ray[serve]=={ray_pin()}" {target}' in setup
    for excluded in (".git", ".itm", ".venv"):
        assert excluded in config["rsync_exclude"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_cluster_command_is_valid_shell(name: str) -> None:
    config = load_cluster(name)
    keys = [k for k in config if k.endswith("_commands")]
    assert {"setup_commands", "head_start_ray_commands", "worker_start_ray_commands"} <= set(keys)
    for key in keys:
        for command in config[key]:
            result = subprocess.run(
                ["bash", "-n", "-c", command], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, (key, command, result.stderr)


def start_command(config: dict[str, Any], key: str) -> tuple[str, list[str]]:
    """(the shell before `ray start`, the `ray start` argv) of a start command."""
    (command,) = [c for c in config[key] if "ray start" in c]
    prefix, _, start = command.partition("&& ray start")
    return prefix.strip(), ["ray", "start", *shlex.split(start)]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_start_commands_parse_and_match(name: str) -> None:
    config = load_cluster(name)
    _, head_argv = start_command(config, "head_start_ray_commands")
    _, worker_argv = start_command(config, "worker_start_ray_commands")
    head, worker = parse_ray(head_argv), parse_ray(worker_argv)
    # The dashboard runs submitted jobs: loopback only, reached through `ray dashboard`.
    assert head["head"] and head["dashboard_host"] == "127.0.0.1"
    assert head["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert worker["address"] == f"$RAY_HEAD_IP:{head['port']}"
    # AWS and on-prem nodes start the same way.
    other = load_cluster(next(n for n in CLUSTER_FILES if n != name))
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert config[key] == other[key]


def test_cluster_start_loads_cluster_env_before_ray(tmp_path: Path) -> None:
    """Run the real shell prefix of the start commands with the documented cluster.env."""
    config = load_cluster("cluster.yaml")
    home = tmp_path / "home"
    (home / "itm").mkdir(parents=True)
    shutil.copy(ROOT / "cluster.env.example", home / "itm" / "cluster.env")
    expected = subprocess.run(
        ["bash", "-c", 'set -a; . ./cluster.env.example; printf %s "$ITM_MONGO_URI"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "&" in expected and expected.startswith("mongodb"), expected
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        prefix, _ = start_command(config, key)
        probe = prefix + ' && printf "%s\\n%s\\n%s" "$ITM_MONGO_URI" "$ITM_HOST" "$PATH"'
        out = subprocess.run(
            ["bash", "-c", probe], env=env, capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr
        uri, host, path = out.stdout.split("\n")
        assert uri == expected and host == "0.0.0.0"
        assert path.startswith(f"{home}/itm-venv/bin:")
    # Without cluster.env the node still starts (the job may pass --mongo-uri).
    (home / "itm" / "cluster.env").unlink()
    prefix, _ = start_command(config, "head_start_ray_commands")
    out = subprocess.run(
        ["bash", "-c", prefix + ' && printf "[%s]" "$ITM_MONGO_URI"'],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0 and out.stdout == "[]", out.stderr
