"""The API through Ray Serve and through plain uvicorn, in one run.

    python -m benchmarks.bench_api

Starts its own SecantusDB, fills it like the API tests do, then serves the same
app twice: as a uvicorn process, then on a local Ray Serve (proxy actor ->
replica actor). For each endpoint it sends a bounded number of requests from 1
and from 16 client threads (keep-alive connections) and prints the throughput,
the p50/p99 latency and the Serve/uvicorn ratios. ``GET /openapi.json`` (cached
by FastAPI: no MongoDB, no drawing) is the null request: its latency is the
price of the server path alone. Each response's ``Server-Timing`` says how long
the app itself took; the rest of the latency ("path") is the server around it:
under Serve, the proxy and the proxy -> replica hop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from itm.config import Settings
from itm.embedded import EmbeddedMongo, free_port
from itm.store import connect
from tests.apidata import START, ApiData, fill

DB = "bench"
CLIENTS = (1, 16)


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: Callable[[int], str]  # the path of the n-th request
    requests: dict[int, int]  # clients -> requests sent (bounded: a drawing costs ~0.1 s)


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

    @property
    def path_ms(self) -> float:
        """The median time spent outside the app: network, server, proxy, hop."""
        return self.p50_ms - self.app_p50_ms

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def endpoints(data: ApiData, scale: float) -> list[Endpoint]:
    def counts(one: int, many: int) -> dict[int, int]:
        return {1: max(5, int(one * scale)), 16: max(16, int(many * scale))}

    def fixed(path: str) -> Callable[[int], str]:
        return lambda n: path

    def new_window(n: int) -> str:
        """A window one minute longer each time: other buckets, so a new drawing."""
        until = START + timedelta(minutes=n)
        return f"/monitoring?since={START:%Y-%m-%dT%H:%M}Z&until={until:%Y-%m-%dT%H:%M}Z"

    small = next(md5 for md5 in data.newest_first if md5 != data.gridfs_md5)
    return [
        Endpoint("null (/openapi.json)", fixed("/openapi.json"), counts(400, 1600)),
        Endpoint(f"/image ({len(data.pngs[small]) // 1024} KiB, document)",
                 fixed(f"/image/{small}"), counts(400, 1600)),
        Endpoint(f"/image ({len(data.pngs[data.gridfs_md5]) // 1024} KiB, GridFS)",
                 fixed(f"/image/{data.gridfs_md5}"), counts(100, 400)),
        Endpoint("/monitoring?format=json", fixed("/monitoring?format=json"), counts(300, 1200)),
        Endpoint("/monitoring (PNG, cached)", fixed("/monitoring"), counts(300, 1200)),
        Endpoint("/monitoring (PNG, drawn)", new_window, counts(40, 160)),
    ]


def load(
    base: str, path: Callable[[int], str], clients: int, requests: int
) -> tuple[float, list[float], list[float]]:
    """Wall time, latencies and app times of ``requests`` GETs shared by ``clients`` threads."""
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
            http.get(path(0))  # opens the connection, warms the server path
            ready.wait()
            while True:
                with lock:
                    if sent[0] == requests:
                        return
                    sent[0] += 1
                    url = path(sent[0])
                started = time.perf_counter()
                response = http.get(url)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    errors.append(f"{path}: {response.status_code}")
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
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return wall, latencies, app_times


def measure(server: str, base: str, targets: list[Endpoint]) -> list[Result]:
    results = []
    for endpoint in targets:
        for clients in CLIENTS:
            n = endpoint.requests[clients]
            wall, latencies, app_times = load(base, endpoint.path, clients, n)
            cuts = statistics.quantiles(latencies, n=100, method="inclusive")
            result = Result(server, endpoint.name, clients, n, wall, cuts[49] * 1e3,
                            cuts[98] * 1e3, statistics.median(app_times) * 1e3)
            print(f"  {server:8} {endpoint.name:32} {clients:>2} clients  "
                  f"{result.per_second:8.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
                  f"p99 {result.p99_ms:7.2f} ms  app p50 {result.app_p50_ms:7.2f} ms",
                  flush=True)
            results.append(result)
    return results


def wait_until_up(base: str, timeout: float = 60.0) -> None:
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


@contextmanager
def uvicorn_server(uri: str) -> Iterator[str]:
    """The app under plain uvicorn, in its own process like Serve's actors."""
    port = free_port()
    env = {**os.environ, "ITM_MONGO_URI": uri, "ITM_DB": DB}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "itm.api:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base)
        yield base
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def serve_server(uri: str) -> Iterator[str]:
    """The app on a local Ray Serve: one proxy actor, one replica, defaults otherwise."""
    import ray
    from ray import serve

    from itm.ray_runtime import init_ray
    from itm.serving import serve_api

    settings = Settings(mongo_uri=uri, db=DB, host="127.0.0.1", port=free_port())
    init_ray(None, dashboard=False, num_cpus=2)
    try:
        serve_api(settings)
        base = f"http://127.0.0.1:{settings.port}"
        wait_until_up(base)
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()


def report(results: list[Result]) -> None:
    by_key = {(r.server, r.endpoint, r.clients): r for r in results}
    print("\nServe / uvicorn: throughput and p50 ratios; where the p50 difference goes "
          "(in the app, and on the path around it)")
    for result in results:
        if result.server != "serve":
            continue
        base = by_key[("uvicorn", result.endpoint, result.clients)]
        print(f"  {result.endpoint:32} {result.clients:>2} clients  "
              f"throughput x{result.per_second / base.per_second:5.2f}  "
              f"p50 x{result.p50_ms / base.p50_ms:5.2f} ({result.p50_ms - base.p50_ms:+7.2f} ms: "
              f"app {result.app_p50_ms - base.app_p50_ms:+7.2f}, "
              f"path {result.path_ms - base.path_ms:+7.2f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every request count (default 1.0)")
    args = parser.parse_args(argv)
    servers: list[tuple[str, Callable[[str], AbstractContextManager[str]]]] = [
        ("uvicorn", uvicorn_server), ("serve", serve_server),
    ]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as uri:
        client = connect(uri)
        data = fill(client[DB])
        client.close()
        targets = endpoints(data, args.scale)
        print(f"{os.cpu_count()} CPUs; SecantusDB at {uri}; requests per row: "
              + ", ".join(f"{e.name}: {e.requests[1]}/{e.requests[16]}" for e in targets))
        results = []
        for name, server in servers:
            with server(uri) as base:
                print(f"{name} at {base}", flush=True)
                results += measure(name, base, targets)
    report(results)


if __name__ == "__main__":
    main()
