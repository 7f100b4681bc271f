"""An itm data directory's embedded server: where its things live, the state a run
joins by, and the locks that order the runs and the supervisor (``itm.embedded``)."""

from __future__ import annotations

import fcntl
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from itm.embedded.proc import Pid

GRACE_SECONDS = 20.0  # a server's time to stop after its SIGTERM, before SIGKILL
POLL_SECONDS = 0.2  # how often the supervisor looks whether any run still uses the server
READY = "ready"  # the supervisor's answer to the run that started it, when all went well


class EmbeddedMongoError(RuntimeError):
    """The embedded server could not be started; the message says why, in one line."""


def uri_of(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def try_lock(file: IO[str], how: int) -> bool:
    try:
        fcntl.flock(file, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unused(users: IO[str]) -> bool:
    """No run holds its shared lock on the users file (ask under the exclusive start lock)."""
    if not try_lock(users, fcntl.LOCK_EX):
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
