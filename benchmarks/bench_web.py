"""itm on a web-like list, against the no-Ray pool script and img2dataset, HTTP and HTTPS.

    flock /tmp/itm-bench.lock python -m benchmarks.bench_web [--lines 3000] [--hosts 300]
        [--only http https] [--pipelines itm pools img2dataset]

The workload (``--seed``): ``--lines`` lines over ``--hosts`` host names
``hNNN.itm-bench.test``, hosts drawn with a Zipf skew (s = 1: the first host gets
~15% of the lines, most hosts 5 lines or fewer); a line is a 404 with probability
3%, a 500 with 1.5%, a 302 to another host (drawn the same way) that serves the
photo with 10%; every other line a real photograph (``tests/support/photo_server.py``'s 9
sample photos, center-cropped to 0.31-1.92 megapixels, smaller sizes more often,
a quarter portrait; JPEG q85). Every response waits a latency drawn from a
lognormal law of median 60 ms (sigma 1: ~3% over 400 ms, capped at 3 s). The answer
of each path is fixed in the path itself (``benchmarks/web_server.py``, its own
process), so every pipeline gets exactly the same answers.

Host names, not ``127.x.y.z`` literals: so that lookups happen and are counted.
The benchmark (as root) adds the names to ``/etc/hosts`` (all at 127.0.0.1, in a
marked block that it removes at the end, and replaces if a killed run left one);
``/etc/hosts`` answers in microseconds, so a slow resolver's cost is not in these
times, only the number of lookups. They are counted the same way for every
pipeline: ``benchmarks/dns_counter/sitecustomize.py`` counts each real
``getaddrinfo`` of these names in every process.

HTTPS: a CA made for the run (``tests/support/tls.py``, ECDSA P-256) signs
``*.itm-bench.test``; every pipeline trusts it through ``SSL_CERT_FILE``.

The pipelines, each its own process measured from outside as ``bench_pipeline``
does (whole-process wall, CPU of its process tree, Ray worker processes started,
file descriptors of its working processes), MongoDB (one SecantusDB) outside the
measured tree:

- ``itm``: ``python -m itm.run --no-serve`` with its defaults (``--per-host 8``,
  ``--concurrency 64``), Ray's start and stop included;
- ``pools``: ``bench_pipeline``'s script without Ray (64 download threads with itm's
  downloader, one process per core for md5 + decode + grayscale + PNG, batched
  writes to MongoDB);
- ``img2dataset``: in its own virtualenv (``$TMPDIR/itm-bench-venv``, made on first
  use), the closest work it offers: download, decode, re-encode as PNG (level 1)
  without resizing, md5 of the downloaded bytes, files on disk (its default); 2
  processes of 32 threads (64 downloads in flight, as itm), 4 shards. It has no
  grayscale, no MongoDB, no deduplication, no per-host limit and no redirect or
  address checks (urllib follows redirects to anywhere).

The floor: md5 + decode + grayscale + PNG (itm's own functions) of every distinct
image, in this process, weighted by how many lines get it, per line of the input;
beside it, the CPU of downloading alone (``download_cpu``). itm's row adds its
phases and its Ray workers' CPU by the tasks and actors they ran.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from benchmarks.bench_pipeline import ROOT, Measure, _download, measure, run
from itm.config import Settings
from itm.embedded import EmbeddedMongo
from itm.job.imaging import grayscale_png, md5_hex
from itm.store import connect
from tests.support.photo_server import photo_files, photo_jpeg
from tests.support.tls import CA

DOMAIN = "itm-bench.test"
HOSTS_FILE = Path("/etc/hosts")
BLOCK = ("# itm bench_web: begin\n", "# itm bench_web: end\n")
COUNTER = ROOT / "benchmarks" / "dns_counter"
# (width, height, weight): web photos, smaller ones more often; 0.31-1.92 megapixels.
SIZES = (
    (640, 480, 3),
    (800, 533, 3),
    (800, 600, 2),
    (1024, 683, 2),
    (1024, 768, 2),
    (1200, 800, 1),
    (1280, 960, 1),
    (1600, 1067, 1),
    (1600, 1200, 1),
)
LATENCY_MEDIAN_MS, LATENCY_SIGMA, LATENCY_CAP_MS = 60, 1.0, 3000
NOT_FOUND, SERVER_ERROR, REDIRECT = 0.03, 0.015, 0.10
VENV = Path(os.environ.get("TMPDIR", "/tmp")) / "itm-bench-venv"
IMG2DATASET = "img2dataset==1.47.0"
PROCESSES, THREADS = 2, 32
IMG2DATASET_COMMAND = f"""\
import sys
from img2dataset import download
urls, out, shard = sys.argv[1:]
download(
    url_list=urls, input_format="txt", output_folder=out, output_format="files",
    processes_count={PROCESSES}, thread_count={THREADS}, number_sample_per_shard=int(shard),
    resize_mode="no", encode_format="png", encode_quality=1, compute_hash="md5",
    extract_exif=False, timeout=10, retries=0, distributor="multiprocessing",
)
"""


def host(index: int) -> str:
    return f"h{index:03d}.{DOMAIN}"


@dataclass(frozen=True)
class Workload:
    paths: list[str]  # "host/path" of each line, before a scheme and port are given
    images: list[tuple[int, int, int]]  # (photo, width, height) of each line that gets one
    latencies: list[int]  # ms of every response

    def urls(self, scheme: str, port: int) -> str:
        return "".join(
            f"{scheme}://{name}:{port}/{path}\n"
            for name, path in (line.split("/", 1) for line in self.paths)
        )


def workload(lines: int, hosts: int, seed: int) -> Workload:
    rng = random.Random(seed)
    weights = [1 / rank for rank in range(1, hosts + 1)]  # Zipf, s = 1
    photos = len(photo_files())
    paths, images, latencies = [], [], []

    def latency() -> int:
        ms = rng.lognormvariate(math.log(LATENCY_MEDIAN_MS), LATENCY_SIGMA)
        latencies.append(min(LATENCY_CAP_MS, round(ms)))
        return latencies[-1]

    for _ in range(lines):
        first, second = rng.choices(range(hosts), weights, k=2)
        draw = rng.random()
        if draw < NOT_FOUND:
            path = f"s/404/{latency()}"
        elif draw < NOT_FOUND + SERVER_ERROR:
            path = f"s/500/{latency()}"
        else:
            width, height, _ = rng.choices(SIZES, [w for *_, w in SIZES])[0]
            if rng.random() < 0.25:
                width, height = height, width
            images.append((rng.randrange(photos), width, height))
            path = f"p/{images[-1][0]}/{width}x{height}/{latency()}"
            if draw > 1 - REDIRECT:
                path = f"r/{host(second)}/{latency()}/{path}"
        paths.append(f"{host(first)}/{path}")
    return Workload(paths, images, latencies)


@contextmanager
def host_names(hosts: int) -> Iterator[None]:
    """The host names at 127.0.0.1 in /etc/hosts, in a marked block, while the run lasts."""

    def without_block() -> str:
        text = HOSTS_FILE.read_text()
        if BLOCK[0] in text:
            before, rest = text.split(BLOCK[0], 1)
            text = before + rest.split(BLOCK[1], 1)[-1]
        return text

    if not os.access(HOSTS_FILE, os.W_OK):
        sys.exit(f"bench_web: needs to write {HOSTS_FILE} (run as root) for its host names")
    entries = "".join(f"127.0.0.1 {host(i)}\n" for i in range(hosts))
    HOSTS_FILE.write_text(without_block() + BLOCK[0] + entries + BLOCK[1])
    try:
        yield
    finally:
        HOSTS_FILE.write_text(without_block())


def prewarm(images: list[tuple[int, int, int]]) -> None:
    """Encode each distinct photo once, in every core, before anything is measured."""
    distinct = sorted(set(images))
    with ProcessPoolExecutor() as pool:
        list(pool.map(photo_jpeg, *zip(*distinct, strict=True), chunksize=8))


def floor(work: Workload, settings: Settings) -> float:
    """CPU seconds per input line of md5 + decode + grayscale + PNG, in this process."""
    cost = {}
    for key in sorted(set(work.images)):
        data = photo_jpeg(*key)
        started = time.process_time()
        md5_hex(data)
        grayscale_png(data, settings.max_pixels, settings.png_level)
        cost[key] = time.process_time() - started
    return sum(cost[key] for key in work.images) / len(work.paths)


def download_cpu(urls: list[str]) -> float:
    """CPU seconds per line of itm's ``fetch`` alone (HTTP, TLS, no decode) in this
    process, 16 threads, on every 10th line: what any pipeline pays on top of the floor."""
    sample = urls[::10]
    started = time.process_time()
    with ThreadPoolExecutor(16) as threads:
        list(
            threads.map(partial(_download, settings=Settings(allow_private_addresses=True)), sample)
        )
    return (time.process_time() - started) / len(sample)


@contextmanager
def web_server(tls: tuple[Path, Path] | None) -> Iterator[int]:
    """``benchmarks.web_server`` in its own process (its own GIL); yields its port.
    ``tls``: its (certificate, key) files."""
    cert = ["--cert", str(tls[0]), "--key", str(tls[1])] if tls else []
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.web_server", *cert],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield int(server.stdout.readline())
    finally:
        server.stdin.close()
        server.wait(30)


def img2dataset_python() -> Path:
    """The virtualenv's interpreter, with img2dataset installed in it on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    check = subprocess.run([python, "-c", "import img2dataset"], capture_output=True)
    if check.returncode:
        subprocess.run([python, "-m", "pip", "install", "-q", IMG2DATASET], check=True)
    return python


