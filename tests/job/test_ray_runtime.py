"""The private Ray hooks of ``itm/job/ray_runtime.py``: they fail loudly on a Ray upgrade.

The lean start subclasses Ray's private ``Node``, swaps it in during ``ray.init``,
answers Ray's private dashboard test as a minimal install, and assigns the constant
that keeps a local Ray on loopback. A Ray that renamed any of these would turn the
hook into a no-op without an error: these tests check the names and call sites
statically, then start one lean local Ray in a subprocess and look at its processes.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
import subprocess
import sys
from typing import Any

import pytest
import ray._private.node
import ray._private.services
import ray._private.utils
import ray._private.worker
from ray._private import ray_constants

from itm.job.ray_runtime import LOCAL_ENV, _LeanNode
from tests.support.jobs import ROOT

# The services the lean start leaves out, by the script each runs as.
LEFT_OUT = {
    "autoscaler monitor": "ray/autoscaler/_private/monitor.py",
    "log monitor": "ray/_private/log_monitor.py",
    "dashboard head": "ray/dashboard/dashboard.py",
}

# Starts a lean local Ray, as `itm run --no-dashboard` does, and reports the command
# line and listening TCP sockets of the driver and every process under it.
LEAN_RAY = """
import json, psutil, ray
from itm.job.ray_runtime import init_ray
init_ray(None, dashboard=False)
processes = []
for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        listening = [
            [c.laddr.ip, c.laddr.port]
            for c in process.net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        ]
        processes.append({"cmdline": process.cmdline(), "listening": listening})
    except psutil.NoSuchProcess:
        pass
ray.shutdown()
print(json.dumps(processes))
"""


def parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("name", [n for n, v in vars(_LeanNode).items() if inspect.isfunction(v)])
def test_each_method_the_lean_node_overrides_is_rays_and_called_by_it(
    name: str,
) -> None:
    node = ray._private.node.Node
    assert callable(getattr(node, name, None)), f"Ray's Node has no {name}: the hook is a no-op"
    assert parameters(getattr(_LeanNode, name)) == parameters(getattr(node, name))
    assert f"self.{name}(" in inspect.getsource(node)


def test_ray_init_looks_node_up_when_it_starts_one() -> None:
    """``_lean_node`` swaps the module attribute: ``ray.init`` must read it at call time."""
    assert "ray._private.node.Node(" in inspect.getsource(ray._private.worker.init)


def test_the_dashboard_test_is_rays_and_decides_the_agents_mode() -> None:
    assert parameters(ray._private.utils.get_dashboard_dependency_error) == []
    start_raylet = inspect.getsource(ray._private.services.start_raylet)
    assert "ray._private.utils.get_dashboard_dependency_error()" in start_raylet


def test_the_loopback_constant_is_rays_and_read_when_an_address_is_chosen() -> None:
    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
    node_ip = inspect.getsource(ray._private.services.get_node_ip_address)
    assert "ray_constants.ENABLE_RAY_CLUSTER" in node_ip


@pytest.mark.ray
def test_a_lean_local_ray_runs_without_the_left_out_services_and_on_loopback_only() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LEAN_RAY],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in LOCAL_ENV},  # itm's defaults
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    processes = json.loads(result.stdout.splitlines()[-1])
    commands = [" ".join(process["cmdline"]) for process in processes]
    for service, script in LEFT_OUT.items():
        assert not [c for c in commands if script in c], f"a {service} runs"
    # The raylet starts the dashboard agent with the command it was given: minimal.
    (raylet,) = [p["cmdline"] for p in processes if p["cmdline"][0].endswith("/raylet")]
    (agent,) = [arg for arg in raylet if arg.startswith("--dashboard_agent_command=")]
    assert "ray/dashboard/agent.py" in agent and "--minimal" in agent.split(), agent
    assert any("DashboardAgent" in c for c in commands), commands
    listening = [(ip, port) for p in processes for ip, port in p["listening"]]
    assert len(listening) >= 3, processes  # at least the GCS, the raylet and the driver
    for ip, port in listening:
        address = ipaddress.ip_address(ip)
        address = getattr(address, "ipv4_mapped", None) or address
        assert str(address) == "127.0.0.1", f"a Ray process listens on {ip}:{port}"
