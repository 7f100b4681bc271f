"""The API on each Ray Serve request path and on plain uvicorn, in one run.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_api [--scale 0.5]

Starts its own SecantusDB, fills it like the API tests do, then serves the same
app on plain uvicorn and on a local Ray Serve for each request path, one server
at a time, each in its own process (Serve reads its switches from the
environment its processes start with):

- ``proxy``: Serve's defaults (proxy actor -> replica), itm's ``--no-direct-ingress``;
- ``trimmed``: the proxy path with ``itm.api.serving.SERVE_ENV`` (no thread hops,
  buffered request logs);
- ``direct``: ``itm.api.serving.serve_env`` with direct ingress, itm's default: the
  replica's own uvicorn owns the port;
- ``throughput`` (only with ``--paths``): ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``,
  Serve's own bundle (direct ingress, gRPC between Serve's actors, GC frozen).

For each endpoint it sends a bounded number of requests from 1, 16 and 64
client threads (keep-alive connections) and prints the throughput, the p50/p99
latency, the CPU per request (of the process owning the port: uvicorn or the
replica; and of the rest of the server's process tree) and the ratios to
uvicorn. ``GET /openapi.json`` (cached by FastAPI: no MongoDB) is the null
request: the price of the server path alone. Each response's ``Server-Timing``
says how long the app itself took; the rest ("path") is the server around it.
Last, the seconds each server took to stop after SIGTERM. A ``503`` (a bound of the
server under the load) is counted and told, not timed; any other failure stops the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from itm.api.serving import SERVE_ENV, serve_env
from itm.config import Settings, free_port
from itm.embedded import EmbeddedMongo
from itm.store import connect
from tests.support.apidata import ApiData, fill

DB = "bench"
CLIENTS = (1, 16, 64)
PATHS = ("proxy", "trimmed", "direct")
ALL_PATHS = (*PATHS, "throughput")
CHOSEN = "direct"


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    requests: int  # per client count: bounded, and at least a few per client


@dataclass(frozen=True)
class Result:
    server: str
    endpoint: str
    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    app_p50_ms: float  # the app's own time, from Server-Timing
    server_cpu_ms: float  # CPU per request of the process that owns the port (uvicorn, replica)
    rest_cpu_ms: float  # CPU per request of the other processes of its tree (Ray's, the proxy)

    @property
    def path_ms(self) -> float:
        """The median time spent outside the app: network, server, proxy, hop."""
        return self.p50_ms - self.app_p50_ms

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def endpoints(data: ApiData, scale: float) -> list[Endpoint]:
    small = next(md5 for md5 in data.newest_first if md5 != data.gridfs_md5)
    return [
        Endpoint("null (/openapi.json)", "/openapi.json", int(800 * scale)),
        Endpoint(
            f"/image ({len(data.pngs[small]) // 1024} KiB, document)",
            f"/image/{small}",
            int(800 * scale),
        ),
        Endpoint(
            f"/image ({len(data.pngs[data.gridfs_md5]) // 1024} KiB, GridFS)",
            f"/image/{data.gridfs_md5}",
            int(300 * scale),
        ),
        Endpoint("/monitoring?format=json", "/monitoring?format=json", int(600 * scale)),
        Endpoint("/ (dashboard)", "/", int(400 * scale)),
    ]


def load(
    base: str, path: str, clients: int, requests: int
) -> tuple[float, list[float], list[float]]:
    """Wall time, latencies and app times of ``requests`` GETs shared by ``clients`` threads."""
    requests = max(requests, 4 * clients)
    latencies: list[float] = []
    app_times: list[float] = []
    lock = threading.Lock()
    sent = [0]
    start: list[float] = []
    # The clock starts as the barrier opens, before any client can send a timed request.
    ready = threading.Barrier(clients + 1, action=lambda: start.append(time.perf_counter()))
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            http.get(path)  # opens the connection, warms the server path
            ready.wait()
            while True:
                with lock:
                    if sent[0] == requests:
                        return
                    sent[0] += 1
                started = time.perf_counter()
                response = http.get(path)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    errors.append(f"{path}: {response.status_code} {response.text[:120]}")
                    continue
                app_ms = float(response.headers["server-timing"].removeprefix("app;dur="))
                with lock:
                    latencies.append(elapsed)
                    app_times.append(app_ms / 1000)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start[0]
    failed = [error for error in errors if " 503 " not in error]
    if failed:
        raise RuntimeError(f"{len(failed)} failed requests, e.g. {failed[0]}")
    if errors:  # a bound of the server under a load: told, left out of the latencies
        print(f"  {len(errors)} requests refused, e.g. {errors[0]}", flush=True)
    return wall, latencies, app_times


def cpu_seconds(root: psutil.Process, port: int) -> tuple[float, float]:
    """CPU seconds so far of the process listening on ``port``, and of the rest of the tree
    under ``root`` (the server's own process included)."""
    owner = next(
        c.pid
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )
    server = rest = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        if process.pid == owner:
            server += times.user + times.system
        else:
            rest += times.user + times.system
    return server, rest


def measure(server: str, base: str, root: psutil.Process, targets: list[Endpoint]) -> list[Result]:
    results = []
    port = int(base.rsplit(":", 1)[1])
    for endpoint in targets:
        for clients in CLIENTS:
            cpu_before = cpu_seconds(root, port)
            wall, latencies, app_times = load(base, endpoint.path, clients, endpoint.requests)
            cpu_after = cpu_seconds(root, port)
            server_cpu, rest_cpu = (
                (after - before) / len(latencies) * 1e3
                for before, after in zip(cpu_before, cpu_after, strict=True)
            )
            cuts = statistics.quantiles(latencies, n=100, method="inclusive")
            result = Result(
                server,
                endpoint.name,
                clients,
                len(latencies),
                wall,
                cuts[49] * 1e3,
                cuts[98] * 1e3,
                statistics.median(app_times) * 1e3,
                server_cpu,
                rest_cpu,
            )
            print(
                f"  {server:10} {endpoint.name:26} {clients:>2} clients  "
                f"{result.per_second:7.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
                f"p99 {result.p99_ms:7.2f} ms  app p50 {result.app_p50_ms:6.2f} ms  "
                f"CPU/request {server_cpu:5.2f} + {rest_cpu:5.2f} ms",
                flush=True,
            )
            results.append(result)
    return results


def wait_until_up(base: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base} did not come up")
        time.sleep(0.2)


def path_env(path: str, port: int) -> dict[str, str]:
    """The environment a Serve host process starts with, for one request path."""
    settings = Settings(port=port, direct_ingress=path in ("direct", "throughput"))
    if path == "proxy":
        return {}
    if path == "trimmed":
        return dict(SERVE_ENV)
    env = serve_env(settings)
    if path == "throughput":
        env = {k: v for k, v in env.items() if k not in SERVE_ENV}
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    return env


@contextmanager
def server_process(
    server: str, uri: str, db: str = DB, **settings: str
) -> Iterator[tuple[str, psutil.Process, list[float]]]:
    """The app in its own process (``ITM_<SETTING>`` from ``settings``); yields its base
    URL and, after the block, the stop time."""
    port = free_port()
    env = {**os.environ, "ITM_MONGO_URI": uri, "ITM_DB": db, "PYTHONPATH": os.getcwd()}
    # The request path is measured here, not the bounds (bench_api_load loads those): a
    # turn at reading and a place in the replica for every client, so that none is refused.
    for bound in ("ITM_API_MAX_READS", "ITM_API_MAX_ONGOING", "ITM_API_MAX_QUEUED"):
        env[bound] = str(max(CLIENTS))
    env |= {f"ITM_{name.upper()}": value for name, value in settings.items()}
    if server == "uvicorn":
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "itm.api:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    else:
        env.update(path_env(server, port))
        command = [sys.executable, "-m", "benchmarks.bench_api", "--host-on", str(port)]
    process = subprocess.Popen(command, env=env)
    stopped: list[float] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base)
        yield base, psutil.Process(process.pid), stopped
    finally:
        started = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stopped.append(time.perf_counter() - started)


