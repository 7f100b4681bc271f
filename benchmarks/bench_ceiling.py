"""Ceilings of the cluster-wide stages: what one writer, the slot actor and the driver
spend per line, hence how many lines/s a cluster of any size can push through them.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_ceiling [--only writers slots driver]

No network and no image work, on a local Ray (``init_ray(None, dashboard=False)``) and
one SecantusDB; each stage runs at saturation, and the CPU seconds of every process
are read with psutil before and after it (worker processes are started beforehand,
so their start is not counted; the Ray workers started during a stage are listed).

- ``writers``, K = 1, 2, 4: prepared groups of 32 lines: 85% grayscale PNGs of real
  photographs (0.3-2 MP, ``grayscale_png`` of tests/support/photo_server.py's photos,
  prepared once), one line in 20 of them a duplicate image, 15% errors with realistic
  details; each group's grayscale list is put in the object store once, as
  ``gray_group`` returns it, and its lines are routed by ``shard_of`` to the K writers,
  with 4 calls in flight per writer. Ceiling: K / (writer CPU per line).
- ``slots``: the per-host limit (``--per-host 8``) alone: 3 download processes of 48
  threads each take a slot, hold it 0-2 ms (no network), give it back with a 200, on
  4 hosts (skewed), 1,000, or 100,000 (nearly a grant per line); the new design
  (``LocalGate`` + ``HostSlotActor``), and the old one (one ``HostTokenActor`` call
  per host change, commit 9aa2465, loaded from git). Ceiling: 1 / (actor CPU per line).
- ``driver``: the real ``run_pipeline`` over lines that fail at once (a private
  address: ``blocked_address``), one writer, ``--per-host 0`` at ``--batch-size`` 32
  and 128, and ``--per-host 8`` (1,000 hosts).
  Ceiling: 1 / (driver CPU per line).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import ray

from itm.config import Settings
from itm.embedded import EmbeddedMongo
from itm.embedded.datadir import Files, State
from itm.job.host_gate import HostSlotActor, LocalGate, start_host_slots
from itm.job.imaging import GrayImage, grayscale_png
from itm.job.pipeline import run_pipeline, shard_of
from itm.job.ray_runtime import init_ray
from itm.job.writer import start_writers
from itm.outcomes import Failure
from tests.support.photo_server import photo_files, photo_jpeg

ROOT = Path(__file__).resolve().parent.parent
OLD = "9aa2465"  # the last commit with one token actor call per host change
GROUP = 32
SIZES = ((640, 480), (800, 600), (1080, 1080), (1280, 960), (1600, 1200))  # 0.3-1.9 MP
FAILURES = (
    Failure("http_404", "HTTP 404 Not Found"),
    Failure("timeout", "no data for 10 s"),
    Failure("connection_error", "[Errno 104] Connection reset by peer"),
    Failure("http_403", "HTTP 403 Forbidden"),
    Failure("too_large", "Content-Length 73,400,320 is over 50,000,000 bytes"),
    Failure("not_an_image", "not a raster image Pillow can read: cannot identify image file"),
)
CDNS = ("images.cdn-photos.example.com", "upload.media-archive.example.org", "i.shop.example.net")
ROWS: list[tuple[str, str, float, float, float, float, str]] = []
BREAKDOWN: list[str] = []


# -- CPU of processes ---------------------------------------------------------------------


def _kind(proc: psutil.Process, labels: dict[int, str], db: set[int]) -> str:
    if proc.pid == os.getpid():
        return "driver"
    if proc.pid in labels:
        return labels[proc.pid]
    if proc.pid in db:
        return "MongoDB"
    title = " ".join(proc.cmdline()[:3])
    if title.startswith("ray::") or "default_worker.py" in title:
        return "Ray workers (tasks, idle)"
    return "Ray services" if "raylet" in title or "gcs_server" in title else "other"


def cpu_now(labels: dict[int, str], db_pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and its descendants (Ray's, SecantusDB's)."""
    root = psutil.Process()
    db = {db_pid, *(p.pid for p in psutil.Process(db_pid).children(recursive=True))}
    seen = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            seen[proc.pid] = (_kind(proc, labels, db), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return seen


def spent(
    title: str, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> Counter[str]:
    """CPU seconds per kind of process between two readings; noted in the breakdown."""
    cpu: Counter[str] = Counter()
    for pid, (kind, seconds) in after.items():
        cpu[kind] += seconds - before.get(pid, (kind, 0.0))[1]
    started = sum(1 for pid, (kind, _) in after.items() if pid not in before and "Ray w" in kind)
    parts = ", ".join(f"{kind} {seconds:.2f}" for kind, seconds in sorted(cpu.items()) if seconds)
    BREAKDOWN.append(f"  {title}: CPU s {parts}; Ray workers started {started}")
    return cpu


def pid_of(actor: Any) -> int:
    return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))


