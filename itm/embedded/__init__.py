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

from itm.embedded.client import EmbeddedMongo
from itm.embedded.datadir import EmbeddedMongoError

__all__ = ["EmbeddedMongo", "EmbeddedMongoError"]
