"""One image server on thousands of loopback addresses, in a process of its own.

Each address (``127.1.X.Y``, all loopback on Linux) is a host of its own to a
client, so a download worker can meet thousands of hosts with no DNS; the server's
listening sockets (one per address) stay out of the test process's file descriptors.
Every answer is the same small JPEG, keep-alive.

``python -m tests.support.many_hosts COUNT`` prints its port once it listens, and
stops when its stdin closes (so it never outlives the test that started it).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from tests.support.servers import jpeg

ROOT = Path(__file__).resolve().parents[2]


def addresses(count: int) -> list[str]:
    return [f"127.1.{n // 250}.{n % 250 + 1}" for n in range(count)]


async def _serve(count: int) -> None:
    body = jpeg()
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:  # asyncio sets TCP_NODELAY; each answer goes out in one write
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    hosts = addresses(count)
    first = await asyncio.start_server(handle, hosts[0], 0)
    port = first.sockets[0].getsockname()[1]
    await asyncio.start_server(handle, hosts[1:], port)
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    os._exit(0)  # at once: the connections still open need no goodbye


class ManyHosts:
    """The server of this module for ``count`` hosts, as a context manager."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.jpeg = jpeg()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.many_hosts", str(count)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __enter__(self) -> ManyHosts:
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(30)
        assert self._process.stdout is not None
        self._process.stdout.close()

    def urls(self) -> list[str]:
        """One image URL per host."""
        return [
            f"http://{host}:{self.port}/{n}.jpg" for n, host in enumerate(addresses(self.count))
        ]


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
