"""The embedded server's lifecycle: shared by the runs of one data directory, never orphaned.

Real ``python -m itm.run`` processes get the signals a user sends (Ctrl-C twice, SIGTERM
while stopping, SIGKILL at any point); every sequence must end with no process left
(checked by pid) and the next run starting normally on the same data directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from itm.config import free_port
from itm.embedded import EmbeddedMongo
from itm.embedded.datadir import State
from itm.embedded.proc import Pid
from itm.store import connect
from tests.support.jobs import ItmProcess, write_urls
from tests.support.servers import PicsumServer, picsum_lines
from tests.support.waiting import wait_until

pytestmark = pytest.mark.ray  # real `python -m itm.run` processes, each with its own local Ray


def processes_of(data_dir: Path) -> dict[int, str]:
    """Every process whose command line names the data directory: itm, supervisor, server."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(data_dir) in command:
                found[int(entry.name)] = command
    return found


def server_pids(data_dir: Path) -> list[Pid]:
    state = State.load(data_dir / "embedded.json")
    assert state is not None, "no running embedded server"
    return [state.supervisor, state.server]


def assert_all_gone(data_dir: Path, pids: list[Pid]) -> None:
    """No process of this data directory is left: neither the known pids nor any other."""
    wait_until(lambda: not any(pid.alive() for pid in pids), f"{pids} to exit", 60)
    wait_until(lambda: not processes_of(data_dir), "no process of the data dir", 60)
    assert not (data_dir / "embedded.json").exists()


def normal_run(start: Callable[..., ItmProcess], data_dir: Path, urls: Path, lines: int) -> None:
    """The next run starts normally on the same data directory, and leaves nothing behind."""
    run = start(data_dir, urls, "--no-serve")
    assert run.wait() == 0, run.output
    assert "embedded MongoDB at mongodb://127.0.0.1:" in run.output
    assert "shared with another itm run" not in run.output
    assert re.search(rf"\b{lines} lines in ", run.output), run.output
    assert_all_gone(data_dir, [run.pid])


@pytest.fixture
def start() -> Iterator[Callable[..., ItmProcess]]:
    """Starts runs; one still alive when the test ends (it failed) gets SIGKILL."""
    runs: list[ItmProcess] = []

    def start(data_dir: Path, urls: Path, *flags: str) -> ItmProcess:
        # The local picsum is on loopback: opt in to private addresses, explicitly.
        runs.append(
            ItmProcess(
                *("--urls", str(urls), "--data-dir", str(data_dir), "--no-dashboard"),
                *("--allow-private-addresses", *flags),
            )
        )
        return runs[-1]

    yield start
    for run in runs:
        if run.process.poll() is None:
            run.signal(signal.SIGKILL, pause=0)
            run.wait()


@pytest.fixture
def urls(tmp_path: Path, canonical_lines: list[str]) -> Path:
    """A tiny list; with a slow server (one line at a time) a job lasts long enough to signal."""
    with PicsumServer(latency=0.5) as server:
        yield write_urls(tmp_path, picsum_lines(server.url, canonical_lines[:20]))


SLOW = ("--concurrency", "1", "--batch-size", "1")


def test_two_runs_share_one_server_and_the_last_one_out_stops_it(
    tmp_path: Path, urls: Path, start: Callable[..., ItmProcess]
) -> None:
    data_dir = tmp_path / "itm"
    first = start(data_dir, urls, "--serve", "--port", str(free_port()))
    first.wait_for("Ctrl-C to stop.")
    known = server_pids(data_dir)
    uri = re.search(r"embedded MongoDB at (\S+)", first.output).group(1)
    port = free_port()
    second = start(data_dir, urls, "--serve", "--port", str(port), *SLOW)
    second.wait_for("itm: run ")
    assert f"embedded MongoDB at {uri} " in second.output
    assert "shared with another itm run" in second.output

    first.signal(signal.SIGKILL)  # the run that started the server, killed while serving
    first.wait()
    second.wait_for("Ctrl-C to stop.")  # its job went on to the end on the same server
    assert re.search(r"\b20 lines in ", second.output), second.output
    assert all(pid.alive() for pid in known), "the server died with the run that started it"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as reply:
        assert reply.status == 200  # the API answers only when MongoDB does

    second.signal(signal.SIGINT, signal.SIGINT)  # the last one out: Ctrl-C twice while serving
    assert second.wait() in (0, 130), second.output
    assert "Traceback" not in second.output
    assert_all_gone(data_dir, [*known, first.pid, second.pid])
    normal_run(start, data_dir, urls, 20)


