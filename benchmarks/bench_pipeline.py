"""What users pay: itm against a sequential loop and a no-Ray pool script, on real photos.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_pipeline [--only 0ms 100ms 10k drip]

A picsum-like server of real photographs (``tests/support/photo_server.py``, its own
process, photos encoded before any pipeline runs) serves the canonical input
(``urls.txt``: 650 lines, 550 images, 100 errors). Each pipeline runs as its own
process on a fresh database of one SecantusDB, and is measured from outside:
whole-process wall, CPU seconds of its process tree (sampled every 0.1 s), Ray
worker processes started. The three pipelines:

- ``sequential``: one URL at a time, written one line at a time;
- ``pools``: the script a seasoned user writes without Ray: a thread pool of
  downloads, a process pool (one process per core) for decode + grayscale + PNG,
  batched pymongo writes;
- ``itm``: ``python -m itm.run --no-serve --per-host 0``, Ray start included; its
  job time is the one its own summary prints. ``--per-host 0``: every line is on one
  local host, and the baselines have no per-host limit either.

Scenarios: ``0ms`` and ``100ms`` of latency per response on the 650 lines (the
sequential loop runs at 100 ms only with ``--sequential-100ms``: it takes minutes;
its time is then 650 x 2 x 0.1 s plus its 0 ms time, which the report estimates);
``10k``: 10,000 lines at 0 ms for steady-state lines/s (from the events'
``finished_at``, between the 10th and the 90th percentile); ``drip``: 5% of the
lines drip one byte per 0.5 s until itm's deadline, and the other lines' throughput
is compared with a clean run's.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil
from bson import Binary
from pymongo import InsertOne, UpdateOne
from pymongo.database import Database

from itm.config import Settings
from itm.embedded import EmbeddedMongo
from itm.job.download import fetch
from itm.job.imaging import grayscale_png, md5_hex
from itm.job.ray_runtime import LOCAL_ENV
from itm.outcomes import Failure
from itm.store import connect, ensure_indexes, floor_minute

ROOT = Path(__file__).resolve().parent.parent
LINES = (ROOT / "urls.txt").read_text().splitlines()
CPUS = os.cpu_count() or 1
WRITE_BATCH = 64
# Like for like: the baselines send 64 downloads at once to the one local host, so
# itm runs without its per-host limit (8 by default; benchmarks.bench_politeness
# measures what the limit costs). Set in the environment, which a checkout older than
# the limit (--itm-root) ignores.
ITM_ENV = {"ITM_PER_HOST": "0"}


# -- the two baselines, each run as `python -m benchmarks.bench_pipeline --pipeline NAME` --------


def _event(line: int, url: str, outcome: str | Failure) -> dict:
    event = {"run_id": "bench", "line": line, "url": url, "finished_at": datetime.now(timezone.utc)}
    if isinstance(outcome, Failure):
        return event | {"status": "error", "reason": outcome.reason, "detail": outcome.detail}
    return event | {"status": "success", "md5": outcome}


def _write(db: Database, rows: list[tuple[int, str, str | Failure, object]]) -> None:
    """One bulk upsert of the images, one bulk insert of the events, one $inc per minute."""
    images = [
        UpdateOne(
            {"md5": md5},
            {
                "$setOnInsert": {
                    "md5": md5,
                    "width": gray.width,
                    "height": gray.height,
                    "mode": gray.mode,
                    "gray": Binary(gray.png),
                    "source_url": url,
                    "inserted_at": datetime.now(timezone.utc),
                }
            },
            upsert=True,
        )
        for _, url, md5, gray in rows
        if gray is not None
    ]
    if images:
        db.images.bulk_write(images, ordered=False)
    events = [_event(line, url, md5) for line, url, md5, _ in rows]
    db.events.bulk_write([InsertOne(event) for event in events], ordered=False)
    minutes: dict[datetime, dict[str, int]] = {}
    for event in events:
        counts = minutes.setdefault(floor_minute(event["finished_at"]), {"success": 0, "error": 0})
        counts[event["status"]] += 1
    for minute, counts in minutes.items():
        db.monitoring.update_one({"minute": minute}, {"$inc": counts}, upsert=True)


def _process(data: bytes, settings: Settings) -> tuple[str, object]:
    """In a pool process: md5, decode, grayscale, PNG."""
    try:
        return md5_hex(data), grayscale_png(data, settings.max_pixels, settings.png_level)
    except Failure as failure:
        return "", failure


def _download(line: str, settings: Settings) -> bytes | Failure:
    try:
        return fetch(line, settings)
    except Failure as failure:
        return failure


def sequential(urls: list[str], db: Database, settings: Settings) -> None:
    for number, url in enumerate(urls, start=1):
        data = _download(url, settings)
        md5, gray = ("", data) if isinstance(data, Failure) else _process(data, settings)
        outcome = gray if isinstance(gray, Failure) else md5
        _write(db, [(number, url, outcome, None if isinstance(gray, Failure) else gray)])


def pools(urls: list[str], db: Database, settings: Settings) -> None:
    """Downloads in 64 threads, pure steps in one process per core, writes of 64 lines."""
    rows: list = []
    with ThreadPoolExecutor(settings.concurrency) as threads, ProcessPoolExecutor(CPUS) as procs:
        pending = {
            threads.submit(_download, url, settings): (n, url)
            for n, url in enumerate(urls, start=1)
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                number, url = pending.pop(future)
                result = future.result()
                if isinstance(result, bytes):
                    pending[procs.submit(_process, result, settings)] = (number, url)
                elif isinstance(result, Failure):
                    rows.append((number, url, result, None))
                else:
                    md5, gray = result
                    failed = isinstance(gray, Failure)
                    rows.append((number, url, gray if failed else md5, None if failed else gray))
            if len(rows) >= WRITE_BATCH or (rows and not pending):
                _write(db, rows)
                rows = []


def run_baseline(name: str, urls: Path, mongo_uri: str, db_name: str) -> None:
    # The local image server is on loopback: opt in to private addresses, explicitly.
    settings = Settings(urls=urls, mongo_uri=mongo_uri, serve=False, allow_private_addresses=True)
    db = connect(mongo_uri)[db_name]
    ensure_indexes(db)
    {"sequential": sequential, "pools": pools}[name](urls.read_text().splitlines(), db, settings)


# -- measuring a process tree from outside ----------------------------------------------------


def _is_ray_worker(cmdline: list[str]) -> bool:
    """A Ray worker process: ``default_worker.py`` until it renames itself ``ray::<task>``
    (the raylet's own command line names that script too; the agents are no workers)."""
    if not cmdline:
        return False
    if cmdline[0].startswith("ray::"):
        return not cmdline[0].endswith("Agent")
    return any(part.endswith("default_worker.py") for part in cmdline[:3])


@dataclass
class Measure:
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # seconds per process kind
    workers: int = 0
    stdout: list[tuple[float, str]] = field(default_factory=list)  # (seconds, line)
    # pid: (kind, most fds seen, fds and sockets at its last sample), for FD_KINDS
    fds: dict[int, tuple[str, int, int, int]] = field(default_factory=dict)
    # Ray worker pid: its CPU seconds, and the tasks and actors it was seen running
    worker_cpu: dict[int, float] = field(default_factory=dict)
    roles: dict[int, set[str]] = field(default_factory=dict)

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu.values())

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds of the Ray workers, by the tasks and actors each ran."""
        roles: dict[str, float] = {}
        for pid, seconds in self.worker_cpu.items():
            label = "+".join(sorted(self.roles.get(pid, {"IDLE"})))
            roles[label] = roles.get(label, 0.0) + seconds
        return roles

    def fds_peak(self) -> int:
        """The most file descriptors one process of the pipeline held at a sample."""
        return max((peak for _, peak, _, _ in self.fds.values()), default=0)

    def fds_end(self) -> tuple[int, int]:
        """(fds, sockets) at its last sample of the process that then held most sockets:
        what a long-lived download worker still holds when the job ends."""
        return max(((fds, sockets) for *_, fds, sockets in self.fds.values()), key=lambda x: x[1])


def _kind(cmdline: list[str], root: bool) -> str:
    text = " ".join(cmdline[:3])
    if root:
        return "driver"
    if _is_ray_worker(cmdline):
        return "ray workers"
    for name in ("raylet", "gcs_server", "dashboard", "Agent", "log_monitor", "monitor.py"):
        if name in text:  # "Agent": ray::DashboardAgent, ray::RuntimeEnvAgent
            return "ray services"
    if "secantusd" in text or "itm.embedded" in text:
        return "embedded MongoDB"
    return "pool processes" if "multiprocessing" in text or "bench_pipeline" in text else "other"


# The processes that do a pipeline's work, whose file descriptors are counted.
FD_KINDS = ("driver", "ray workers", "pool processes", "other")


def _fds(pid: int) -> tuple[int, int]:
    """Open file descriptors of a process, and how many of them are sockets."""
    folder = f"/proc/{pid}/fd"
    names = os.listdir(folder)
    sockets = 0
    for name in names:
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"{folder}/{name}").startswith("socket:")
    return len(names), sockets


def measure(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> Measure:
    """Wall, CPU per process kind, Ray workers started (every 0.1 s) and file
    descriptors of the working processes (every 0.5 s) of ``command``'s process tree."""
    result = Measure()
    started = time.perf_counter()
    errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read after the process ends)
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        start_new_session=True,
    )
    reader = threading.Thread(
        target=lambda: result.stdout.extend(
            (time.perf_counter() - started, line.rstrip()) for line in proc.stdout
        ),
        daemon=True,
    )
    reader.start()
    seen: dict[int, tuple[str, float]] = {}
    workers: set[int] = set()
    root = psutil.Process(proc.pid)
    for sample in itertools.count():
        if proc.poll() is not None:
            break
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in tree:
            try:
                with member.oneshot():
                    cmdline, times = member.cmdline(), member.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if not cmdline and member.pid in seen:  # an exiting process shows none
                kind = seen[member.pid][0]
            else:
                kind = _kind(cmdline, member.pid == proc.pid)
            seen[member.pid] = (kind, times.user + times.system)
            if kind == "ray workers":
                workers.add(member.pid)
                role = cmdline[0].split()[0] if cmdline else ""
                if role.startswith("ray::") and role != "ray::IDLE":
                    # ray::name:Class.method -> Class (a task: its function's name)
                    role = role.removeprefix("ray::").split(".")[0].split(":")[-1]
                    result.roles.setdefault(member.pid, set()).add(role)
            if kind in FD_KINDS and sample % 5 == 0:
                with contextlib.suppress(OSError):
                    fds, sockets = _fds(member.pid)
                    peak = max(fds, result.fds.get(member.pid, ("", 0))[1])
                    result.fds[member.pid] = (kind, peak, fds, sockets)
        time.sleep(0.1)
    proc.wait()
    result.wall = time.perf_counter() - started
    reader.join(5)
    for pid, (kind, seconds) in seen.items():
        result.cpu[kind] = result.cpu.get(kind, 0.0) + seconds
        if kind == "ray workers":
            result.worker_cpu[pid] = seconds
    result.workers = len(workers)
    if proc.returncode:
        errors.seek(0)
        raise RuntimeError(f"{command[2:4]} exited with {proc.returncode}: {errors.read()[-2000:]}")
    return result


