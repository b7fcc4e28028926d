"""The master: forks workers, respawns them, enforces harakiri, handles signals (uWSGI 2.0).

The gunicorn arbiter model: signal handlers only enqueue the signal number and wake the loop
through a pipe; `run()` drains the queue into `handle_<name>` methods, reaps dead workers,
checks harakiri once a second and converges on the wanted number of workers.

Signals (UWSGI_SEMANTICS §6.2, the 2.0 column):
  SIGHUP   graceful reload: every worker finishes its request in hand, then `reload_action`
           runs (now: fork a fresh set of workers; issue 7 plugs the re-exec in here)
  SIGTERM  brutal reload (workers get SIGTERM, short mercy); shutdown with `die-on-term`
  SIGINT   shutdown: workers finish the request in hand within the mercy, then exit
  SIGQUIT  shutdown as SIGINT (brutal reload with `die-on-term`, as uWSGI 2.0)
  SIGUSR1  one log line per worker: pid, requests done, busy or idle
  SIGTSTP  pause every worker (SIGSTOP), the next SIGTSTP resumes them (SIGCONT); new
           connections wait in the backlog meanwhile, harakiri does not count paused time
  SIGCHLD  reap
A second SIGINT/SIGQUIT while stopping kills the remaining workers at once.

Per-worker status lives in one anonymous shared mmap made before the first fork: 16 bytes
per worker (u64 start of the current request in CLOCK_MONOTONIC ns, 0 when idle; u64
requests done), slot 0 being the master's, as uwsgi.workers[0].
"""
from __future__ import annotations

import mmap
import os
import select
import signal
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import _jail
from .log import emit

SLOT = struct.Struct("=QQ")
HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGTSTP,
           signal.SIGCHLD)
WORKER_STOP = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
FORKBOMB_DELAY = 2.0          # uWSGI's forkbomb-delay: a worker that dies younger waits this
BRUTAL_MERCY = 3.0            # uWSGI's wait for "brutal" stops when reload-mercy is unset
FAILED_APP_CODE = 22          # a lazy worker that cannot load the app stops the instance

RUNNING, RELOADING, STOPPING = "running", "reloading", "stopping"


class StatusSlots:
    """The shared status array; the master reads, each worker's _core loop writes its slot."""

    def __init__(self, workers: int):
        self.map = mmap.mmap(-1, SLOT.size * (workers + 1))     # MAP_SHARED|MAP_ANONYMOUS
        self.view = memoryview(self.map)

    def slot(self, wid: int) -> memoryview:
        return self.view[SLOT.size * wid:SLOT.size * (wid + 1)]

    def read(self, wid: int) -> tuple[int, int]:
        return SLOT.unpack_from(self.map, SLOT.size * wid)

    def clear(self, wid: int) -> None:
        SLOT.pack_into(self.map, SLOT.size * wid, 0, 0)

    def retire(self, wid: int) -> None:
        """A worker is gone: its requests move to the master's slot, so total() keeps them."""
        master_done = self.read(0)[1]
        SLOT.pack_into(self.map, 0, 0, master_done + self.read(wid)[1])
        self.clear(wid)

    def total(self) -> int:
        """Requests served by the instance so far (uWSGI's T in `req: R/T`): the master's
        slot holds the dead workers' counts, each live worker's slot its own."""
        return sum(SLOT.unpack_from(self.map, off)[1] for off in range(0, len(self.map), SLOT.size))


@dataclass
class WorkerState:
    wid: int
    pid: int
    spawned: float
    harakiri: bool = False      # killed by harakiri: respawn without the fork-bomb delay


@dataclass
class MasterConfig:
    processes: int
    harakiri: int = 0
    die_on_term: bool = False
    reload_mercy: float = 0.0           # 0: unset
    worker_reload_mercy: float = 60.0
    respawn: bool = True                # False without `master`: nothing respawns (uWSGI)
    on_worker_exit: Callable[[int], None] | None = None     # locks.release_dead(pid)
    reload_action: Callable[[], None] | None = None         # issue 7: re-exec; None: respawn

    @classmethod
    def from_config(cls, config, **kw) -> MasterConfig:
        return cls(processes=config.get("processes"), harakiri=config.get("harakiri"),
                   die_on_term=config.get("die-on-term"), reload_mercy=config.get("reload-mercy"),
                   worker_reload_mercy=config.get("worker-reload-mercy"),
                   respawn=config.get("master"), **kw)


