"""The master: forks workers, respawns them, enforces harakiri, handles signals (uWSGI 2.0).

The gunicorn arbiter model: signal handlers only enqueue the signal number and wake the loop
through a pipe; `run()` drains the queue into `handle_<name>` methods, reaps dead workers,
checks harakiri once a second and converges on the wanted number of workers.

Signals (UWSGI_SEMANTICS §6.2, the 2.0 column):
  SIGHUP   graceful reload: every worker finishes its request in hand, then `reload_action`
           runs (startup's re-exec of binary-path, docs/reload.md; None: fork fresh workers)
  SIGTERM  brutal reload (workers SIGKILLed at once, then the same re-exec); shutdown with
           `die-on-term`
  SIGINT   shutdown: workers finish the request in hand within the mercy, then exit
  SIGQUIT  shutdown as SIGINT (brutal reload with `die-on-term`, as uWSGI 2.0)
  SIGUSR1  one log line per worker: pid, requests done, busy or idle
  SIGTSTP  pause every worker (SIGSTOP), the next SIGTSTP resumes them (SIGCONT); new
           connections wait in the backlog meanwhile, harakiri does not count paused time
  SIGCHLD  reap
A second SIGINT/SIGQUIT while stopping kills the remaining workers at once.

Besides signals: `chain_reload()` (touch-chain-reload, master FIFO `c`) replaces one worker
at a time, each after its successor is ready to accept (`worker_ready()` in the child);
`touch-reload` files are checked once a second; `master-fifo` takes uWSGI's letters
(FIFO_COMMANDS).  Every reload is logged with its kind, duration, the requests in flight when
it began and how many of them finished.

Per-worker status lives in one anonymous shared mmap made before the first fork: 16 bytes
per worker (u64 start of the current request in CLOCK_MONOTONIC ns, 0 when idle; u64
requests done), slot 0 being the master's, as uwsgi.workers[0].
"""
from __future__ import annotations

import errno
import mmap
import os
import select
import signal
import stat
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

_ready_w = -1           # in a worker: the write end of its "ready to accept" pipe


def worker_ready() -> None:
    """Called in a worker once it is about to accept (after a lazy app load): tells the master,
    which needs it to go on with a chain reload.  Does nothing in the master or when repeated."""
    global _ready_w
    if _ready_w >= 0:
        fd, _ready_w = _ready_w, -1
        try:
            os.write(fd, b"r")
        except OSError:
            pass
        os.close(fd)


class StatusSlots:
    """The shared status array; the master reads, each worker's _core loop writes its slot."""

    def __init__(self, workers: int, spare: int = 0):
        # spare slots: a chain reload's successor runs beside the worker it replaces
        self.count = workers + 1 + spare
        self.map = mmap.mmap(-1, SLOT.size * self.count)     # MAP_SHARED|MAP_ANONYMOUS
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
    slot: int = 0               # its status slot (== wid, or a spare one during a chain reload)
    harakiri: bool = False      # killed by harakiri: respawn without the fork-bomb delay
    ready_fd: int = -1          # read end of its ready pipe until it said "ready"
    ready: bool = False
    retiring: bool = False      # replaced by a chain reload: not respawned when it exits


@dataclass
class MasterConfig:
    processes: int
    harakiri: int = 0
    die_on_term: bool = False
    reload_mercy: float = 0.0           # 0: unset
    worker_reload_mercy: float = 60.0
    respawn: bool = True                # False without `master`: nothing respawns (uWSGI)
    on_worker_exit: Callable[[int], None] | None = None     # locks.release_dead(pid)
    # the re-exec (startup); called with the ReloadReport when every worker is gone; returns
    # only if the exec failed (the master then forks workers again).  None: just respawn.
    reload_action: Callable[[ReloadReport], None] | None = None
    touch_reload: tuple[str, ...] = ()
    touch_chain_reload: tuple[str, ...] = ()
    fifos: tuple[str, ...] = ()
    on_reopen_logs: Callable[[], None] | None = None        # FIFO 'l'
    on_pidfiles: Callable[[], None] | None = None           # FIFO 'P'
    reloaded: ReloadReport | None = None                    # the reload that exec'd this image

    @classmethod
    def from_config(cls, config, **kw) -> MasterConfig:
        return cls(processes=config.get("processes"), harakiri=config.get("harakiri"),
                   die_on_term=config.get("die-on-term"), reload_mercy=config.get("reload-mercy"),
                   worker_reload_mercy=config.get("worker-reload-mercy"),
                   respawn=config.get("master"),
                   touch_reload=tuple(config.get("touch-reload")),
                   touch_chain_reload=tuple(config.get("touch-chain-reload")),
                   fifos=tuple(config.get("master-fifo")), **kw)


