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

from . import _core, locks

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


def reload() -> bool:
    """uwsgi.reload(): ask the master for a graceful reload (as SIGHUP does).  False without a
    master (uWSGI returns None there; nothing would re-exec)."""
    import os
    import signal

    if not _master_pid:
        return False
    os.kill(_master_pid, signal.SIGHUP)
    return True


def lock(n: int = 0) -> None:
    locks.lock(n)


def unlock(n: int = 0) -> None:
    locks.unlock(n)


def is_locked(n: int = 0) -> bool:
    return locks.is_locked(n)


# -- what uwsgidecorators uses at import and in its @lock decorator --------------------------
# jailserve has no spooler and no mules: every process is the master or a worker.

_mule_msg_hook = None


def i_am_the_spooler() -> bool:
    return False


def mule_id() -> int:
    return 0


def install_mule_msg_hook(hook) -> None:
    """Kept for uwsgidecorators' import; no mule ever sends a message here."""
    global _mule_msg_hook
    _mule_msg_hook = hook


# -- async mode (issue 8; UWSGI_SEMANTICS §11, docs/async.md) ------------------------------
# In async mode (`async = N`) these go to the greenlet hub in _core: wait_fd_read/write and
# async_sleep register a wait, and the request's greenlet waits at uwsgi.suspend() (or, as
# in uWSGI's greenlet engine, when the app yields its next chunk; jailserve also when the app
# returns), while the worker serves its other requests.  Without async mode they block the
# worker: the same app keeps its meaning, one request at a time.  Like uWSGI, there is no
# monkey-patching: a plain blocking call in the app blocks the whole worker.

_sync_ready_fd = -1


def suspend() -> None:
    """Give the CPU to the worker's other requests until a registered wait ends (with none
    registered: once round the loop).  Sync mode: nothing to switch to."""
    if _core.async_active():
        _core.async_suspend()


def wait_fd_read(fd: int, timeout: float = 0) -> bytes:
    """Wait until fd is readable, at most timeout seconds (0: no limit); then ready_fd()."""
    return _wait_fd(fd, False, timeout)


def wait_fd_write(fd: int, timeout: float = 0) -> bytes:
    """Wait until fd is writable, at most timeout seconds (0: no limit); then ready_fd()."""
    return _wait_fd(fd, True, timeout)


def _wait_fd(fd, write: bool, timeout) -> bytes:
    global _sync_ready_fd
    fd = fd if isinstance(fd, int) else fd.fileno()
    if _core.async_active():
        _core.async_wait_fd(fd, write, float(timeout or 0))
    else:
        import select

        wait = float(timeout) if timeout and timeout > 0 else None
        ready = select.select([], [fd], [], wait)[1] if write else select.select([fd], [], [], wait)[0]
        _sync_ready_fd = fd if ready else -1
    return b""          # uWSGI returns an empty string, so `yield uwsgi.wait_fd_read(fd)` works


def async_sleep(seconds: float) -> bytes:
    """Suspend this request for `seconds` (async mode: the others go on; sync: time.sleep)."""
    if _core.async_active():
        _core.async_sleep(float(seconds))
    else:
        import time

        time.sleep(max(0.0, float(seconds)))
    return b""


def ready_fd() -> int:
    """The fd whose readiness ended the last wait; -1 when it ended by its timeout."""
    if _core.async_active():
        return _core.async_ready_fd()
    return _sync_ready_fd


def async_connect(addr: str) -> int:
    """Start a non-blocking connect to "host:port" (TCP) or a unix socket path and return its
    fd (yours to close); wait for it with wait_fd_write(fd, t) + suspend(), then check
    SO_ERROR, as with uWSGI."""
    import socket

    host, sep, port = addr.rpartition(":")
    if sep and port.isdigit() and "/" not in addr:
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        target = (host, int(port))
    else:
        family, target = socket.AF_UNIX, addr
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(target)
    except BlockingIOError:
        pass
    except OSError:
        sock.close()
        raise
    return sock.detach()