def row(
    stage: str, size: str, lines: int, wall: float, cpu: Counter[str], own: list[str], note: str
) -> None:
    """One line of the table. ``own``: the stage's processes, each line goes through one
    of them, all alike: the ceiling is their number over the CPU per line of one."""
    per_line = sum(cpu[kind] for kind in own) / lines * 1000
    db = cpu["MongoDB"] / lines * 1000
    ROWS.append((stage, size, lines / wall, per_line, db, len(own) * 1000 / per_line, note))
    print("  " + table_line(*ROWS[-1]), flush=True)


def table_line(
    stage: str, size: str, rate: float, own: float, db: float, ceiling: float, note: str
) -> str:
    return f"{stage:13s} {size:12s} {rate:8.0f} {own:9.3f} {db:9.3f} {ceiling:10.0f}  {note}"


# -- writers -------------------------------------------------------------------------------


def photo_grays(sizes: list[tuple[int, int]]) -> list[GrayImage]:
    """Grayscale PNGs of real photos at these sizes, made once (outside any measurement)."""
    return [
        grayscale_png(photo_jpeg(index, width, height), 10**8, 1)
        for index in range(len(photo_files()))
        for width, height in sizes
    ]


def url_of(n: int, md5: str, width: int, height: int) -> str:
    return (
        f"https://{CDNS[n % 3]}/photos/2024/{n % 12 + 1:02d}/{md5[:16]}/"
        f"original-{width}x{height}.jpg?auto=format&q=85&sig={md5[16:28]}"
    )


def make_groups(lines: int, grays: list[GrayImage]) -> list[tuple[list, list, list]]:
    """Groups of (lines, md5s, grayscale or failure), as the md5 and gray tasks leave them."""
    md5s: dict[int, str | None] = {}
    items = []
    for n in range(1, lines + 1):
        md5: str | None = hashlib.md5(f"photo {n}".encode()).hexdigest()
        gray: GrayImage | Failure = grays[n % len(grays)]
        if n % 20 in (1, 8, 15):  # 15% errors; undecodable bytes still have an md5
            gray = FAILURES[n % len(FAILURES)]
            md5 = md5 if gray.reason == "not_an_image" else None
        elif n % 20 == 3 and md5s.get(n - 100):  # 5%: an image seen 100 lines earlier
            md5 = md5s[n - 100]
        md5s[n] = md5
        size = (gray.width, gray.height) if isinstance(gray, GrayImage) else (800, 600)
        items.append(((n, url_of(n, md5 or "0" * 32, *size)), md5, gray))
    return [
        tuple(list(part) for part in zip(*items[at : at + GROUP], strict=True))
        for at in range(0, lines, GROUP)
    ]


# One writer's next call: its lines, their md5s, the groups' grayscale refs, positions.
Batch = tuple[list[Any], list[Any], list[Any], list[list[int]]]


def write(writer: Any, batch: Batch) -> Any:
    lines, md5s, refs, positions = batch
    return writer.write.remote("ceiling", lines, md5s, *refs, positions=positions)


