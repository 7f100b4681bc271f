"""What the per-host limit costs: the same job with ``--per-host 8`` and unlimited.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_politeness [--lines 2000]

2,000 lines spread over 4 host names of one loopback server
(``tests/support/host_servers.py``), each answer 100 ms after its request; every other
line redirects to the next host, so half the lines hold two hosts' tokens one
after the other. Each job is ``python -m itm.run --no-serve`` as its own process
(``--concurrency 64``, the default), measured from outside as
``benchmarks.bench_pipeline`` does. Reported: wall and job time of each, their
ratio, the highest number of requests in flight per host, and the token actor's
cost (calls, calls per line, CPU seconds of its process, its share of the job's
CPU, Ray worker processes started).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from benchmarks.bench_pipeline import Result, run
from itm.embedded import EmbeddedMongo
from itm.store import connect
from tests.support.host_servers import HostServer, spread_lines

ACTOR_LINE = re.compile(
    r"itm: --per-host \d+: (\d+) slots granted, (\d+) waits timed out.*"
    r"slot actor (\d+) calls, ([\d.]+) s CPU"
)


def job(per_host: int, lines: int, latency: float, uri: str, tmp: Path) -> tuple[Result, dict]:
    with HostServer(latency=latency) as server:
        urls = tmp / "urls.txt"
        urls.write_text("\n".join(spread_lines(server, lines)) + "\n")
        result = run(
            "itm",
            urls,
            uri,
            connect(uri)[f"bench_per_host_{per_host}"],
            ("--per-host", str(per_host)),
        )
    return result, dict(server.peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--per-host", type=int, default=8)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp) / "mongo") as uri:
        for per_host in (0, args.per_host):
            result, peak = job(per_host, args.lines, args.latency, uri, Path(tmp))
            results[per_host] = result
            print(f"--per-host {per_host}: " + result.row().strip(), flush=True)
            print(f"  most requests in flight per host: {peak}", flush=True)
            for _, line in result.measure.stdout:
                if match := ACTOR_LINE.search(line):
                    tokens, timed_out, calls, cpu = match.groups()
                    share = float(cpu) / result.measure.cpu_total
                    print(
                        f"  slot actor: {calls} calls ({int(calls) / result.lines:.2f} per "
                        f"line) for {tokens} slots, {timed_out} waits timed out; "
                        f"{cpu} s CPU in its process = {float(cpu) * 1000 / result.lines:.2f}"
                        f" ms per line, {share:.1%} of the job's CPU",
                        flush=True,
                    )
    limited, free = results[args.per_host], results[0]
    wall = limited.measure.wall / free.measure.wall
    cpu = limited.measure.cpu_total / free.measure.cpu_total
    print(
        f"\n--per-host {args.per_host} / unlimited: wall {wall:.2f}x, job "
        f"{limited.job / free.job:.2f}x, CPU {cpu:.2f}x; Ray worker processes "
        f"{limited.measure.workers} vs {free.measure.workers}"
    )


if __name__ == "__main__":
    main()
