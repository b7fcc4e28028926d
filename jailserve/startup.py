"""Carry out a validated Plan: DESIGN §3 steps 3-10, in uWSGI's order (UWSGI_SEMANTICS §2).

Orchestration only: every step is one call into the module that owns it, and nothing here
tests the platform.  The order, with uWSGI's step numbers:

   7  asap hooks                               (every start)
   9  logto                                    (before the jail: the file is outside it)
  10  banner; pidfile                          (first start only, as the starting user)
  11  shared sockets                           (first start only, before jail and drop)
  14  pre-jail hooks                           (first start only)
  17  jail: create or attach                   (first start only; Linux: a keeper stays out)
  19  in-jail hooks                            (every start)
  21d post-jail hooks                          (only when a jail was made, or `jailed`)
  21j as-root hooks; 21l drop gid/groups/uid; 21o as-user hooks
  22  chdir; pidfile2
  26  bind sockets (inherited ones adopted on a re-exec)
  27  with `chown-socket` the drop (and as-user hooks) happen here instead, after binding
  24  locks (before any fork, after the drop so semaphores belong to uid)
  32  pythonpath/virtualenv; pre-app hooks, load the app, post-app hooks (unless lazy-apps)
  36  fork workers; the master supervises (or, without `master` and one process, serve here)

Steps 3-6 are skipped on a reload (re-exec, issue 7): the process is already in the jail.
On a reload the listening sockets (shared ones too) are taken from the inherited fds first
(sockets.find_inherited: matched by bound address, as uWSGI); `reexec()` is the master's
reload action: back to the original cwd, sockets kept open across exec, UWSGI_RELOADS + 1,
exec binary-path (default: this interpreter -m jailserve) with the original arguments.
docs/reload.md has the whole flow.
"""
from __future__ import annotations

import atexit
import gc
import os
import signal
import sys

# Everything the start-up needs after the privilege drop and the jail is imported now: after
# them the interpreter's own files may no longer be readable (a jail without the stdlib, a
# uid that cannot read the install).
from . import (
    __version__,
    _jail,
    apps,
    hooks,
    locks,
    log,
    privileges,
    sockets,
    uwsgi_compat,
)
from . import master as master_mod
from .apps import AppLoadError
from .master import RELOAD_ENV, Master, MasterConfig, ReloadReport, StatusSlots
from .privileges import DropError
from .worker import Worker, run_forked

__all__ = ["StartupError", "run"]


class StartupError(Exception):
    """A step of the start-up failed after validation; the message says which and why."""


DEFERRED = (signal.SIGHUP, signal.SIGTERM)


class _Deferred:
    """uWSGI does not let SIGHUP/SIGTERM kill a starting instance (UWSGI_SEMANTICS §2 step 1).
    It ignores them; we record them instead, and the master acts on them once it runs (a
    reload asked for during start-up happens right after it).  A recording handler, unlike
    SIG_IGN, does not leak into hook commands: exec() resets it."""

    def __init__(self):
        self.seen: list[int] = []
        for signum in DEFERRED:
            signal.signal(signum, self.record)

    def record(self, signum, frame) -> None:
        self.seen.append(signum)


RELOADS_ENV = "UWSGI_RELOADS"


def run(plan) -> int:
    """Start the instance described by `plan`; returns the process's exit code."""
    config = plan.config
    drop = privileges.plan_drop(config)          # pure; bad values are ConfigErrors
    deferred = _Deferred()
    # a re-exec blocked them so that none could kill the new image before the recorder is in
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DEFERRED)
    try:
        return _run(plan, config, drop, deferred)
    except ExitOnReload:
        return 0
    except (AppLoadError, DropError, hooks.HookFailed, StartupError) as exc:
        log.emit(f"jailserve: {exc}")
        return apps.FAILED_APP_CODE if isinstance(exc, AppLoadError) else 1
    except OSError as exc:
        log.emit(f"jailserve: {exc}")
        return 1