def writers_stage(
    uri: str, db_pid: int, lines: int, counts: list[int], sizes: list[tuple[int, int]]
) -> None:
    grays = photo_grays(sizes)
    megabytes = sum(len(g.png) for g in grays) / len(grays) / 1e6
    print(f"writers: {lines} lines per K, PNGs of {megabytes:.2f} MB on average", flush=True)
    groups = make_groups(lines, grays)
    for k in counts:
        writers = start_writers(uri, f"ceiling_writers_{k}", 60.0, k)
        ray.get([w.start_run.remote("ceiling", "bench", False) for w in writers])
        labels = {pid_of(w): f"writer {i}" for i, w in enumerate(writers)}
        refs = [ray.put(group[2]) for group in groups]  # as gray_group would return them
        before, started = cpu_now(labels, db_pid), time.perf_counter()
        in_flight: list[Any] = []
        calls = 0
        # As the driver does: each writer's batch gathers its share of several groups.
        batches: dict[int, Batch] = {}
        for (group_lines, md5s, _), grays_ref in zip(groups, refs, strict=True):
            shares: dict[int, list[int]] = {}
            for at, ((line, _), md5) in enumerate(zip(group_lines, md5s, strict=True)):
                shares.setdefault(shard_of(md5, line, k), []).append(at)
            for shard, at in shares.items():
                batch = batches.setdefault(shard, ([], [], [], []))
                batch[0].extend(group_lines[i] for i in at)
                batch[1].extend(md5s[i] for i in at)
                batch[2].append(grays_ref)
                batch[3].append(at)
                if len(batch[0]) >= GROUP:
                    in_flight.append(write(writers[shard], batches.pop(shard)))
                    calls += 1
            while len(in_flight) >= 4 * k:
                _, in_flight = ray.wait(in_flight, num_returns=1)
        for shard, batch in batches.items():
            in_flight.append(write(writers[shard], batch))
            calls += 1
        ray.get(in_flight)
        wall = time.perf_counter() - started
        cpu = spent(f"writers K={k}", before, cpu_now(labels, db_pid))
        own = sum(cpu[label] for label in labels.values())
        note = f"{lines / calls:.1f} lines/call, {own / calls * 1000:.1f} ms writer CPU/call"
        row("writers", f"K={k}", lines, wall, cpu, list(labels.values()), note)
        for writer in writers:
            ray.kill(writer)
        del refs


# -- the per-host slots --------------------------------------------------------------------


def old_package(tmp: Path) -> None:
    """The token actor of commit ``OLD``, as the package ``itm_old`` (workers import it)."""
    package = tmp / "itm_old"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("host_gate", "politeness"):
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{OLD}:itm/job/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (package / f"{name}.py").write_text(
            text.replace("itm.job.politeness", "itm_old.politeness")
        )
    sys.path.insert(0, str(tmp))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", str(ROOT))])


