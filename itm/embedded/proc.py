"""Processes told apart and named, read from Linux's ``/proc``.

Elsewhere every process looks gone and no lock holder is known: a run then never
joins (nor kills) a server by pid, and its messages name no process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


def process_label(pid: int) -> str:
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
