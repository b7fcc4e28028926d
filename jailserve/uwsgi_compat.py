"""The `uwsgi` module an app imports when it runs under jailserve.

`install()` puts this module into sys.modules['uwsgi'] before the app is loaded, so
`import uwsgi` works in the app without shipping a top-level `uwsgi` package (which would
shadow a real uWSGI installed beside us).  Outside jailserve `import uwsgi` fails as usual,
which is how apps detect that they are not under a uWSGI-like server.

Values follow plugins/python/uwsgi_pymodule.c: `opt` is the option dict (str values here,
bytes in uWSGI on Python 3), `worker_id()` is 1..N in a worker and 0 in the master,
`numproc` the number of workers, `masterpid()` the master's pid (0 without a master).
"""
from __future__ import annotations

import sys

from . import locks

SPOOL_OK = -2          # constants some apps reference at import time
SPOOL_RETRY = -1
SPOOL_IGNORE = 0

opt: dict = {}
numproc: int = 1
version = b"2.0.31-jailserve"       # apps check uwsgi.version; bytes as in uWSGI
hostname = b""
started_on = 0

_worker_id = 0
_master_pid = 0


def install(config, processes: int, master_pid: int) -> None:
    """Fill the module from the config and register it as `uwsgi` (idempotent)."""
    import socket
    import time

    global opt, numproc, _master_pid, hostname, started_on
    opt = config.uwsgi_opt()
    numproc = processes
    _master_pid = master_pid
    hostname = socket.gethostname().encode()
    started_on = int(time.time())
    sys.modules.setdefault("uwsgi", sys.modules[__name__])


def set_worker_id(wid: int) -> None:
    """Called in a worker right after fork."""
    global _worker_id
    _worker_id = wid


def worker_id() -> int:
    return _worker_id


def masterpid() -> int:
    return _master_pid


def lock(n: int = 0) -> None:
    locks.lock(n)


def unlock(n: int = 0) -> None:
    locks.unlock(n)


def is_locked(n: int = 0) -> bool:
    return locks.is_locked(n)