def test_signals_during_the_job_leave_no_process(
    tmp_path: Path, urls: Path, start: Callable[..., ItmProcess]
) -> None:
    data_dir = tmp_path / "itm"
    sequences = {
        "Ctrl-C twice": (signal.SIGINT, signal.SIGINT),
        "SIGTERM while stopping": (signal.SIGINT, signal.SIGTERM),
        "SIGKILL": (signal.SIGKILL,),
    }
    for name, signums in sequences.items():
        run = start(data_dir, urls, "--no-serve", *SLOW)
        run.wait_for("itm: run ")
        known = server_pids(data_dir)
        run.signal(*signums)
        assert run.wait() != 0, name
        assert_all_gone(data_dir, [*known, run.pid])

    # SIGKILL at start: the supervisor is starting the server for a run that is gone.
    run = start(data_dir, urls, "--no-serve")
    wait_until(
        lambda: "itm.embedded" in " ".join(processes_of(data_dir).values()),
        "the supervisor to start",
    )
    run.signal(signal.SIGKILL)
    run.wait()
    assert_all_gone(data_dir, [run.pid])
    normal_run(start, data_dir, urls, 20)


# --- the same lifecycle in process: no Ray needed -----------------------------------------------


def answers(uri: str) -> bool:
    client = connect(uri, timeout_ms=2000)
    try:
        return client.admin.command("ping")["ok"] == 1
    finally:
        client.close()


def test_runs_starting_at_once_get_one_server(tmp_path: Path) -> None:
    mongos = [EmbeddedMongo(tmp_path) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        uris = list(pool.map(EmbeddedMongo.start, mongos))
    assert len(set(uris)) == 1
    assert sorted(m.joined for m in mongos) == [False, True, True]
    known = server_pids(tmp_path)
    for mongo in mongos[:2]:
        mongo.stop()
        assert answers(uris[0])
    mongos[2].stop()  # the last one out waits until the server has stopped
    assert not any(pid.alive() for pid in known)
    assert not processes_of(tmp_path)


def test_a_dead_supervisor_or_a_hung_server_is_recovered_from(tmp_path: Path) -> None:
    with EmbeddedMongo(tmp_path, grace=1) as uri:
        supervisor, server = server_pids(tmp_path)
        os.kill(supervisor.pid, signal.SIGKILL)  # the supervisor itself: its server dies too
        wait_until(lambda: not server.alive(), "the server to die with its supervisor")
    assert (tmp_path / "embedded.json").exists()  # stale: its pids are dead
    mongo = EmbeddedMongo(tmp_path, grace=1)
    assert answers(mongo.start())  # a new supervisor, and the journal brings the data back
    known = server_pids(tmp_path)
    assert known[0] != supervisor
    os.kill(known[1].pid, signal.SIGSTOP)  # hung: it cannot act on its one SIGTERM
    mongo.stop()  # ...so it gets SIGKILL after the grace period
    assert not any(pid.alive() for pid in known)
    (tmp_path / "embedded.json").write_text("{not json")  # a torn or edited state file
    with EmbeddedMongo(tmp_path) as uri:
        assert answers(uri)
    assert not processes_of(tmp_path)


def test_a_failure_to_start_says_in_one_line_what_holds_the_data(
    tmp_path: Path, urls: Path, start: Callable[..., ItmProcess]
) -> None:
    data_dir = tmp_path / "itm"

    def failure() -> str:
        run = start(data_dir, urls, "--no-serve")
        assert run.wait() == 1
        (line,) = run.output.strip().splitlines()  # one line, no traceback
        return line

    with EmbeddedMongo(data_dir) as uri:
        supervisor, server = server_pids(data_dir)
        os.kill(server.pid, signal.SIGSTOP)  # its supervisor lives, but it does not answer
        try:
            line = failure()
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert answers(uri)
    assert line.startswith(f"itm: the embedded MongoDB of {data_dir} (port ")
    assert line.endswith(f"does not answer: stop it (kill {supervisor.pid}) and run again")

    with (data_dir / "mongo" / "WiredTiger.lock").open("a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # as a server that itm did not start holds it
        line = failure()
    assert line.startswith(
        f"itm: the embedded MongoDB data in {data_dir}/mongo is held by process {os.getpid()} ("
    )
    assert line.endswith(f"stop it (kill {os.getpid()}) or use another --data-dir")
    assert not processes_of(data_dir)