@dataclass
class Row:
    name: str
    measure: Measure
    lines: int  # lines with an outcome
    stored: int
    lookups: int
    job: float | None = None  # itm's own job time
    # The machine's 1-minute load average when it ended: the pipeline itself is ~2 of it.
    load: float = field(default_factory=lambda: os.getloadavg()[0])

    def rate(self) -> float:
        return self.lines / self.measure.wall

    def cpu_line(self) -> float:
        return self.measure.cpu_total / self.lines


def _lookups(log: Path) -> int:
    count = log.stat().st_size if log.exists() else 0
    log.unlink(missing_ok=True)
    return count


def scenario(
    scheme: str, work: Workload, pipelines: list[str], uri: str, tmp: Path, ca: CA
) -> tuple[dict[str, Row], float]:
    """Each pipeline's row, and the CPU per line of downloading alone."""
    print(f"\n{scheme.upper()}: {len(work.paths)} lines", flush=True)
    log = tmp / "lookups"
    env = {
        "PYTHONPATH": f"{COUNTER}{os.pathsep}{ROOT}",
        "ITM_BENCH_DNS_LOG": str(log),
        "ITM_BENCH_DNS_SUFFIX": f".{DOMAIN}",
        "SSL_CERT_FILE": str(ca.pem),
    }
    rows: dict[str, Row] = {}
    os.environ["SSL_CERT_FILE"] = str(ca.pem)  # for download_cpu, in this process
    with web_server(ca.issue("web", (f"*.{DOMAIN}",)) if scheme == "https" else None) as port:
        urls = tmp / f"{scheme}.txt"
        urls.write_text(work.urls(scheme, port))
        fetching = download_cpu(urls.read_text().splitlines())
        print(f"  download alone (itm's fetch, 16 threads): {fetching * 1000:.1f} ms CPU per line")
        client = connect(uri)
        for name in pipelines:
            _lookups(log)
            if name == "img2dataset":
                rows[name] = run_img2dataset(urls, tmp / f"img2dataset-{scheme}", env, log)
            else:
                db = client[f"web_{name}"]
                extra = ("--per-host", "8") if name == "itm" else ()
                result = run(name, urls, uri, db, extra, env=env)
                stored = db.events.count_documents({"status": "success"})
                lookups = _lookups(log)
                rows[name] = Row(name, result.measure, result.lines, stored, lookups, result.job)
                if name == "itm":
                    print(result.phase_row(), flush=True)
                    roles = sorted(result.measure.cpu_by_role().items(), key=lambda x: -x[1])
                    print(
                        "              Ray workers' CPU (s) by what they ran: "
                        + ", ".join(f"{role} {seconds:.1f}" for role, seconds in roles),
                        flush=True,
                    )
            print(row_text(rows[name], len(work.images)), flush=True)
        client.close()
    return rows, fetching


