"""A worker: a fork of the master that serves requests with _core's loop until told to stop.

The master forks, then calls `Worker.run(wid, slot)` in the child with HUP/INT/TERM/QUIT
blocked (so no signal can hit the child before it has its own handlers).  The worker:
  1. installs its handlers and unblocks: SIGHUP/SIGINT/SIGTERM/SIGQUIT all stop it
     gracefully (no new connection, the one in hand is served to its end, then _core's
     loop returns; the master escalates to SIGKILL after its mercy);
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
        self.harakiri_alarm = 0             # harakiri without a master (set by startup)
        self.wid = 0

    def run(self, wid: int, slot) -> int:
        """The worker's life; returns the exit code (apps.FAILED_APP_CODE when the app fails)."""
        self.wid = wid
        self._install_signals(_graceful_stop)
        if self.harakiri_alarm:
            signal.signal(signal.SIGALRM, lambda signum, frame: _harakiri_alarm(slot))
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
            # every request in flight itself (docs/async.md); the same handlers apply
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
            harakiri_alarm=self.harakiri_alarm,
        )


def _max_requests(config, wid: int) -> int:
    limit = config.get("max-requests")
    return limit + wid * config.get("max-requests-delta") if limit else 0


def _graceful_stop(signum, frame) -> None:
    """A stop signal in a worker: take no new connection, finish what is in hand.  The sync
    loop serves a connection it has accepted even when the stop comes before its request
    (the reload race); the greenlet hub finishes every request in flight."""
    _core.request_stop()


class Harakiri(SystemExit):
    """harakiri without a master: the process ends (with 0, as uWSGI's exit(0)), unwinding
    the request, so the instance's cleanup (vacuum, locks, jail) still runs on the way out."""


def _harakiri_alarm(slot) -> None:
    """SIGALRM from _core's alarm(harakiri).  uWSGI core/uwsgi.c harakiri() logs these two
    lines and exits; an alarm delivered as the request ended (its slot says idle) is ignored.
    A request stuck in C code that never returns to the interpreter is not interrupted: that
    takes the master's SIGKILL."""
    if slot is not None and struct.unpack_from("=Q", slot, 0)[0] == 0:
        return
    log.emit(f"\nKilling the current process (pid: {os.getpid()} app_id: 0)...")
    log.emit("*** if you want your workers to be automatically respawned consider enabling the master process ***")
    raise Harakiri(0)


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
