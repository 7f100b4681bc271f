"""cluster.yaml and cluster.local.yaml, checked offline with Ray's own code.

Ray's cluster-config preparation (defaults filled in) and JSON-schema validation, as
`ray up` does before it launches anything; every `ray start` command line parsed by
Ray's own click commands. No cloud account or SSH host is needed.
"""

from __future__ import annotations

import copy
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy import parse_ray, ray_pin
from tests.support.jobs import ROOT

CLUSTER_FILES = ("cluster.yaml", "cluster.local.yaml")


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