@dataclass
class ReloadReport:
    """One reload, for its log lines (and carried across the exec in RELOAD_ENV)."""

    kind: str                   # "graceful", "brutal", "chain", "workers"
    started_ns: int             # CLOCK_MONOTONIC: the same clock in the re-executed image
    in_flight: int = 0          # requests being served when it began
    finished: int = 0           # of those, how many completed (their worker exited cleanly)

    def encode(self) -> str:
        return f"{self.kind}:{self.started_ns}:{self.in_flight}:{self.finished}"

    @classmethod
    def decode(cls, text: str) -> ReloadReport | None:
        try:
            kind, started, in_flight, finished = text.split(":")
            return cls(kind, int(started), int(in_flight), int(finished))
        except ValueError:
            return None

    def seconds(self) -> float:
        return (time.monotonic_ns() - self.started_ns) / 1e9

    def summary(self) -> str:
        lost = self.in_flight - self.finished
        return (f"{self.seconds():.3f} s, requests in flight: {self.in_flight}, finished: {self.finished}"
                + (f", interrupted: {lost}" if lost else ""))


RELOAD_ENV = "JAILSERVE_RELOAD"         # the ReloadReport of the reload that exec'd us

# master-fifo letters (uWSGI core/fifo.c / MasterFIFO.rst) that apply here -> method name
FIFO_COMMANDS = {"r": "fifo_graceful_reload", "R": "fifo_brutal_reload", "q": "fifo_shutdown",
                 "Q": "fifo_brutal_shutdown", "c": "chain_reload", "w": "fifo_reload_workers",
                 "W": "fifo_brutal_reload_workers", "s": "handle_sigusr1", "p": "handle_sigtstp",
                 "l": "fifo_reopen_logs", "L": "fifo_reopen_logs", "P": "fifo_pidfiles"}


