"""docker-compose.yml and .env.example, checked offline with the real tools that read them.

The compose file is parsed, interpolated and validated by Docker Compose itself
(`docker-compose config`), then its wiring checked on what Compose resolved. Every
`ray start` / `ray job submit` / `python -m itm.run` command line in it is parsed by
the real command-line parsers (Ray's click commands, itm's argparse).

No Docker engine is needed; docker-compose must be installed (.ci/run installs it):
a missing tool fails these tests, it does not skip them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo.uri_parser import parse_uri

from tests.support.deploy import parse_ray, tool
from tests.support.jobs import ROOT

pytestmark = pytest.mark.external  # docker-compose

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVICES = {"mongo", "ray-head", "ray-worker", "job", "api", "mongo-express"}
PASSWORDS = ("MONGO_INITDB_ROOT_PASSWORD", "ITM_JOB_MONGO_PASSWORD", "ITM_API_MONGO_PASSWORD")


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
