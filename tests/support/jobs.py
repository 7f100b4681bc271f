"""Helpers of the job's tests: the repository root, an input file, and ``python -m
itm.run`` in this process or as a driver process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pymongo.database import Database

from itm.embedded.proc import Pid
from itm.job.ray_runtime import LOCAL_ENV
from itm.run import main
from tests.support.servers import PicsumServer
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def write_urls(folder: Path, lines: list[str]) -> Path:
    urls = folder / "urls.txt"
    urls.write_text("\n".join(lines) + "\n")
    return urls


def job_flags(mongo_uri: str, db_name: str, urls: Path, *flags: str) -> list[str]:
    """The flags of a ``--no-serve`` job on ``urls`` into ``db_name``, then ``flags``.

    With ``--allow-private-addresses``: the tests' image servers are on loopback.
    """
    return [
        "--urls",
        str(urls),
        "--mongo-uri",
        mongo_uri,
        "--db",
        db_name,
        "--no-serve",
        "--allow-private-addresses",
        *flags,
    ]


def run_itm(mongo_uri: str, db_name: str, urls: Path, *flags: str) -> int:
    """``python -m itm.run --no-serve`` in this process, on the session's Ray."""
    return main(job_flags(mongo_uri, db_name, urls, *flags))


def itm_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "itm.run", *flags]


def run_itm_process(
    mongo_uri: str, db_name: str, urls: Path, *flags: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The job of ``run_itm`` as a driver process of its own (e.g. on a cluster's Ray)."""
    return subprocess.run(
        itm_command(*job_flags(mongo_uri, db_name, urls, *flags)),
        cwd=ROOT,
        env=os.environ | LOCAL_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def as_in_a_terminal() -> None:
    """Ctrl-C and Ctrl-\\ do what they do in a terminal, whatever the tests inherited: a
    shell script that starts a command in the background (``pytest &``) makes it
    ignore SIGINT, its children too, and a Python that starts so never raises
    KeyboardInterrupt (a run then waited for ever after its Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class ItmProcess:
    """``python -m itm.run`` in its own session (as in a terminal), its output collected."""

    def __init__(self, *flags: str) -> None:
        self.process = subprocess.Popen(
            itm_command(*flags),
            cwd=ROOT,
            env=os.environ | LOCAL_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=as_in_a_terminal,
        )
        self.pid = Pid.of(self.process.pid)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        """Until ``text`` is in the output; fails at once, with the output, if it exited."""

        def seen() -> bool:
            assert self.process.poll() is None or text in self.output, self.output
            return text in self.output

        wait_until(seen, f"{text!r} in the output", timeout)

    def signal(self, *signums: int, pause: float = 0.3) -> None:
        """Signals to the whole process group, as a terminal sends Ctrl-C.

        A group that is gone already (a fast machine stopped everything before the
        next signal) gets no more: the sequence then ends early, it does not fail.
        """
        for signum in signums:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                return
            time.sleep(pause)

    def wait(self, timeout: float = 120.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code


@dataclass
class PicsumRun:
    """The canonical input, run once against a local picsum: shared, read-only."""

    db: Database
    run_id: str
    server: PicsumServer
    lines: list[str]