class Master:
    """Supervises `processes` forks of this process, each running `work(wid, slot) -> code`.

    `work` is entered in the child with WORKER_STOP signals blocked; it must install its own
    handlers and unblock them (worker.Worker.run does), and should call `worker_ready()`
    when it starts accepting (a chain reload waits for it).
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
        self.report: ReloadReport | None = None         # the reload under way
        self.reexec = True                              # this reload re-execs (not only workers)
        self.busy_at_reload: set[int] = set()           # pids serving a request when it began
        self.chain: list[int] = []                      # chain reload: old pids still to replace
        self.chain_step: tuple[int, int] | None = None  # (old pid, successor pid)
        self.chain_report: ReloadReport | None = None
        self.pending_report = mc.reloaded               # logged once every worker is ready
        self.wake_r = self.wake_w = -1
        self.fifo_fds: list[int] = []
        self.fifo_slot = 0
        self.touched: dict[str, float | None] = {}
        self.next_tick = 0.0
        self.pid = os.getpid()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        self._open_wakeup()
        self._install_signals()
        self._open_fifos()
        self.touched = {p: _mtime(p) for p in (*self.mc.touch_reload, *self.mc.touch_chain_reload)}
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
                self._tick()
                self._spawn_due()
                self._chain_next()
                self._report_ready()
        finally:
            self._restore_signals()

    def _sleep(self) -> None:
        timeout = 1.0
        now = time.monotonic()
        if self.due and self.state == RUNNING:
            timeout = max(0.0, min(timeout, min(self.due.values()) - now))
        if self.deadline is not None:
            timeout = max(0.0, min(timeout, self.deadline - now))
        readers = [self.wake_r, *self._fifo_active()]
        readers += [st.ready_fd for st in self.workers.values() if st.ready_fd >= 0]
        try:
            ready, _, _ = select.select(readers, [], [], timeout)
        except InterruptedError:
            return
        for fd in ready:
            if fd == self.wake_r:
                self._empty_wakeup()
            elif fd in self.fifo_fds:
                self._read_fifo(fd)
            else:
                self._read_ready(fd)

    def _tick(self) -> None:
        """Once a second: harakiri, touch-reload / touch-chain-reload files."""
        now = time.monotonic()
        if now < self.next_tick:
            return
        self.next_tick = now + 1.0
        self._check_harakiri()
        for path, before in self.touched.items():
            after = _mtime(path)
            if after != before:
                self.touched[path] = after
                if after is None or self.state != RUNNING:
                    continue
                if path in self.mc.touch_reload:
                    emit(f"*** {path} has been touched... grace them all !!! ***")
                    self.reload(graceful=True)
                else:
                    emit(f"*** {path} has been touched... chain reload !!! ***")
                    self.chain_reload()

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
        for fd in (self.wake_r, self.wake_w, *self.fifo_fds):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1
        self.fifo_fds = []

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
            start, done = self.slots.read(st.slot)
            emit(f"worker {st.wid} (pid: {st.pid}) requests: {done} {'busy' if start else 'idle'}")

    def handle_sigtstp(self) -> None:
        if self.state != RUNNING and not self.paused:
            return
        self.paused = not self.paused
        self._kill_all(signal.SIGSTOP if self.paused else signal.SIGCONT)
        emit("paused: workers stopped, send SIGTSTP again to resume" if self.paused else "resumed")

    # -- master-fifo ----------------------------------------------------------------------

    def _open_fifos(self) -> None:
        """uWSGI makes each fifo (replacing a stale file) and reads the active slot's.  O_RDWR
        keeps a writer open, so a client closing its end is not an EOF to spin on."""
        for path in self.mc.fifos:
            try:
                if os.path.lexists(path) and not stat.S_ISFIFO(os.lstat(path).st_mode):
                    raise OSError(errno.EEXIST, f"{path} exists and is not a fifo")
                if not os.path.lexists(path):
                    os.mkfifo(path, 0o600)
                self.fifo_fds.append(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
            except OSError as exc:
                emit(f"master-fifo {path}: {exc.strerror or exc}; not used")
                self.fifo_fds.append(-1)

    def _fifo_active(self) -> list[int]:
        if self.fifo_slot < len(self.fifo_fds) and self.fifo_fds[self.fifo_slot] >= 0:
            return [self.fifo_fds[self.fifo_slot]]
        return []

    def _read_fifo(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        for ch in data.decode("latin-1"):
            if ch.isdigit():
                if int(ch) < len(self.fifo_fds):
                    self.fifo_slot = int(ch)
                    emit(f"master-fifo: now reading {self.mc.fifos[self.fifo_slot]}")
                continue
            name = FIFO_COMMANDS.get(ch)
            if name is not None:
                getattr(self, name)()
            elif not ch.isspace():
                emit(f"master-fifo: unknown command {ch!r}")

    def fifo_graceful_reload(self) -> None:
        self.reload(graceful=True)

    def fifo_brutal_reload(self) -> None:
        self.reload(graceful=False)

    def fifo_shutdown(self) -> None:
        self.stop("master-fifo 'q'")

    def fifo_brutal_shutdown(self) -> None:
        emit("master-fifo 'Q': brutal shutdown, killing workers")
        self.state = STOPPING
        self.due.clear()
        self._kill_all(signal.SIGKILL)

    def fifo_reload_workers(self) -> None:
        self.reload(graceful=True, reexec=False)

    def fifo_brutal_reload_workers(self) -> None:
        self.reload(graceful=False, reexec=False)

    def fifo_reopen_logs(self) -> None:
        if self.mc.on_reopen_logs is not None:
            self.mc.on_reopen_logs()

    def fifo_pidfiles(self) -> None:
        if self.mc.on_pidfiles is not None:
            self.mc.on_pidfiles()

    # -- stopping and reloading ---------------------------------------------------------

    def stop(self, why: str) -> None:
        if self.state == STOPPING:
            emit(f"{why} again: killing the remaining workers")
            self._kill_all(signal.SIGKILL)
            return
        emit(f"{why}: shutting down, waiting for workers to finish their requests")
        self.state = STOPPING
        self._end_chain()
        self.due.clear()
        self._signal_workers(signal.SIGINT, self._mercy(graceful=True))

    def reload(self, graceful: bool, reexec: bool = True) -> None:
        """Graceful: every worker finishes its request in hand (within worker-reload-mercy /
        reload-mercy), then `reload_action` (the re-exec).  Brutal: workers are killed at once
        (uWSGI 2.0's SIGTERM), then the same.  reexec=False: only the workers are replaced."""
        if self.state != RUNNING:
            return
        self._end_chain()
        kind = ("graceful" if graceful else "brutal") if reexec else ("workers" if graceful else "brutal workers")
        self.report = ReloadReport(kind, time.monotonic_ns(), in_flight=self._busy_count())
        self.busy_at_reload = {st.pid for st in self.workers.values() if self.slots.read(st.slot)[0]}
        self.reexec = reexec
        emit(f"{kind} reload: {'gracefully killing' if graceful else 'killing'} workers "
             f"({self.report.in_flight} requests in flight)")
        self.state = RELOADING
        self.due.clear()
        if graceful:
            self._signal_workers(signal.SIGHUP, self._mercy(graceful))
        else:
            self._signal_workers(signal.SIGKILL, BRUTAL_MERCY)

    def chain_reload(self) -> None:
        """uWSGI's chain reload: one worker at a time; the next old one is told to finish
        only once its successor is ready to accept, so a worker is always accepting."""
        if self.state != RUNNING:
            return
        if self.chain or self.chain_step:
            emit("chain reload already in progress")
            return
        self.chain = sorted((st.pid for st in self.workers.values() if not st.retiring),
                            key=lambda pid: self.workers[pid].wid)
        self.chain_report = ReloadReport("chain", time.monotonic_ns(), in_flight=self._busy_count())
        emit(f"chain reload starting ({len(self.chain)} workers, "
             f"{self.chain_report.in_flight} requests in flight)")

    def _chain_next(self) -> None:
        if self.state != RUNNING:
            return
        if self.chain_step is not None:
            old, new = self.chain_step
            successor = self.workers.get(new)
            if successor is None:                    # died before it was ready
                emit(f"chain reload: the successor of worker pid {old} died before it was ready; "
                     "chain reload stopped, the remaining workers keep the code they have")
                self._end_chain()
                return
            if not successor.ready:
                return
            if old in self.workers:
                if not self.workers[old].retiring:
                    self.workers[old].retiring = True
                    if self.slots.read(self.workers[old].slot)[0]:
                        self.busy_at_reload.add(old)
                    _kill(old, signal.SIGHUP)
                return                               # wait for it to finish and exit
            self.chain_step = None
        while self.chain and self.chain[0] not in self.workers:
            self.chain.pop(0)                        # gone meanwhile (respawned as usual)
        if not self.chain:
            if self.chain_report is not None:
                emit(f"chain reload done: {self.chain_report.summary()}")
                self.chain_report = None
                self.busy_at_reload = set()
            return
        old = self.chain.pop(0)
        new = self.spawn(self.workers[old].wid)
        if new:
            self.chain_step = (old, new)
            emit(f"chain reload: worker {self.workers[old].wid} (pid: {old}) -> pid {new}")

    def _end_chain(self) -> None:
        self.chain = []
        self.chain_step = None
        self.chain_report = None

    def _busy_count(self) -> int:
        return sum(1 for st in self.workers.values() if self.slots.read(st.slot)[0])

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
        what = "reload-mercy" if self.mc.reload_mercy else "worker-reload-mercy"
        for st in self.workers.values():
            busy = " in the middle of a request" if self.slots.read(st.slot)[0] else ""
            emit(f"worker {st.wid} (pid: {st.pid}) did not stop in time ({what}){busy}, sending SIGKILL")
            _kill(st.pid, signal.SIGKILL)
        self.deadline = None

    def _finish_stop(self) -> bool:
        """All workers are gone: True to leave the loop, False when running again."""
        self.deadline = None
        if self.state == STOPPING:
            emit("goodbye to jailserve.")
            return True
        report = self.report
        emit(f"{report.kind} reload: workers stopped after {report.summary()}")
        if self.reexec and self.mc.reload_action is not None:
            self.mc.reload_action(report)          # a successful re-exec does not return
            emit("re-exec failed: forking workers with the current code")
        self.state = RUNNING
        self.pending_report = report
        self.busy_at_reload = set()
        for wid in range(1, self.mc.processes + 1):
            self.due[wid] = 0.0
        return False

    def _report_ready(self) -> None:
        """After a reload: one line once every worker is back and accepting."""
        if self.pending_report is None or self.state != RUNNING or self.due:
            return
        if len(self.workers) >= self.mc.processes and all(st.ready for st in self.workers.values()):
            emit(f"{self.pending_report.kind} reload done: workers accepting after {self.pending_report.summary()}")
            self.pending_report = None

    # -- workers ------------------------------------------------------------------------

    def _spawn_due(self) -> None:
        if self.state != RUNNING:
            return
        now = time.monotonic()
        for wid, when in sorted(self.due.items()):
            if when <= now:
                del self.due[wid]
                self.spawn(wid)

    def _free_slot(self, wid: int) -> int:
        used = {st.slot for st in self.workers.values()}
        if wid not in used:
            return wid
        for slot in range(self.mc.processes + 1, self.slots.count):
            if slot not in used:
                return slot
        return wid              # no spare slot: share it (harakiri sees the busier one)

    def spawn(self, wid: int) -> int:
        slot = self._free_slot(wid)
        self.slots.clear(slot)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_STOP)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(ready_r), os.close(ready_w)
            emit(f"fork() for worker {wid} failed: {exc.strerror}; retrying in {FORKBOMB_DELAY:.0f} s")
            self.due[wid] = time.monotonic() + FORKBOMB_DELAY
            return 0
        if pid == 0:
            global _ready_w
            os.close(ready_r)
            _ready_w = ready_w
            self._child(wid, slot)      # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(ready_w)
        self.workers[pid] = WorkerState(wid, pid, time.monotonic(), slot=slot, ready_fd=ready_r)
        if self.paused:
            _kill(pid, signal.SIGSTOP)
        emit(f"spawned jailserve worker {wid} (pid: {pid}, cores: 1)")
        return pid

    def _read_ready(self, fd: int) -> None:
        for st in self.workers.values():
            if st.ready_fd == fd:
                try:
                    st.ready = os.read(fd, 1) == b"r"
                except OSError:
                    pass
                os.close(fd)
                st.ready_fd = -1
                return

    def _child(self, wid: int, slot: int) -> None:
        code = 1
        try:
            self._die_with_master()
            for signum in (signal.SIGCHLD, signal.SIGUSR1, signal.SIGTSTP):
                signal.signal(signum, signal.SIG_DFL)
            for fd in (self.wake_r, self.wake_w, *self.fifo_fds,
                       *(st.ready_fd for st in self.workers.values())):
                if fd >= 0:
                    os.close(fd)
            code = self.work(wid, self.slots.slot(slot))
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
                if st.ready_fd >= 0:
                    os.close(st.ready_fd)
                self._worker_died(st, status)

    def _worker_died(self, st: WorkerState, status: int) -> None:
        self.slots.retire(st.slot)
        if self.mc.on_worker_exit is not None:
            self.mc.on_worker_exit(st.pid)
        how = _describe_status(status)
        if st.pid in self.busy_at_reload:
            self.busy_at_reload.discard(st.pid)
            report = self.report if self.state == RELOADING else self.chain_report
            if report is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                report.finished += 1
        if self.state != RUNNING:
            emit(f"worker {st.wid} (pid: {st.pid}) {how}")
            return
        if st.retiring:
            emit(f"worker {st.wid} (pid: {st.pid}) {how}; replaced by the chain reload")
            return
        if self.chain_step is not None and self.chain_step[1] == st.pid:
            return      # a chain successor that died (a broken new app): _chain_next says so,
                        # the old workers keep serving
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
            start, _ = self.slots.read(st.slot)
            if start and not st.harakiri and now_ns - start > limit * 1_000_000_000:
                emit(f"*** HARAKIRI ON WORKER {st.wid} (pid: {st.pid}, try: 1) ***")
                st.harakiri = True
                _kill(st.pid, signal.SIGKILL)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


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

