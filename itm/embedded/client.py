"""A run's side of the embedded server: join the data directory's server, or start
its supervisor (``itm.embedded.supervisor``), and leave it."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from pymongo.errors import PyMongoError

from itm.config import free_port
from itm.embedded.datadir import (
    GRACE_SECONDS,
    POLL_SECONDS,
    READY,
    EmbeddedMongoError,
    Files,
    State,
    try_lock,
    unused,
    uri_of,
)
from itm.embedded.proc import Pid, holders, process_label
from itm.store import connect


def _answers(uri: str, timeout_ms: int) -> bool:
    client = connect(uri, timeout_ms=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _child_env() -> dict[str, str]:
    """The supervisor imports this very ``itm``, wherever the run was started from."""
    root = str(Path(__file__).resolve().parents[2])
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
        while not try_lock(lock, fcntl.LOCK_EX):
            if time.monotonic() > deadline:
                held = ", ".join(map(process_label, holders(self.files.lock))) or "another process"
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
                f"{process_label(state.supervisor.pid)}) does not answer: stop it "
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
                if try_lock(lock, fcntl.LOCK_EX):
                    in_use = not unused(users)
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