def _run(plan, config, drop, deferred) -> int:
    first = not config.is_reload
    cwd = os.getcwd()                  # where a re-exec goes back to (uWSGI: the original cwd)
    inherited = _adopt_inherited(plan) if not first else {}
    apps.apply_env(plan.app)
    hooks.run_phase(plan.hooks, "asap", log.emit)
    if first or plan.jail is None:       # in a jail the file is outside: fds 1/2 still point at it
        log.setup_logto(config.get("logto"))
    _banner(config)
    cleanup = Cleanup(config)
    shared: list = []
    if not first:
        shared = _inherited_shared(plan, inherited)
        if plan.jail is None and config.get("pidfile") and config.get("vacuum"):
            cleanup.paths.append(os.path.abspath(config.get("pidfile")))    # written by the first start
        log.emit(f"reload {os.environ.get(RELOADS_ENV)} of this instance (pid {os.getpid()}): "
                 "pidfile, shared sockets, pre-jail hooks and the jail are kept from the first start")
    else:
        cleanup.write_pidfile("pidfile")
        shared = sockets.bind_shared(plan.sockets, log.emit)
        hooks.run_phase(plan.hooks, "pre-jail", log.emit)
        if _enter_jail(plan):
            cleanup.entered_jail()
    hooks.run_phase(plan.hooks, "in-jail", log.emit)
    if (first and plan.jail is not None) or config.get("jailed"):
        hooks.run_phase(plan.hooks, "post-jail", log.emit)
    hooks.run_phase(plan.hooks, "as-root", log.emit)
    bind_first = bool(config.get("chown-socket"))    # uWSGI: chown-socket delays the drop
    if not bind_first:
        _drop(plan, drop)
    _chdir(plan.app)
    listeners = sockets.bind_listeners(plan.sockets, shared, inherited, log.emit)
    if not first:
        sockets.close_stray(log.emit)
    cleanup.add_unix_sockets(plan.sockets)
    if bind_first:
        _drop(plan, drop)
    cleanup.write_pidfile("pidfile2")
    if not listeners:
        raise StartupError("no socket to serve on (set http-socket, http11-socket or socket)")
    return _serve(plan, config, listeners, shared, cleanup, deferred, cwd)


def _adopt_inherited(plan) -> dict:
    """A re-exec: the listening fds the previous image left open, by address, made
    non-inheritable again at once (hook commands must not get them)."""
    found = sockets.find_inherited(plan.sockets)
    for sock in found.values():
        sock.set_inheritable(False)
    return found


def _inherited_shared(plan, inherited: dict) -> list:
    shared = []
    for spec in plan.sockets:
        if spec.shared:
            sock = inherited.pop(spec.address.raw, None)
            if sock is None:                 # a shared-socket added to the config since
                sock = sockets.bind_one(spec, log.emit)
            else:
                log.emit(f"shared-socket {spec.index} inherited address {spec.address.raw} fd {sock.fileno()}")
            shared.append(sock)
    return shared


def _banner(config) -> None:
    log.emit(f"*** Starting jailserve {__version__} (Python {sys.version.split()[0]}) ***")
    log.emit(f"detected binary path: {sys.executable}")
    if not config.get("master"):
        log.emit("*** WARNING: you are running jailserve without its master process manager ***")


def _enter_jail(plan) -> bool:
    spec = plan.jail
    if spec is None:
        return False
    from . import jail

    backend = jail.backend_for()
    if spec.source is None:
        backend.attach(spec)
        log.emit(f"attached to jail {spec.attach} (pid {os.getpid()})")
    else:
        backend.create(spec)
        log.emit(f"jailed: root {spec.root} hostname {spec.hostname} name {spec.name} (pid {os.getpid()})")
    return True


def _drop(plan, drop) -> None:
    privileges.drop(drop, log.emit)
    hooks.run_phase(plan.hooks, "as-user", log.emit)


def _chdir(app_spec) -> None:
    if app_spec.chdir:
        os.chdir(app_spec.chdir)
        log.emit(f"chdir() to {app_spec.chdir}")


def _serve(plan, config, listeners, shared, cleanup, deferred, cwd) -> int:
    processes = config.get("processes")
    use_master = config.get("master") or processes > 1
    locks.setup(config)                   # semaphores made after the drop belong to uid
    cleanup.locks = locks
    uwsgi_compat.install(config, processes, os.getpid() if use_master else 0)
    apps.prepare_paths(plan.app)
    app = None if plan.app.lazy else _load_app(plan)
    # shared with every worker: harakiri and `req: R/T`; spare slots for chain reloads
    slots = StatusSlots(processes, spare=processes)
    worker = Worker(listeners, app, plan.app, config, plan.hooks, hooks.run_phase, slots)
    try:
        if not use_master:
            # uWSGI: without master and with one process, the process is worker 1.
            worker.harakiri_alarm = config.get("harakiri")    # uWSGI's SIGALRM variant
            return run_forked(worker, 1, slots.slot(1))
        # The start-up's garbage (config parsing, modules compiled without a current .pyc)
        # goes first, and the heap's free pages back to the kernel: a worker would start with
        # a share of them.  Objects made so far live for the whole run; freezing them keeps
        # the collector from writing to their pages in every worker, so those pages stay
        # shared (DESIGN §5).
        gc.collect()
        _jail.malloc_trim()
        gc.freeze()
        reloaded = ReloadReport.decode(os.environ.pop(RELOAD_ENV, ""))
        action = None if config.get("lazy") else (
            lambda report: reexec(config, listeners, shared, cwd, report))
        mc = MasterConfig.from_config(config, on_worker_exit=locks.release_dead, reload_action=action,
                                      reloaded=reloaded, on_reopen_logs=lambda: _reopen_logs(config),
                                      on_pidfiles=cleanup.rewrite_pidfiles)
        worker.on_ready = master_mod.worker_ready
        master = Master(mc, lambda wid, slot: run_forked(worker, wid, slot), slots)
        master.queue.extend(deferred.seen)       # signals that came during the start-up
        return master.run()
    finally:
        cleanup.run()