def run_img2dataset(urls: Path, out: Path, env: dict[str, str], log: Path) -> Row:
    lines = len(urls.read_text().splitlines())
    env = os.environ | env | {"PYTHONPATH": str(COUNTER), "NO_ALBUMENTATIONS_UPDATE": "1"}
    command = [str(img2dataset_python()), "-c", IMG2DATASET_COMMAND, str(urls), str(out)]
    measured = measure([*command, str(math.ceil(lines / 4))], env)
    stats = [json.loads(path.read_text()) for path in out.glob("*_stats.json")]
    return Row(
        "img2dataset",
        measured,
        sum(s["count"] for s in stats),
        sum(s["successes"] for s in stats),
        _lookups(log),
    )


def row_text(row: Row, expected: int) -> str:
    cpu = ", ".join(f"{kind} {s:.1f}" for kind, s in sorted(row.measure.cpu.items()))
    job = f", job {row.job:.1f} s" if row.job is not None else ""
    fds, sockets = row.measure.fds_end()
    return (
        f"  {row.name:11s} stored {row.stored}/{expected}, wall {row.measure.wall:.1f} s{job}, "
        f"{row.rate():.1f} lines/s, CPU {row.measure.cpu_total:.1f} s "
        f"({row.cpu_line() * 1000:.1f} ms/line: {cpu}), fds most {row.measure.fds_peak()}, "
        f"at the end {fds} ({sockets} sockets), DNS lookups {row.lookups / row.lines:.2f}/line, "
        f"Ray workers {row.measure.workers}, load average {row.load:.1f}"
    )


