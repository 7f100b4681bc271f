"""A bounded load on ``python -m itm.run``'s API, then the same with MongoDB away for 5 s.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_api_load [--requests 5000]
        [--bounds ONGOING:QUEUED[:READS] ...] [--no-outage] [--no-retry-after]

Starts its own SecantusDB with a generated database (20,000 images, 200,000
events, 60 minutes of counters), runs ``python -m itm.run`` on it (a one-line
job, then the API on 127.0.0.1, itm's default request path), and sends
``--requests`` requests from 64 client threads: 60% ``/image``, 15% ``/images``,
10% ``/monitoring?format=json``, 10% ``/``, 5% ``/monitoring`` PNG for a window
ending at another minute each time; after a 503 a client waits its ``Retry-After``
(``--no-retry-after``: it does not). Then the same again while MongoDB is stopped
for 5 s in the middle. For each: statuses, p50/p99, the slowest 503 and who refused
each (Serve's full queue, no turn to read MongoDB, the charts busy, a read past its
time limit, MongoDB unavailable), and whether any request hung (no answer within
30 s) or any 5xx other than 503 came back.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import httpx

from benchmarks.bench_api_scale import START, generate
from itm.config import Settings, free_port
from itm.embedded import EmbeddedMongo
from itm.store import connect
from tests.support.jobs import as_in_a_terminal

DB = "bench"
CLIENTS = 64
HUNG_S = 30.0
DEFAULTS = Settings()


@dataclass(frozen=True)
class Outcome:
    route: str
    status: int  # 0: no answer within HUNG_S
    seconds: float
    at: float  # when it finished, from the start of the load
    why: str = ""  # of a 503: who refused (see refusal)


# What a 503's body says -> who refused it.
REFUSALS = {
    "backpressure": "Serve's queue full",
    "reading MongoDB": "no turn to read",
    "chart drawings": "charts busy",
    "took longer": "read time limit",
    "unavailable": "MongoDB unavailable",
}


def refusal(body: str) -> str:
    return next((why for text, why in REFUSALS.items() if text in body), "other")


def paths(md5s: list[str], n: int, seed: int = 1) -> list[tuple[str, str]]:
    """(route, path) of the n requests, in order, mixed as a dashboard's users would."""
    rng = random.Random(seed)
    mixed = []
    for _ in range(n):
        draw = rng.random()
        if draw < 0.60:
            mixed.append(("/image", f"/image/{rng.choice(md5s)}"))
        elif draw < 0.75:
            mixed.append(("/images", f"/images?limit={rng.randint(1, 48)}"))
        elif draw < 0.85:
            mixed.append(("/monitoring json", "/monitoring?format=json"))
        elif draw < 0.95:
            mixed.append(("/", "/"))
        else:
            until = START + timedelta(minutes=rng.randint(1, 60))
            mixed.append(("/monitoring png", f"/monitoring?until={until:%Y-%m-%dT%H:%M}Z"))
    return mixed