# -- the scenarios ---------------------------------------------------------------------------


@contextmanager
def photo_server(latency: float, prewarm: Path, drip_seconds: float = 60.0) -> Iterator[str]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.photo_server",
            "--latency",
            str(latency),
            "--prewarm",
            str(prewarm),
            "--drip-seconds",
            str(drip_seconds),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield server.stdout.readline().strip()
    finally:
        server.stdin.close()
        server.wait(30)


# ``python -m itm.run`` as a user runs it, plus two lines on stdout that mark its phases:
# when its imports are done, and when ``ray.init`` returns (any itm checkout: --itm-root).
ITM_COMMAND = """\
import sys, ray, itm.run
print("bench: itm imported", flush=True)
init = ray.init
def timed_init(*args, **kwargs):
    try:
        return init(*args, **kwargs)
    finally:
        print("bench: ray.init returned", flush=True)
ray.init = timed_init
sys.exit(itm.run.main(sys.argv[1:]))
"""
# The phases of an itm run, in order: each ends at the stdout line starting with its
# text ("services": Ray and MongoDB both ready; "first": the first stored line).
MARKS = {
    "imports": ("bench: itm imported",),
    "ray": ("bench: ray.init returned",),
    "services": ("bench: ray.init returned", "itm: embedded MongoDB at"),
    "writer": ("itm: run ",),
    "summary": ("run ",),
}
SEGMENTS = (  # (label, phase it starts after, phase it ends with)
    ("imports", None, "imports"),
    ("Ray + MongoDB", "imports", "services"),
    ("writer", "services", "writer"),
    ("first line", "writer", "first"),
    ("rest of job", "first", "summary"),
    ("stop", "summary", "exit"),
)