def report(
    results: dict[str, tuple[dict[str, Row], float]], floor_line: float, work: Workload
) -> None:
    latencies = sorted(work.latencies)
    slow = sum(ms > 400 for ms in latencies) / len(latencies)
    per_host = Counter(path.split("/", 1)[0] for path in work.paths).most_common()
    print(
        f"\nworkload: {len(work.paths)} lines, {len(per_host)} hosts (busiest {per_host[0][1]} "
        f"lines), {len(work.images)} photos ({len(set(work.images))} distinct), latency median "
        f"{latencies[len(latencies) // 2]} ms, {slow:.1%} over 400 ms"
    )
    print(f"floor (md5 + decode + grayscale + PNG): {floor_line * 1000:.1f} ms CPU per line")
    print(
        "\n| scheme | pipeline | stored | lines/s | CPU ms/line | x floor | fds most / at end "
        "(sockets) | DNS lookups/line | load |\n|---|---|---|---|---|---|---|---|---|"
    )
    for scheme, (rows, _) in results.items():
        for row in rows.values():
            fds, sockets = row.measure.fds_end()
            print(
                f"| {scheme} | {row.name} | {row.stored}/{len(work.images)} | {row.rate():.1f} | "
                f"{row.cpu_line() * 1000:.1f} | {row.cpu_line() / floor_line:.2f} | "
                f"{row.measure.fds_peak()} / {fds} ({sockets}) | {row.lookups / row.lines:.2f} | "
                f"{row.load:.1f} |"
            )
    print("\nCPU per line against the floor plus downloading alone (itm's fetch, this process)")
    for scheme, (rows, fetching) in results.items():
        print(
            f"  {scheme}: download {fetching * 1000:.1f} ms, floor + download "
            f"{(floor_line + fetching) * 1000:.1f} ms; "
            + ", ".join(
                f"{row.name} {row.cpu_line() / (floor_line + fetching):.2f}x"
                for row in rows.values()
            )
        )
    print("\nratios (targets of issue 19)")
    for scheme, (rows, _) in results.items():
        if "itm" not in rows:
            continue
        itm = rows["itm"]
        ratios = [
            f"itm lines/s / {name}'s {itm.rate() / rows[name].rate():.2f} (>= 1.5)"
            for name in ("pools", "img2dataset")
            if name in rows
        ]
        ratios.append(f"itm CPU per line / floor {itm.cpu_line() / floor_line:.2f} (<= 1.25)")
        print(f"  {scheme}: " + "; ".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--only", nargs="*", default=["http", "https"], choices=["http", "https"])
    parser.add_argument(
        "--pipelines",
        nargs="*",
        default=["itm", "pools", "img2dataset"],
        choices=["itm", "pools", "img2dataset"],
    )
    args = parser.parse_args()
    work = workload(args.lines, args.hosts, args.seed)
    if "img2dataset" in args.pipelines:
        img2dataset_python()
    prewarm(work.images)
    floor_line = floor(work, Settings())
    results = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        host_names(args.hosts),
        EmbeddedMongo(Path(tmp) / "mongo") as uri,
    ):
        ca = CA(Path(tmp) / "ca", "itm benchmark CA")
        for scheme in args.only:
            results[scheme] = scenario(scheme, work, args.pipelines, uri, Path(tmp), ca)
    report(results, floor_line, work)


if __name__ == "__main__":
    main()
