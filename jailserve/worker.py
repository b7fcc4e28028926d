"""A worker: a fork of the master that serves requests with _core's loop until told to stop.

The master forks, then calls `Worker.run(wid, slot)` in the child with HUP/INT/TERM/QUIT
blocked (so no signal can hit the child before it has its own handlers).  The worker:
  1. installs its handlers and unblocks: SIGHUP/SIGINT/SIGTERM/SIGQUIT all stop it
     gracefully (GracefulStop below: no new connection, the one in hand is served to its
     end, then _core's loop returns; the master escalates to SIGKILL after its mercy);
  2. with lazy-apps, runs pre-app hooks, loads the app, runs post-app hooks (uWSGI step 37);
  3. tells the master it is ready (`on_ready`: a chain reload waits for it), then runs
     `_core.serve()` on the inherited listening sockets until stop or max-requests
     (+ wid * max-requests-delta, so that workers are not all recycled at once);
  4. returns its exit code; the master's fork wrapper `os._exit`s with it, so no atexit
     handler of the master (vacuum, lock cleanup) runs in a worker.

Memory: the app, the listeners and this object are inherited from the master; nothing here
copies them, so the worker's pages stay shared until the app itself writes to them.
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback

from . import _core, apps, log, uwsgi_compat

STOP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


class Worker:
    """Everything a worker needs, prepared in the master before the first fork."""

    def __init__(self, listeners, app, app_spec, config, hook_plan=None, run_hooks=None, slots=None):
        self.listeners = listeners          # [(socket.socket, kind)]
        self.app = app                      # None with lazy-apps: loaded after fork
        self.app_spec = app_spec
        self.config = config
        self.hook_plan = hook_plan
        self.run_hooks = run_hooks          # hooks.run_phase, or None when there are no hooks
        self.server_name = socket.gethostname()
        total = slots.total if slots is not None else None     # the instance's request count
        self.request_log = None if config.get("disable-logging") else log.RequestLog(config, total)
        self.on_ready = None                # master.worker_ready, wired by startup
        self.wid = 0

    def run(self, wid: int, slot) -> int:
        """The worker's life; returns the exit code (apps.FAILED_APP_CODE when the app fails)."""
        self.wid = wid
        self._install_signals(GracefulStop(self.listeners, slot, _core.request_stop))
        uwsgi_compat.set_worker_id(wid)
        app = self.app
        if app is None:
            try:
                app = self._load_lazy(wid)
            except apps.AppLoadError as exc:
                log.emit(f"worker {wid}: {exc}")
                return apps.FAILED_APP_CODE
        if self.request_log is not None:
            self.request_log.start(wid)
        if self.on_ready is not None:
            self.on_ready()
        cores = self.config.get("async")
        if cores:
            # async mode: the greenlet hub stops accepting on request_stop() and finishes
            # every request in flight itself (docs/async.md)
            for signum in STOP_SIGNALS:
                signal.signal(signum, _async_stop)
            _core.serve_async(self.listeners, app, self._serve_config(_core, slot), cores)
        else:
            _core.serve(self.listeners, app, self._serve_config(_core, slot))
        return 0

    def _install_signals(self, stop) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, stop)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _load_lazy(self, wid: int):
        if self.run_hooks is not None:
            self.run_hooks(self.hook_plan, "pre-app")
        app = apps.load(self.app_spec)
        log.emit(f"WSGI app 0 (mountpoint='') ready in worker {wid} (pid: {os.getpid()})")
        if self.run_hooks is not None:
            self.run_hooks(self.hook_plan, "post-app")
        return app

    def _serve_config(self, _core, slot):
        config = self.config
        return _core.ServeConfig(
            buffer_size=config.get("buffer-size"),
            socket_timeout=config.get("socket-timeout"),
            max_requests=_max_requests(config, self.wid),
            server_name=self.server_name,
            log=self.request_log,
            status_slot=slot,
        )


def _max_requests(config, wid: int) -> int:
    limit = config.get("max-requests")
    return limit + wid * config.get("max-requests-delta") if limit else 0


SLOT = struct.Struct("=QQ")
POLL = 0.005            # how often a stopping worker looks whether its connection is done


class GracefulStop:
    """The stop signals' handler: finish the connection in hand, take no new one.

    `_core.request_stop()` alone would also end a connection that was accepted but whose
    request bytes have not arrived yet (the loop reads it as an idle connection), and that
    client would see its connection closed with no answer: the classic reload race.  So the
    handler first replaces, in this process only, each listening fd by a listening socket
    nobody can connect to (dup2: the master and the other workers keep the real one, the
    kernel keeps queueing on it), so no further connection can be accepted here; a thread
    then watches the fds and calls request_stop() once no accepted connection is open (or
    the one open is an idle keep-alive one that has served a request since the signal), and
    wakes the loop with a signal.  Idempotent: later stop signals change nothing.
    """

    def __init__(self, listeners, slot, request_stop):
        self.listeners = listeners
        self.slot = slot
        self.request_stop = request_stop
        self.started = False
        self.main = threading.get_ident()
        self.local = [_local_name(sock) for sock, _ in listeners]

    def __call__(self, signum, frame) -> None:
        if self.started:
            return
        self.started = True
        for sock, _ in self.listeners:
            dummy = _unreachable_listener()
            os.dup2(dummy.fileno(), sock.fileno(), inheritable=False)
            dummy.close()
        done0 = self._slot()[1]
        threading.Thread(target=self._watch, args=(done0,), daemon=True).start()

    def _slot(self) -> tuple[int, int]:
        return SLOT.unpack_from(self.slot, 0) if self.slot is not None else (0, 0)

    def _watch(self, done0: int) -> None:
        while True:
            held = self._connections()
            start, done = self._slot()
            if not held or (start == 0 and done > done0 and held <= 1):
                break
            time.sleep(POLL)
        self.request_stop()
        # Wake the loop out of its poll() with a signal (EINTR, then it sees the flag).  Once
        # is not enough: a signal landing just before the loop enters poll() would leave it
        # asleep for its 1 s slice, so repeat until the process is gone (it exits right
        # after serve() returns; the handler ignores the repeats).
        for _ in range(int(60 / POLL)):
            try:
                signal.pthread_kill(self.main, signal.SIGHUP)
            except (OSError, ValueError):
                return
            time.sleep(POLL * 4)

    def _connections(self) -> int:
        """Accepted sockets open in this process: a stream socket, not listening, whose local
        address is one of our listeners' (the app's own client sockets have other ports)."""
        n = 0
        for fd in _open_fds():
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                continue
            try:
                if sock.type != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                if _local_name(sock) in self.local:
                    n += 1
            except OSError:
                pass
            finally:
                sock.detach()
        return n


def _local_name(sock):
    try:
        name = sock.getsockname()
    except OSError:
        return None
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return (sock.family, name[1])            # a wildcard listener's connections have its port
    return (sock.family, name)


def _open_fds() -> list[int]:
    try:
        return [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
    except OSError:
        import resource
        return list(range(3, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 4096)))


def _unreachable_listener() -> socket.socket:
    """A non-blocking listening socket no client can reach: an autobound abstract unix socket
    on Linux, else TCP on loopback with a kernel-chosen port and a backlog of zero."""
    if sys.platform.startswith("linux"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("")
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    sock.setblocking(False)
    return sock


def _async_stop(signum, frame) -> None:
    _core.request_stop()


def run_forked(worker: Worker, wid: int, slot) -> int:
    """Wrap Worker.run so any escape becomes a logged exit code, never a second master."""
    try:
        return worker.run(wid, slot)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