@ray.remote(num_cpus=0)
class Downloads:
    """One download process: threads that take a host's slot, hold it 0-2 ms, give it back."""

    def __init__(self, threads: int, seconds: float) -> None:
        self.threads, self.seconds = threads, seconds

    def run(self, design: str, actor: Any, hosts: list[str], weights: list[float]) -> int:
        stop, done = time.monotonic() + self.seconds, [0] * self.threads
        cumulative = list(itertools.accumulate(weights))  # a draw is then a bisection
        gate = LocalGate(actor, 8) if design == "new" else None

        def new(at: int) -> None:
            assert gate is not None
            while time.monotonic() < stop:
                host = random.choices(hosts, cum_weights=cumulative)[0]
                if gate.take(host, 30.0):
                    time.sleep(random.uniform(0, 0.002))
                    gate.give_back(host, [200], None)
                done[at] += 1

        def old(at: int) -> None:
            """As ``HostHand`` did at commit ``OLD``: a call per change of host (which
            gives the last one's token back), or past its ``KEEP_TOKEN`` of 1 s."""
            from itm_old.host_gate import HostGate

            hand, ticket = HostGate(actor, 8), random.getrandbits(62)
            held, taken, statuses = None, 0.0, []
            while time.monotonic() < stop:
                host = random.choices(hosts, cum_weights=cumulative)[0]
                if host != held or time.monotonic() - taken >= 1.0:
                    held = host if hand.take(ticket, host, 30.0, statuses, None) else None
                    taken, statuses = time.monotonic(), []
                time.sleep(random.uniform(0, 0.002))
                statuses.append(200)
                done[at] += 1
            hand.give_back(ticket, statuses, None)

        work = new if gate is not None else old
        threads = [threading.Thread(target=work, args=(at,)) for at in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if gate is not None:
            gate.close()
        return sum(done)


def slots_stage(db_pid: int, seconds: float, designs: list[str]) -> None:
    print(f"slots: 3 download processes x 48 threads, {seconds:g} s per case", flush=True)
    downloads = [Downloads.remote(48, seconds) for _ in range(3)]
    labels = {pid_of(d): f"download process {i}" for i, d in enumerate(downloads)}
    cases = {
        "4 hosts": ([f"img{i}.example.com" for i in range(4)], [0.55, 0.25, 0.15, 0.05]),
        "1,000 hosts": ([f"img{i}.example.com" for i in range(1000)], [1.0] * 1000),
        # Nearly every line on a host its process holds no slot of: a grant per line.
        "100,000 hosts": ([f"img{i}.example.com" for i in range(100_000)], [1.0] * 100_000),
    }
    for design in designs:
        if design == "new":
            actor = HostSlotActor.remote(8, 40.0)  # its own, killed after the stage
        else:
            from itm_old.host_gate import start_host_tokens

            actor = start_host_tokens(8, 40.0)
        labels[pid_of(actor)] = "slot actor"
        for case, (hosts, weights) in cases.items():
            calls = ray.get(actor.stats.remote())["calls"]
            before, started = cpu_now(labels, db_pid), time.perf_counter()
            lines = sum(ray.get([d.run.remote(design, actor, hosts, weights) for d in downloads]))
            wall = time.perf_counter() - started
            calls = ray.get(actor.stats.remote())["calls"] - calls
            cpu = spent(f"slots {design} {case}", before, cpu_now(labels, db_pid))
            gate = sum(s for kind, s in cpu.items() if kind.startswith("download")) / lines * 1000
            note = f"{calls / lines:.3f} calls/line; download processes {gate:.3f} ms/line"
            row(f"slots {design}", case, lines, wall, cpu, ["slot actor"], note)
        ray.kill(actor)
    for d in downloads:
        ray.kill(d)


# -- the driver ----------------------------------------------------------------------------


def driver_stage(uri: str, db_pid: int, lines: int, batch_sizes: list[int]) -> None:
    print(f"driver: {lines} lines that fail at once (blocked_address)", flush=True)
    hosts = random.Random(1).choices(range(1000), k=lines)
    urls = [
        (n, f"http://10.0.{h // 250}.{h % 250 + 1}/photos/2024/{n:08d}/original-1280x960.jpg")
        for n, h in enumerate(hosts, start=1)
    ]
    for per_host, batch in [(0, size) for size in batch_sizes] + [(8, batch_sizes[0])]:
        settings = Settings(
            mongo_uri=uri, db="ceiling_driver", serve=False, per_host=per_host, batch_size=batch
        )
        writers = start_writers(uri, settings.db, 60.0, 1)
        labels = {pid_of(writers[0]): "writer 0"}
        name = f"{per_host}-{batch}"
        for run_id, part in ((f"warm-{name}", urls[:2000]), (f"run-{name}", urls)):
            ray.get(writers[0].start_run.remote(run_id, "bench", False))
            before, started = cpu_now(labels, db_pid), time.perf_counter()
            counts = run_pipeline(part, writers, run_id, settings)
            wall = time.perf_counter() - started
            if per_host and "slot actor" not in labels.values():
                labels[pid_of(start_host_slots(per_host, 40.0))] = "slot actor"  # the run's own
        assert counts.lines == lines, counts
        case = f"per_host={per_host} batch={batch}"
        cpu = spent(f"driver {case}", before, cpu_now(labels, db_pid))
        note = f"writer {cpu['writer 0'] / lines * 1000:.3f} ms/line"
        if per_host:
            note += f", slot actor {cpu['slot actor'] / lines * 1000:.3f} ms/line"
        row("driver", case, lines, wall, cpu, ["driver"], note)
        ray.kill(writers[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=["writers", "slots", "driver"])
    parser.add_argument("--writer-lines", type=int, default=1536)
    parser.add_argument("--writers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument(
        "--sizes",
        nargs="*",
        default=[f"{w}x{h}" for w, h in SIZES],
        help="photo sizes WxH of the writers' images (e.g. 200x200: picsum-like thumbnails)",
    )
    parser.add_argument("--slot-seconds", type=float, default=8.0)
    parser.add_argument("--designs", nargs="*", default=["new", "old"], choices=["new", "old"])
    parser.add_argument("--driver-lines", type=int, default=20_000)
    parser.add_argument("--driver-batch-sizes", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp)) as uri:
        db_pid = State.load(Files(Path(tmp)).state).server.pid
        if "slots" in args.only and "old" in args.designs:
            old_package(Path(tmp))
        init_ray(None, dashboard=False)
        try:
            if "writers" in args.only:
                sizes = [tuple(map(int, size.split("x"))) for size in args.sizes]
                writers_stage(uri, db_pid, args.writer_lines, args.writers, sizes)
            if "slots" in args.only:
                slots_stage(db_pid, args.slot_seconds, args.designs)
            if "driver" in args.only:
                driver_stage(uri, db_pid, args.driver_lines, args.driver_batch_sizes)
        finally:
            ray.shutdown()
    print("\nCPU ms per line: own = one process of the stage; ceiling: lines/s, MongoDB apart")
    print("stage         size          lines/s       own        DB    ceiling")
    for values in ROWS:
        print(table_line(*values))
    print("\ncost breakdown (CPU s per process kind during each stage)")
    print("\n".join(BREAKDOWN))


if __name__ == "__main__":
    main()