class ExitOnReload(Exception):
    """`exit-on-reload`: a reload ends the instance (exit 0, with the usual cleanup)."""


def exec_argv(config, cwd: str) -> list[str]:
    """binary-path (or this interpreter with -m jailserve) and the original arguments, the
    config files among them made absolute: inside a jail the cwd is not the one they were
    named from."""
    files = {os.path.normpath(os.path.join(cwd, f)) for f in config.files}
    args = [os.path.normpath(os.path.join(cwd, a)) if not a.startswith("-")
            and os.path.normpath(os.path.join(cwd, a)) in files else a for a in config.argv]
    binary = config.get("binary-path")
    return [binary, *args] if binary else [sys.executable, "-m", "jailserve", *args]


def reexec(config, listeners, shared, cwd: str, report: ReloadReport) -> None:
    """The master's reload action (UWSGI_SEMANTICS §6.3 step 3): returns only if exec failed."""
    if config.get("exit-on-reload"):
        log.emit("exit-on-reload: exiting instead of re-executing")
        raise ExitOnReload()
    argv = exec_argv(config, cwd)
    env = dict(os.environ)
    try:
        reloads = int(env.get(RELOADS_ENV, "0")) + 1
    except ValueError:
        reloads = 1
    env[RELOADS_ENV] = str(reloads)
    env[RELOAD_ENV] = report.encode()
    socks = [sock for sock, _ in listeners] + list(shared)
    sockets.keep_across_exec(socks)
    here = os.getcwd()
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")                  # inside a jail the host's cwd may not exist
    log.emit(f"{report.kind} reload: re-executing {' '.join(argv)} (reload {reloads}, "
             f"keeping {len(socks)} listening sockets)")
    sys.stdout.flush()
    sys.stderr.flush()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)   # pending across exec, not lost
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for sock in socks:
            sock.set_inheritable(False)
        os.chdir(here)
        log.emit(f"cannot re-execute {argv[0]}: {exc.strerror or exc}")


def _reopen_logs(config) -> None:
    if config.get("logto"):
        log.setup_logto(config.get("logto"))
        log.emit("log file reopened")


def _load_app(plan):
    hooks.run_phase(plan.hooks, "pre-app", log.emit)
    app = apps.load(plan.app)
    log.emit(f"WSGI app 0 (mountpoint='') ready in the master (pid: {os.getpid()})")
    hooks.run_phase(plan.hooks, "post-app", log.emit)
    return app


class Cleanup:
    """What the master undoes when it exits (not on a re-exec, not in workers): lock
    semaphores always; with `vacuum`, pidfiles and the unix sockets it bound."""

    def __init__(self, config):
        self.vacuum = config.get("vacuum")
        self.config = config
        self.paths: list[str] = []
        self.locks = None
        self.pid = os.getpid()
        atexit.register(self.run)

    def entered_jail(self) -> None:
        """Now inside the jail, maybe as another process (Linux: a fork of the jail's init).
        This process cleans up from here on; paths written before the jail (the pidfile)
        are outside its root and stay with the process left outside (the Linux keeper's
        copy of this object), never resolved against the jail's root by mistake."""
        self.pid = os.getpid()
        self.paths = []

    def add_unix_sockets(self, socket_specs) -> None:
        # absolute now, after chdir, which is what relative socket paths were bound under
        if self.vacuum:
            self.paths += [os.path.abspath(p) for p in sockets.unix_paths(socket_specs)]

    def write_pidfile(self, option: str) -> None:
        path = self.config.get(option)
        if not path:
            return
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
        if self.vacuum:
            self.paths.append(os.path.abspath(path))

    def rewrite_pidfiles(self) -> None:
        """Master FIFO 'P': write the pidfiles again (where this process can)."""
        for option in ("pidfile", "pidfile2"):
            try:
                path = self.config.get(option)
                if path:
                    with open(path, "w") as f:
                        f.write(f"{os.getpid()}\n")
            except OSError as exc:
                log.emit(f"{option}: {exc.strerror or exc}")

    def run(self) -> None:
        if os.getpid() != self.pid:
            return                       # a forked child (worker, hook) never cleans up
        if self.locks is not None:
            engine, self.locks = self.locks, None
            engine.cleanup()
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.paths = []