class Master:
    """Supervises `processes` forks of this process, each running `work(wid, slot) -> code`.

    `work` is entered in the child with WORKER_STOP signals blocked; it must install its own
    handlers and unblock them (worker.Worker.run does).
    """

    def __init__(self, mc: MasterConfig, work: Callable[[int, memoryview], int],
                 slots: StatusSlots | None = None):
        self.mc = mc
        self.work = work
        self.slots = slots if slots is not None else StatusSlots(mc.processes)
        self.workers: dict[int, WorkerState] = {}       # pid -> state
        self.due: dict[int, float] = {}                 # wid -> when to (re)spawn it
        self.queue: deque[int] = deque()
        self.state = RUNNING
        self.paused = False
        self.deadline: float | None = None
        self.exit_code = 0
        self.reload_started = 0.0
        self.wake_r = self.wake_w = -1
        self.pid = os.getpid()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        self._open_wakeup()
        self._install_signals()
        emit(f"spawned jailserve master process (pid: {os.getpid()})")
        for wid in range(1, self.mc.processes + 1):
            self.due[wid] = 0.0
        try:
            while True:
                self._sleep()
                self._drain_signals()
                self._reap()
                if self.state != RUNNING and not self.workers:
                    if self._finish_stop():
                        return self.exit_code
                    continue
                self._check_deadline()
                self._check_harakiri()
                self._spawn_due()
        finally:
            self._restore_signals()

    def _sleep(self) -> None:
        timeout = 1.0
        now = time.monotonic()
        if self.due and self.state == RUNNING:
            timeout = max(0.0, min(timeout, min(self.due.values()) - now))
        if self.deadline is not None:
            timeout = max(0.0, min(timeout, self.deadline - now))
        try:
            ready, _, _ = select.select([self.wake_r], [], [], timeout)
        except InterruptedError:
            return
        if ready:
            self._empty_wakeup()

    # -- signals: handlers only enqueue -------------------------------------------------

    def _open_wakeup(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _empty_wakeup(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _enqueue(self, signum, frame) -> None:
        self.queue.append(signum)
        try:
            os.write(self.wake_w, b"!")
        except OSError:
            pass            # pipe full: the loop is awake anyway

    def _install_signals(self) -> None:
        for signum in HANDLED:
            signal.signal(signum, self._enqueue)

    def _restore_signals(self) -> None:
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1

    def _drain_signals(self) -> None:
        while self.queue:
            signum = self.queue.popleft()
            handler = getattr(self, "handle_" + signal.Signals(signum).name.lower(), None)
            if handler is not None:
                handler()

    def handle_sigchld(self) -> None:
        pass                # _reap runs after every wake-up

    def handle_sighup(self) -> None:
        self.reload(graceful=True)

    def handle_sigterm(self) -> None:
        if self.mc.die_on_term:
            self.stop("SIGTERM with die-on-term")
        else:
            self.reload(graceful=False)

    def handle_sigint(self) -> None:
        self.stop("SIGINT")

    def handle_sigquit(self) -> None:
        if self.mc.die_on_term:
            self.reload(graceful=False)
        else:
            self.stop("SIGQUIT")

    def handle_sigusr1(self) -> None:
        for st in sorted(self.workers.values(), key=lambda s: s.wid):
            start, done = self.slots.read(st.wid)
            emit(f"worker {st.wid} (pid: {st.pid}) requests: {done} {'busy' if start else 'idle'}")

    def handle_sigtstp(self) -> None:
        if self.state != RUNNING and not self.paused:
            return
        self.paused = not self.paused
        self._kill_all(signal.SIGSTOP if self.paused else signal.SIGCONT)
        emit("paused: workers stopped, send SIGTSTP again to resume" if self.paused else "resumed")

    # -- stopping and reloading ---------------------------------------------------------

    def stop(self, why: str) -> None:
        if self.state == STOPPING:
            emit(f"{why} again: killing the remaining workers")
            self._kill_all(signal.SIGKILL)
            return
        emit(f"{why}: shutting down, waiting for workers to finish their requests")
        self.state = STOPPING
        self.due.clear()
        self._signal_workers(signal.SIGINT, self._mercy(graceful=True))

    def reload(self, graceful: bool) -> None:
        if self.state != RUNNING:
            return
        kind = "graceful" if graceful else "brutal"
        emit(f"{kind} reload: {'gracefully killing' if graceful else 'killing'} workers")
        self.state = RELOADING
        self.reload_started = time.monotonic()
        self.due.clear()
        self._signal_workers(signal.SIGHUP if graceful else signal.SIGTERM, self._mercy(graceful))

    def _mercy(self, graceful: bool) -> float:
        if self.mc.reload_mercy:
            return float(self.mc.reload_mercy)
        return float(self.mc.worker_reload_mercy) if graceful else BRUTAL_MERCY

    def _signal_workers(self, signum: int, mercy: float) -> None:
        self.deadline = time.monotonic() + mercy
        for pid in list(self.workers):
            _kill(pid, signum)
        if self.paused:                     # a stopped worker must run to see its signal
            self.paused = False
            self._kill_all(signal.SIGCONT)

    def _kill_all(self, signum: int) -> None:
        for pid in list(self.workers):
            _kill(pid, signum)

    def _check_deadline(self) -> None:
        if self.deadline is None or time.monotonic() < self.deadline:
            return
        for st in self.workers.values():
            emit(f"worker {st.wid} (pid: {st.pid}) did not stop in time, sending SIGKILL")
            _kill(st.pid, signal.SIGKILL)
        self.deadline = None

    def _finish_stop(self) -> bool:
        """All workers are gone: True to leave the loop, False when running again."""
        self.deadline = None
        if self.state == STOPPING:
            emit("goodbye to jailserve.")
            return True
        if self.mc.reload_action is not None:
            self.mc.reload_action()            # a re-exec does not return
        emit(f"workers stopped in {time.monotonic() - self.reload_started:.3f} s, respawning them")
        self.state = RUNNING
        for wid in range(1, self.mc.processes + 1):
            self.due[wid] = 0.0
        return False

    # -- workers ------------------------------------------------------------------------

    def _spawn_due(self) -> None:
        if self.state != RUNNING:
            return
        now = time.monotonic()
        for wid, when in sorted(self.due.items()):
            if when <= now:
                del self.due[wid]
                self.spawn(wid)

    def spawn(self, wid: int) -> int:
        self.slots.clear(wid)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_STOP)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            emit(f"fork() for worker {wid} failed: {exc.strerror}; retrying in {FORKBOMB_DELAY:.0f} s")
            self.due[wid] = time.monotonic() + FORKBOMB_DELAY
            return 0
        if pid == 0:
            self._child(wid)            # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        self.workers[pid] = WorkerState(wid, pid, time.monotonic())
        if self.paused:
            _kill(pid, signal.SIGSTOP)
        emit(f"spawned jailserve worker {wid} (pid: {pid}, cores: 1)")
        return pid

    def _child(self, wid: int) -> None:
        code = 1
        try:
            self._die_with_master()
            for signum in (signal.SIGCHLD, signal.SIGUSR1, signal.SIGTSTP):
                signal.signal(signum, signal.SIG_DFL)
            os.close(self.wake_r)
            os.close(self.wake_w)
            code = self.work(wid, self.slots.slot(wid))
        finally:
            os._exit(code)

    def _die_with_master(self) -> None:
        # A master that is SIGKILLed cannot stop its workers; the kernel does it for us
        # (PR_SET_PDEATHSIG), so no orphan keeps serving.  Where the call does not exist
        # (_jail raises ENOSYS: FreeBSD) workers outlive a killed master, as in uWSGI.
        try:
            _jail.set_pdeathsig(signal.SIGKILL)
        except OSError:
            return
        if os.getppid() != self.pid:        # the master died before the call took effect
            os._exit(1)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            st = self.workers.pop(pid, None)
            if st is not None:
                self._worker_died(st, status)

    def _worker_died(self, st: WorkerState, status: int) -> None:
        self.slots.retire(st.wid)
        if self.mc.on_worker_exit is not None:
            self.mc.on_worker_exit(st.pid)
        how = _describe_status(status)
        if self.state != RUNNING:
            emit(f"worker {st.wid} (pid: {st.pid}) {how}")
            return
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == FAILED_APP_CODE:
            emit(f"OOPS ! failed loading app in worker {st.wid} (pid {st.pid}) :( shutting down")
            self.exit_code = FAILED_APP_CODE
            self.stop("failed app")
            return
        if not self.mc.respawn:
            emit(f"worker {st.wid} (pid: {st.pid}) {how}; no master, not respawned")
            if not self.workers:
                self.state = STOPPING
            return
        self._schedule_respawn(st, status, how)

    def _schedule_respawn(self, st: WorkerState, status: int, how: str) -> None:
        now = time.monotonic()
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if not clean and not st.harakiri and now - st.spawned < FORKBOMB_DELAY:
            emit(f"worker {st.wid} (pid: {st.pid}) {how}; respawning too fast, "
                 f"waiting {FORKBOMB_DELAY:.0f} seconds")
            self.due[st.wid] = now + FORKBOMB_DELAY
        else:
            emit(f"worker {st.wid} (pid: {st.pid}) {how}; respawning")
            self.due[st.wid] = now

    def _check_harakiri(self) -> None:
        limit = self.mc.harakiri
        if not limit or self.paused:
            return
        now_ns = time.monotonic_ns()
        for st in self.workers.values():
            start, _ = self.slots.read(st.wid)
            if start and not st.harakiri and now_ns - start > limit * 1_000_000_000:
                emit(f"*** HARAKIRI ON WORKER {st.wid} (pid: {st.pid}, try: 1) ***")
                st.harakiri = True
                _kill(st.pid, signal.SIGKILL)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {sig} ({name})"
    return f"exited with code {os.WEXITSTATUS(status)}"

