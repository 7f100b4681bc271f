"""Counts the host-name lookups of every process a benchmark starts, whatever it is.

``benchmarks.bench_web`` puts this folder first on ``PYTHONPATH`` of the pipelines it
measures (itm, its Ray workers, the pool script, img2dataset and its processes), so
Python imports it at start-up. Each ``socket.getaddrinfo`` of a name ending in
``ITM_BENCH_DNS_SUFFIX`` that is a real lookup (not ``AI_NUMERICHOST``, which only
parses an address) appends one byte to the file ``ITM_BENCH_DNS_LOG``: the file's
size is the count, summed over processes without any of them reporting it.
"""

import os
import socket

_LOG = os.environ.get("ITM_BENCH_DNS_LOG")
_SUFFIX = os.environ.get("ITM_BENCH_DNS_SUFFIX", "")

if _LOG and _SUFFIX:
    _getaddrinfo = socket.getaddrinfo

    def _counted(host, port, family=0, type=0, proto=0, flags=0):
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if isinstance(host, str) and host.endswith(_SUFFIX) and not flags & socket.AI_NUMERICHOST:
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
        return _getaddrinfo(host, port, family, type, proto, flags)

    socket.getaddrinfo = _counted