@dataclass
class Result:
    name: str
    measure: Measure
    job: float | None  # itm's own job time, from its summary
    lines: int
    steady: float  # lines/s between the 10th and 90th percentile of finished_at
    first_result: float  # seconds from the process start to the first stored line

    def row(self) -> str:
        cpu = " ".join(
            f"{kind} {seconds:.1f}" for kind, seconds in sorted(self.measure.cpu.items())
        )
        job = f"{self.job:6.1f}" if self.job is not None else "     -"
        return (
            f"  {self.name:10s} wall {self.measure.wall:6.1f} s  job {job} s  first "
            f"{self.first_result:5.1f} s  steady {self.steady:6.0f} lines/s  CPU "
            f"{self.measure.cpu_total:5.1f} s ({cpu})  Ray workers {self.measure.workers}"
        )

    def phases(self) -> dict[str, float]:
        """When each phase of an itm run ended, in seconds from the process start."""
        ends = {"first": self.first_result, "exit": self.measure.wall}
        for phase, starts in MARKS.items():
            seen = [t for t, line in self.measure.stdout if line.startswith(starts)]
            ends[phase] = max(seen, default=float("nan"))  # each line comes once
        return ends

    def segments(self) -> dict[str, float]:
        ends = self.phases()
        return {
            label: ends[end] - (ends[start] if start else 0.0) for label, start, end in SEGMENTS
        }

    def phase_row(self) -> str:
        return "              phases (s): " + ", ".join(
            f"{label} {seconds:.1f}" for label, seconds in self.segments().items()
        )