def load(base: str, requests: list[tuple[str, str]], patient: bool) -> list[Outcome]:
    """The requests from ``CLIENTS`` threads; a ``patient`` client waits a 503's
    ``Retry-After`` before its next request, as an HTTP client should."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    queue = iter(requests)
    start = time.perf_counter()

    def client() -> None:
        with httpx.Client(base_url=base, timeout=HUNG_S) as http:
            while True:
                with lock:
                    item = next(queue, None)
                if item is None:
                    return
                route, path = item
                started = time.perf_counter()
                why = ""
                pause = 0.0
                try:
                    response = http.get(path)
                    status = response.status_code
                    if status == 503:
                        why = refusal(response.text)
                        if patient:
                            pause = float(response.headers.get("retry-after", 0))
                except httpx.TimeoutException:
                    status = 0
                except httpx.TransportError:
                    status = -1  # refused or reset: counted apart, it is not a hang
                done = time.perf_counter()
                with lock:
                    outcomes.append(Outcome(route, status, done - started, done - start, why))
                time.sleep(pause)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def report(title: str, outcomes: list[Outcome], wall: float) -> None:
    latencies = sorted(o.seconds for o in outcomes)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    statuses = Counter(o.status for o in outcomes)
    unavailable = [o.seconds for o in outcomes if o.status == 503]
    bad = sum(n for status, n in statuses.items() if status >= 500 and status != 503)
    accepted = [o.seconds for o in outcomes if o.status != 503]
    ok_cuts = statistics.quantiles(accepted, n=100, method="inclusive") if accepted else cuts
    print(
        f"\n{title}: {len(outcomes)} requests from {CLIENTS} clients in {wall:.1f} s "
        f"({len(outcomes) / wall:.0f} req/s, {len(accepted) / wall:.0f} accepted/s)"
    )
    print(
        f"  statuses {dict(sorted(statuses.items()))}; p50 {cuts[49] * 1e3:.0f} ms, "
        f"p99 {cuts[98] * 1e3:.0f} ms, max {latencies[-1] * 1e3:.0f} ms; "
        f"accepted (not 503) p50 {ok_cuts[49] * 1e3:.0f} ms, p99 {ok_cuts[98] * 1e3:.0f} ms; "
        f"503 rate {len(unavailable) / len(outcomes):.1%}"
    )
    if unavailable:
        print(
            f"  503: {len(unavailable)}, slowest {max(unavailable) * 1e3:.0f} ms, "
            f"p50 {statistics.median(unavailable) * 1e3:.0f} ms, "
            f"{sum(s < 0.1 for s in unavailable)} under 100 ms"
        )
        for why in sorted({o.why for o in outcomes if o.status == 503}):
            mine = sorted(o.seconds for o in outcomes if o.status == 503 and o.why == why)
            print(
                f"    {why:20} {len(mine):5}, p50 {statistics.median(mine) * 1e3:5.0f} ms, "
                f"slowest {mine[-1] * 1e3:5.0f} ms"
            )
    print(
        f"  5xx other than 503: {bad}; hung (no answer in {HUNG_S:.0f} s): {statuses[0]}; "
        f"connection refused/reset: {statuses[-1]}"
    )
    for route in sorted({o.route for o in outcomes}):
        mine = sorted(o.seconds for o in outcomes if o.route == route)
        ok = sum(o.status == 200 for o in outcomes if o.route == route)
        print(
            f"    {route:17} {len(mine):5} requests, {ok:5} ok, "
            f"p50 {statistics.median(mine) * 1e3:6.0f} ms, "
            f"p99 {mine[min(len(mine) - 1, int(len(mine) * 0.99))] * 1e3:6.0f} ms"
        )


@contextmanager
def itm_api(uri: str, tmp: Path, bound: Bounds) -> Iterator[str]:
    """``python -m itm.run`` on a one-line input against ``uri``, serving on 127.0.0.1 with
    ``bound.ongoing`` requests at once per replica, ``bound.queued`` more in its queue and
    ``bound.reads`` of them reading MongoDB at once."""
    urls = tmp / "urls.txt"
    urls.write_text("not a url\n")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.getcwd(),
        "ITM_ALLOW_PRIVATE_ADDRESSES": "1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "ITM_API_MAX_ONGOING": str(bound.ongoing),
        "ITM_API_MAX_QUEUED": str(bound.queued),
        "ITM_API_MAX_READS": str(bound.reads),
    }
    itm = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "itm.run",
            "--urls",
            str(urls),
            "--mongo-uri",
            uri,
            "--db",
            DB,
            "--port",
            str(port),
            "--no-dashboard",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=as_in_a_terminal,  # its Ctrl-C (below) stops it, however this bench was started
    )
    try:
        output = []
        while "Ctrl-C to stop." not in (line := itm.stdout.readline()):
            output.append(line)
            if itm.poll() is not None:
                raise RuntimeError("itm.run exited:\n" + "".join(output) + itm.stdout.read())
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(itm.pid, signal.SIGINT)
        itm.communicate(timeout=120)


class Bounds(NamedTuple):
    ongoing: int
    queued: int
    reads: int

    def __str__(self) -> str:
        return f"{self.ongoing}:{self.queued}:{self.reads}"


def bounds(text: str) -> Bounds:
    """``ONGOING:QUEUED[:READS]``; the reads default to itm's."""
    ongoing, queued, *reads = (int(part) for part in text.split(":"))
    return Bounds(ongoing, queued, *(reads or [Settings().api_max_reads]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument(
        "--bounds",
        type=bounds,
        nargs="+",
        default=[bounds(f"{DEFAULTS.api_max_ongoing}:{DEFAULTS.api_max_queued}")],
        metavar="ONGOING:QUEUED[:READS]",
        help="the replica's max_ongoing_requests:max_queued_requests[:--api-max-reads] to "
        "load, each in its own itm.run; the outage runs against the first (default: itm's)",
    )
    parser.add_argument(
        "--outage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then the same load with MongoDB stopped for 5 s in the middle",
    )
    parser.add_argument(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a client waits a 503's Retry-After before its next request; --no-retry-after: "
        "it sends the next at once (a storm of retries)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mongo = EmbeddedMongo(Path(tmp))
        with mongo as uri:
            client = connect(uri)
            md5s = generate(client[DB], 200_000, 20_000)
            client.close()
            for index, bound in enumerate(args.bounds):
                with itm_api(uri, Path(tmp), bound) as base:
                    print(
                        f"itm's API at {base}, max_ongoing_requests {bound.ongoing}, "
                        f"max_queued_requests {bound.queued}, --api-max-reads {bound.reads}; "
                        f"load average {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
                    # warm up: connections, code paths
                    load(base, paths(md5s, 200, seed=0), args.retry_after)
                    started = time.perf_counter()
                    outcomes = load(base, paths(md5s, args.requests), args.retry_after)
                    report(f"steady, {bound}", outcomes, time.perf_counter() - started)
                    if index == 0 and args.outage:
                        outage(base, mongo, md5s, args.requests, args.retry_after)


def outage(base: str, mongo: EmbeddedMongo, md5s: list[str], requests: int, patient: bool) -> None:
    """The same load while MongoDB is stopped from t=5 s to t=10 s."""

    def stop_and_start() -> None:
        time.sleep(5)
        mongo.stop()
        print("  MongoDB stopped", flush=True)
        time.sleep(5)
        mongo.start()
        print("  MongoDB back", flush=True)

    fault = threading.Thread(target=stop_and_start)
    started = time.perf_counter()
    fault.start()
    outcomes = load(base, paths(md5s, requests, seed=2), patient)
    fault.join()
    wall = time.perf_counter() - started
    report("MongoDB stopped for 5 s from t=5 s", outcomes, wall)
    last = max((o.at for o in outcomes if o.status != 200), default=0.0)
    tail = [o for o in outcomes if o.at > last]
    print(f"  last non-200 at t={last:.1f} s; after it {len(tail)} requests, all 200")


if __name__ == "__main__":
    main()