def host(port: int) -> None:
    """A Serve host process: a local Ray, the API on 127.0.0.1:``port``, until SIGTERM."""
    import ray
    from ray import serve

    from itm.api.serving import serve_api
    from itm.job.ray_runtime import init_ray

    settings = dataclasses.replace(Settings.from_env(), port=port)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    init_ray(None, dashboard=False, num_cpus=2)
    try:
        serve_api(settings)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


def report(results: list[Result], servers: list[str]) -> None:
    by_key = {(r.server, r.endpoint, r.clients): r for r in results}
    print("\nRatios to uvicorn: req/s, and the p50 difference (in the app / on the path around it)")
    for result in results:
        if result.server == "uvicorn":
            continue
        base = by_key[("uvicorn", result.endpoint, result.clients)]
        print(
            f"  {result.server:10} {result.endpoint:26} {result.clients:>2} clients  "
            f"req/s x{result.per_second / base.per_second:5.2f}  "
            f"p50 {result.p50_ms - base.p50_ms:+7.2f} ms "
            f"(app {result.app_p50_ms - base.app_p50_ms:+6.2f}, "
            f"path {result.path_ms - base.path_ms:+6.2f})  "
            f"CPU/request {result.server_cpu_ms:5.2f} + {result.rest_cpu_ms:5.2f} ms "
            f"(uvicorn {base.server_cpu_ms:5.2f})"
        )
    if CHOSEN not in servers:
        return
    print(f"\nTargets of the chosen path ({CHOSEN}):")
    small = next(r.endpoint for r in results if r.endpoint.endswith("document)"))
    chosen, base = by_key[(CHOSEN, small, 1)], by_key[("uvicorn", small, 1)]
    print(
        f"  /image small, 1 client: p50 uvicorn + {chosen.p50_ms - base.p50_ms:.2f} ms "
        f"(target <= 1.5 ms)"
    )
    for result in results:
        if result.server == CHOSEN and result.clients == 16:
            base = by_key[("uvicorn", result.endpoint, 16)]
            print(
                f"  {result.endpoint:26} 16 clients: req/s "
                f"x{result.per_second / base.per_second:.2f} uvicorn (target >= 0.7)"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every request count (default 1.0)"
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=ALL_PATHS,
        default=list(PATHS),
        help=f"Serve request paths to measure (default: {' '.join(PATHS)})",
    )
    parser.add_argument("--host-on", type=int, help=argparse.SUPPRESS)  # a Serve host process
    args = parser.parse_args(argv)
    if args.host_on:
        host(args.host_on)
        return
    servers = ["uvicorn", *args.paths]
    stop_times = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as uri:
        client = connect(uri)
        data = fill(client[DB])
        client.close()
        targets = endpoints(data, args.scale)
        print(
            f"{os.cpu_count()} CPUs; SecantusDB at {uri}; requests per row: "
            + ", ".join(f"{e.name}: {e.requests}" for e in targets),
            flush=True,
        )
        results: list[Result] = []
        for server in servers:
            with server_process(server, uri) as (base, root, stopped):
                print(f"{server} at {base}; load average {os.getloadavg()[0]:.1f}", flush=True)
                results += measure(server, base, root, targets)
            stop_times[server] = stopped[0]
    report(results, servers)
    print(
        "\nSeconds from SIGTERM to exit: "
        + ", ".join(f"{server} {seconds:.1f}" for server, seconds in stop_times.items())
    )


if __name__ == "__main__":
    main()