def _finished(db: Database) -> list[datetime]:
    return sorted(e["finished_at"] for e in db.events.find({}, {"finished_at": 1}))


def steady_rate(times: list[datetime]) -> float:
    low, high = times[len(times) // 10], times[len(times) * 9 // 10]
    seconds = (high - low).total_seconds()
    return (len(times) * 8 // 10) / seconds if seconds > 0 else float("inf")


def run(
    name: str,
    urls: Path,
    uri: str | None,
    db: Database | str,
    extra: tuple[str, ...] = (),
    itm_root: Path = ROOT,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """One pipeline as its own process, on a fresh database ``db`` of the server at
    ``uri``; itm alone may instead run on the embedded server of ``data_dir``
    (``uri`` None, ``db`` a name), which the benchmark then opens to read the events.
    ``env`` is added last to the process's environment."""
    if isinstance(db, Database):
        db.client.drop_database(db.name)
    db_name = db if isinstance(db, str) else db.name
    environ = os.environ | LOCAL_ENV | {"ITM_ALLOW_PRIVATE_ADDRESSES": "1", "PYTHONPATH": str(ROOT)}
    if name == "itm":
        environ["PYTHONPATH"] = str(itm_root)
        environ |= ITM_ENV
        where = ("--mongo-uri", uri) if uri else ("--data-dir", str(data_dir))
        command = [
            sys.executable,
            "-c",
            ITM_COMMAND,
            "--no-serve",
            "--urls",
            str(urls),
            *where,
            "--db",
            db_name,
            *extra,
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_pipeline",
            "--pipeline",
            name,
            "--urls",
            str(urls),
            "--mongo-uri",
            uri,
            "--db",
            db_name,
        ]
    environ |= env or {}
    started = datetime.now(timezone.utc)
    # Python puts the working directory first on sys.path: itm runs from its own checkout.
    measured = measure(command, environ, itm_root if name == "itm" else ROOT)
    job = None
    for _, line in measured.stdout:
        if match := re.match(r"run \S+: (\d+) lines in ([\d.]+) s", line):
            job = float(match.group(2))
    if isinstance(db, Database):
        times = _finished(db)
    else:
        with EmbeddedMongo(data_dir) as embedded_uri:
            client = connect(embedded_uri)
            times = _finished(client[db_name])
            client.close()
    first = (times[0] - started).total_seconds() if times else float("nan")
    return Result(name, measured, job, len(times), steady_rate(times), first)


@contextmanager
def served_input(lines: list[str], latency: float, tmp: Path) -> Iterator[Path]:
    """An input file of ``lines`` pointed at the photo server, which runs meanwhile."""
    prewarm = tmp / "paths.txt"
    prewarm.write_text("\n".join(lines) + "\n")
    with photo_server(latency, prewarm) as base:
        urls = tmp / "urls.txt"
        urls.write_text(
            "\n".join(line.replace("https://picsum.photos", base) for line in lines) + "\n"
        )
        yield urls


def scenario(
    title: str,
    lines: list[str],
    latency: float,
    uri: str,
    tmp: Path,
    names: tuple[str, ...],
    extra: tuple[str, ...] = (),
    itm_root: Path = ROOT,
) -> dict[str, Result]:
    results = {}
    print(f"\n{title}: {len(lines)} lines, {latency * 1000:.0f} ms per response", flush=True)
    with served_input(lines, latency, tmp) as urls:
        client = connect(uri)
        for name in names:
            results[name] = run(name, urls, uri, client[f"bench_{name}"], extra, itm_root)
            print(results[name].row(), flush=True)
            if name == "itm":
                print(results[name].phase_row(), flush=True)
    return results


def startup(tmp: Path, rounds: int, itm_root: Path) -> None:
    """``python -m itm.run --no-serve`` as a user runs it (its embedded server included),
    phase by phase: this checkout against ``itm_root`` if another, alternately."""
    sides = {"before": itm_root, "after": ROOT} if itm_root.resolve() != ROOT else {"itm": ROOT}
    results: dict[str, list[Result]] = {side: [] for side in sides}
    print(
        f"\nstart and stop: {len(LINES)} lines, 0 ms, embedded MongoDB, {rounds} rounds", flush=True
    )
    with served_input(LINES, 0.0, tmp) as urls:
        for round_ in range(rounds):
            for side, root in sides.items():
                result = run(
                    "itm",
                    urls,
                    None,
                    f"startup_{round_}",
                    itm_root=root,
                    data_dir=tmp / f"data-{side}",
                )
                results[side].append(result)
                print(f"  {side:6s} {result.row().strip()}\n{result.phase_row()}", flush=True)
    medians = {}
    for side, runs in results.items():
        segments = {
            label: statistics.median(r.segments()[label] for r in runs) for label, _, _ in SEGMENTS
        }
        segments["before the first line"] = statistics.median(r.first_result for r in runs)
        segments["whole process"] = statistics.median(r.measure.wall for r in runs)
        kinds = sorted({kind for r in runs for kind in r.measure.cpu})
        cpu = {
            f"CPU {kind}": statistics.median(r.measure.cpu.get(kind, 0.0) for r in runs)
            for kind in kinds
        }
        cpu["CPU total"] = statistics.median(r.measure.cpu_total for r in runs)
        medians[side] = segments | cpu
        print(
            f"  median {side}: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in medians[side].items())
            + f"; Ray workers {[r.measure.workers for r in runs]}"
        )
    if len(sides) == 2:
        before, after = medians["before"], medians["after"]
        print(
            "  after / before: "
            + ", ".join(
                f"{key} {after[key] / before[key]:.2f}"
                for key in before
                if key in after and before[key] > 0.05
            )
        )


def drip(uri: str, tmp: Path, deadline: float, itm_root: Path) -> None:
    """5% of the lines drip until the deadline: the other lines' throughput vs a clean run."""
    lines = LINES
    dripping = [
        line.replace("picsum.photos/", "picsum.photos/drip/")
        if i % 20 == 7 and "/error/" not in line
        else line
        for i, line in enumerate(lines)
    ]
    rates = {}
    for title, input_lines in (("clean", lines), ("drip", dripping)):
        results = scenario(
            f"drip benchmark, {title}",
            input_lines,
            0.0,
            uri,
            tmp,
            ("itm",),
            ("--deadline", str(deadline)),
            itm_root,
        )
        db = connect(uri)["bench_itm"]
        others = db.events.find({"url": {"$not": re.compile("/drip/")}}, {"finished_at": 1})
        times = sorted(event["finished_at"] for event in others)
        seconds = (times[-1] - db.runs.find_one()["started_at"]).total_seconds()
        rates[title] = len(times) / seconds
        print(
            f"  other lines: {len(times)} in {seconds:.1f} s = {rates[title]:.0f} lines/s "
            f"(job {results['itm'].job} s)"
        )
    print(
        f"  other lines' throughput with 5% dripping: {rates['drip'] / rates['clean']:.2f}x "
        f"the clean run's (target >= 0.80)"
    )


def report(results: dict[str, dict[str, Result]]) -> None:
    print("\nratios (targets of issue 7)")
    if "0ms" in results:
        r = results["0ms"]
        base = r["pools"].measure.wall
        print(
            f"  0 ms:   itm job / pools wall {r['itm'].job / base:.2f} (<= 1.0); itm wall / "
            f"pools wall {r['itm'].measure.wall / base:.2f} (<= 1.5)"
        )
        if "sequential" in r:
            ratio = r["itm"].measure.wall / r["sequential"].measure.wall
            print(f"          itm wall / sequential wall {ratio:.2f}")
    if "100ms" in results:
        r = results["100ms"]
        if "sequential" in r:
            sequential = r["sequential"].measure.wall
            label = "measured"
        elif "0ms" in results and "sequential" in results["0ms"]:
            # Each good line costs two responses, each error one, all one after another.
            responses = sum(
                1 if "/error/" in line or max(map(int, line.rsplit("/", 2)[1:])) > 5000 else 2
                for line in LINES
            )
            sequential = results["0ms"]["sequential"].measure.wall + responses * 0.1
            label = "estimated: 0 ms time + 0.1 s per response"
        else:
            sequential = None
        if sequential:
            wall = r["itm"].measure.wall
            print(
                f"  100 ms: itm wall / sequential wall {wall / sequential:.3f} = 1/"
                f"{sequential / wall:.0f} (<= 1/20; sequential {sequential:.0f} s, {label})"
            )
    if "10k" in results:
        r = results["10k"]
        ratio = r["itm"].steady / r["pools"].steady
        print(f"  10k:    itm steady / pools steady {ratio:.2f} (>= 1.0)")
        seq = results.get("0ms", {}).get("sequential")
        if seq:
            per_k = {name: res.measure.cpu_total / res.lines * 1000 for name, res in r.items()}
            seq_k = seq.measure.cpu_total / seq.lines * 1000
            print(
                f"          CPU s per 1,000 lines: itm {per_k['itm']:.1f}, pools "
                f"{per_k['pools']:.1f}, sequential {seq_k:.1f} (0 ms run); itm / sequential "
                f"{per_k['itm'] / seq_k:.2f} (<= 1.3)"
            )
    workers = [
        res.measure.workers
        for scen in results.values()
        for name, res in scen.items()
        if name == "itm"
    ]
    print(f"  Ray worker processes started per itm run: {workers} (<= CPUs + 4 = {CPUS + 4})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="*",
        default=["0ms", "100ms", "10k"],
        choices=["0ms", "100ms", "10k", "drip", "startup"],
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each side in the startup scenario (median)"
    )
    parser.add_argument(
        "--sequential-100ms",
        action="store_true",
        help="also run the sequential loop at 100 ms (over two minutes)",
    )
    parser.add_argument("--drip-deadline", type=float, default=10.0)
    parser.add_argument(
        "--itm-root",
        type=Path,
        default=ROOT,
        help="run itm from another checkout (e.g. an export of main: before/after)",
    )
    parser.add_argument("--pipeline", choices=["sequential", "pools"], help=argparse.SUPPRESS)
    parser.add_argument("--urls", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mongo-uri", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline:
        run_baseline(args.pipeline, args.urls, args.mongo_uri, args.db)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedMongo(Path(tmp) / "mongo") as uri:
        tmp = Path(tmp)
        if "0ms" in args.only:
            results["0ms"] = scenario(
                "0 ms", LINES, 0.0, uri, tmp, ("sequential", "pools", "itm"), itm_root=args.itm_root
            )
        if "100ms" in args.only:
            names = ("sequential", "pools", "itm") if args.sequential_100ms else ("pools", "itm")
            results["100ms"] = scenario(
                "100 ms", LINES, 0.1, uri, tmp, names, itm_root=args.itm_root
            )
        if "10k" in args.only:
            many = [LINES[i % len(LINES)] for i in range(10_000)]
            results["10k"] = scenario(
                "10k lines", many, 0.0, uri, tmp, ("pools", "itm"), itm_root=args.itm_root
            )
        if "drip" in args.only:
            drip(uri, tmp, args.drip_deadline, args.itm_root)
        if "startup" in args.only:
            startup(tmp, args.rounds, args.itm_root)
    report(results)


if __name__ == "__main__":
    main()
