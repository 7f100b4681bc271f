"""What the per-host limit costs: the same job with ``--per-host 8`` and unlimited.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_politeness [--lines 2000]
        [--only 4-hosts 1000-hosts]

Two lists, each answer ``--latency`` (100 ms) after its request:

- ``4-hosts``: the lines spread over 4 host names of one loopback server
  (``tests/support/host_servers.py``); every other line redirects to the next host,
  so half the lines hold two hosts' slots one after the other. The limit binds:
  8 downloads in flight per host instead of 16-24;
- ``1000-hosts``: the lines spread over 1,000 loopback addresses of one server
  (``tests/support/many_hosts.py``), two lines a host: the limit never binds, so
  the difference is the mechanism's own cost.

Each job is ``python -m itm.run --no-serve`` as its own process (``--concurrency
64``, the default), measured from outside as ``benchmarks.bench_pipeline`` does.
Reported: wall and job time of each, their ratio, the highest number of requests
in flight per host (4 hosts), and the slot actor's cost (calls, calls per line,
CPU seconds of its process, its share of the job's CPU, Ray worker processes
started).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.bench_pipeline import Result, run
from itm.embedded import EmbeddedMongo
from itm.store import connect
from tests.support.host_servers import HostServer, spread_lines
from tests.support.many_hosts import ManyHosts

ACTOR_LINE = re.compile(
    r"itm: --per-host \d+: (\d+) slots granted, (\d+) waits timed out.*"
    r"slot actor (\d+) calls, ([\d.]+) s CPU"
)


@contextmanager
def workload(name: str, lines: int, latency: float) -> Iterator[tuple[list[str], dict]]:
    """The list's lines, and the most requests in flight per host (filled as it runs)."""
    if name == "4-hosts":
        with HostServer(latency=latency) as server:
            yield spread_lines(server, lines), server.peak
    else:
        with ManyHosts(1000, latency=latency) as many:
            urls = many.urls()
            yield [urls[n % len(urls)] for n in range(lines)], {}


def job(name: str, per_host: int, args: argparse.Namespace, uri: str, tmp: Path) -> Result:
    with workload(name, args.lines, args.latency) as (lines, peak):
        urls = tmp / "urls.txt"
        urls.write_text("\n".join(lines) + "\n")
        result = run(
            "itm",
            urls,
            uri,
            connect(uri)[f"bench_{name.replace('-', '_')}_{per_host}"],
            ("--per-host", str(per_host)),
        )
    print(f"--per-host {per_host}: " + result.row().strip(), flush=True)
    if peak:
        print(f"  most requests in flight per host: {dict(peak)}", flush=True)
    for _, line in result.measure.stdout:
        if match := ACTOR_LINE.search(line):
            slots, timed_out, calls, cpu = match.groups()
            share = float(cpu) / result.measure.cpu_total
            print(
                f"  slot actor: {calls} calls ({int(calls) / result.lines:.3f} per "
                f"line) for {slots} slots, {timed_out} waits timed out; "
                f"{cpu} s CPU in its process = {float(cpu) * 1000 / result.lines:.3f}"
                f" ms per line, {share:.1%} of the job's CPU",
                flush=True,
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--per-host", type=int, default=8)
    parser.add_argument("--only", nargs="+", default=["4-hosts", "1000-hosts"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp) / "mongo") as uri:
        for name in args.only:
            print(f"\n{name}: {args.lines} lines, {args.latency * 1000:g} ms a response")
            free = job(name, 0, args, uri, Path(tmp))
            limited = job(name, args.per_host, args, uri, Path(tmp))
            wall = limited.measure.wall / free.measure.wall
            cpu = limited.measure.cpu_total / free.measure.cpu_total
            print(
                f"{name}: --per-host {args.per_host} / unlimited: wall {wall:.2f}x, job "
                f"{limited.job / free.job:.2f}x, CPU {cpu:.2f}x; Ray worker processes "
                f"{limited.measure.workers} vs {free.measure.workers}",
                flush=True,
            )


if __name__ == "__main__":
    main()
