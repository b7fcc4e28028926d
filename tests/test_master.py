"""master: real forks and real signals.

Each test runs a Master in a forked child of the test process (its signal handlers must not
touch pytest's), with a small `work(wid, slot)` written here: the master's contract is only
that callable, so these tests exercise the real supervision code on real processes.  Workers
record their pid in files; teardown SIGKILLs every pid a test started that is still alive.
"""
from __future__ import annotations

import os
import signal
import struct
import time

import pytest

from jailserve.master import Master, MasterConfig, StatusSlots

WAIT = 30.0      # generous bound for anything to happen; never a timing assertion


def wait_for(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of ours is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):   # gone before the open, or during the read
        return False


class Run:
    """A master started in a child process, its log, and the pids of its workers."""

    def __init__(self, tmp_path, work, **mc):
        self.dir = tmp_path
        self.log = tmp_path / "master.log"
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(fd, 2)
                code = Master(MasterConfig(**mc), lambda wid, slot: work(self, wid, slot)).run()
            finally:
                os._exit(code)
        self.status = None

    def record(self, wid):
        n = len(list(self.dir.glob(f"w{wid}-*")))
        (self.dir / f"w{wid}-{n}").write_text(str(os.getpid()))

    def pids(self, wid):
        files = sorted(self.dir.glob(f"w{wid}-*"), key=lambda p: int(p.name.split("-")[1]))
        return [int(p.read_text()) for p in files if p.read_text()]

    def all_pids(self):
        return [int(p.read_text()) for p in self.dir.glob("w*-*") if p.read_text()]

    def text(self):
        return self.log.read_text() if self.log.exists() else ""

    def wait_exit(self):
        def done():
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
            return pid != 0
        wait_for(done, "the master to exit")
        return os.waitstatus_to_exitcode(self.status)

    def kill_everything(self):
        for pid in [self.pid, *self.all_pids()]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.status is None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass


@pytest.fixture
def runs(tmp_path):
    started = []

    def start(work, **mc):
        d = tmp_path / f"run{len(started)}"
        d.mkdir()
        run = Run(d, work, **mc)
        started.append(run)
        return run
    yield start
    for run in started:
        run.kill_everything()


def until_stopped(run, wid, slot, busy=None):
    """A worker: handlers that set a flag, unblock, idle until told to stop."""
    stop = []
    for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(s, lambda *a: stop.append(1))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT))
    run.record(wid)
    if busy is not None:
        busy(run, wid, slot)
    while not stop:
        time.sleep(0.02)
    return 0


def test_sigkilled_worker_is_replaced_and_sigint_leaves_nothing(runs):
    run = runs(until_stopped, processes=2)
    first = wait_for(lambda: run.pids(1) and run.pids(2) and (run.pids(1)[0], run.pids(2)[0]), "two workers")
    os.kill(first[0], signal.SIGKILL)
    replaced = wait_for(lambda: len(run.pids(1)) == 2 and run.pids(1)[1], "worker 1 respawned")
    assert replaced != first[0] and run.pids(2) == [first[1]]
    assert "worker 1 (pid: %d) killed by signal 9 (SIGKILL)" % first[0] in run.text()
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0
    assert not [pid for pid in run.all_pids() if alive(pid)]
    assert "goodbye" in run.text()


def sleeping_request(run, wid, slot):
    # the first incarnation of worker 1 "takes a request" that never ends
    if wid == 1 and len(run.pids(1)) == 1:
        struct.pack_into("=QQ", slot, 0, time.monotonic_ns(), 0)
        time.sleep(3600)


def test_harakiri_kills_a_stuck_request_and_respawns(runs):
    run = runs(lambda r, w, s: until_stopped(r, w, s, sleeping_request), processes=1, harakiri=1)
    stuck = wait_for(lambda: run.pids(1) and run.pids(1)[0], "worker 1")
    wait_for(lambda: len(run.pids(1)) == 2, "worker 1 replaced after harakiri")
    assert f"*** HARAKIRI ON WORKER 1 (pid: {stuck}, try: 1) ***" in run.text()
    assert not alive(stuck)
    os.kill(run.pid, signal.SIGQUIT)
    assert run.wait_exit() == 0


def test_sighup_recycles_every_worker_and_keeps_the_master(runs):
    run = runs(until_stopped, processes=2)
    old = wait_for(lambda: run.pids(1) and run.pids(2) and run.all_pids(), "two workers")
    os.kill(run.pid, signal.SIGHUP)
    wait_for(lambda: len(run.pids(1)) == 2 and len(run.pids(2)) == 2, "both workers replaced")
    assert not [pid for pid in old if alive(pid)]
    assert alive(run.pid) and "graceful reload" in run.text()
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0


def test_sigterm_is_a_brutal_reload_unless_die_on_term(runs):
    run = runs(until_stopped, processes=1)
    wait_for(lambda: run.pids(1), "worker")
    os.kill(run.pid, signal.SIGTERM)
    wait_for(lambda: len(run.pids(1)) == 2, "worker replaced by the brutal reload")
    assert "brutal reload" in run.text()
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0

    run = runs(until_stopped, processes=1, die_on_term=True)
    wait_for(lambda: run.pids(1), "worker")
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit() == 0
    assert len(run.pids(1)) == 1 and not alive(run.pids(1)[0])


def stubborn(run, wid, slot):
    for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT))
    run.record(wid)
    time.sleep(3600)
    return 0


def test_worker_that_ignores_the_stop_is_killed_after_the_mercy(runs):
    run = runs(stubborn, processes=1, reload_mercy=1)
    pid = wait_for(lambda: run.pids(1) and run.pids(1)[0], "worker")
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0
    assert f"worker 1 (pid: {pid}) did not stop in time (reload-mercy), sending SIGKILL" in run.text()
    assert not alive(pid)


def test_second_sigint_kills_at_once(runs):
    run = runs(stubborn, processes=1)            # default mercy: 60 s
    pid = wait_for(lambda: run.pids(1) and run.pids(1)[0], "worker")
    os.kill(run.pid, signal.SIGINT)
    wait_for(lambda: "shutting down" in run.text(), "the shutdown to start")
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0 and not alive(pid)


def crash_at_once(run, wid, slot):
    run.record(wid)
    return 3


def test_fast_crashes_are_throttled(runs):
    run = runs(crash_at_once, processes=1)
    wait_for(lambda: len(run.pids(1)) >= 2, "a respawn")
    assert "exited with code 3; respawning too fast, waiting 2 seconds" in run.text()
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0


def test_failed_app_in_a_worker_stops_the_instance_with_22(runs):
    run = runs(lambda r, w, s: (r.record(w), 22)[1], processes=2)
    assert run.wait_exit() == 22
    assert "failed loading app" in run.text()


def test_without_master_nothing_is_respawned(runs):
    run = runs(lambda r, w, s: (r.record(w), 0)[1], processes=2, respawn=False)
    assert run.wait_exit() == 0
    assert len(run.pids(1)) == 1 and len(run.pids(2)) == 1


def test_sigusr1_logs_worker_status(runs):
    def busy_slot(run, wid, slot):
        struct.pack_into("=QQ", slot, 0, time.monotonic_ns(), 41)
    run = runs(lambda r, w, s: until_stopped(r, w, s, busy_slot), processes=1)
    pid = wait_for(lambda: run.pids(1) and run.pids(1)[0], "worker")
    os.kill(run.pid, signal.SIGUSR1)
    wait_for(lambda: f"worker 1 (pid: {pid}) requests: 41 busy" in run.text(), "the stats line")
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0


def test_status_slots_are_shared_across_fork():
    slots = StatusSlots(2)
    pid = os.fork()
    if pid == 0:
        struct.pack_into("=QQ", slots.slot(2), 0, 123, 456)
        os._exit(0)
    os.waitpid(pid, 0)
    assert slots.read(2) == (123, 456) and slots.read(1) == (0, 0)
    slots.clear(2)
    assert slots.read(2) == (0, 0)


def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_sigtstp_pauses_and_resumes_workers_and_stop_still_works(runs):
    run = runs(until_stopped, processes=2)
    pids = wait_for(lambda: len(run.all_pids()) == 2 and run.all_pids(), "two workers")
    os.kill(run.pid, signal.SIGTSTP)
    wait_for(lambda: all(proc_state(p) == "T" for p in pids), "workers stopped")
    assert alive(run.pid) and proc_state(run.pid) != "T"        # the master itself keeps running
    os.kill(run.pid, signal.SIGTSTP)
    wait_for(lambda: all(proc_state(p) != "T" for p in pids), "workers resumed")
    os.kill(run.pid, signal.SIGTSTP)
    wait_for(lambda: all(proc_state(p) == "T" for p in pids), "workers stopped again")
    os.kill(run.pid, signal.SIGINT)                               # shutdown while paused
    assert run.wait_exit() == 0
    assert not [p for p in pids if alive(p)]


def test_total_keeps_the_requests_of_dead_workers():
    slots = StatusSlots(2)
    struct.pack_into("=QQ", slots.slot(1), 0, 0, 5)
    struct.pack_into("=QQ", slots.slot(2), 0, 99, 3)
    assert slots.total() == 8
    slots.retire(1)                       # worker 1 died: its 5 stay counted
    assert slots.read(1) == (0, 0) and slots.total() == 8
    struct.pack_into("=QQ", slots.slot(1), 0, 0, 1)
    assert slots.total() == 9


def ready_then_idle(run, wid, slot):
    """A worker that says it is ready (as Worker.run does before serving) and, when told to
    stop, records how many workers of its wid had said so by then."""
    from jailserve.master import worker_ready

    stop = []

    def on_stop(*a):
        ready = len(list(run.dir.glob(f"ready{wid}-*")))
        (run.dir / f"stopped{wid}-{os.getpid()}").write_text(str(ready))
        stop.append(1)
    for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(s, on_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT))
    run.record(wid)
    (run.dir / f"ready{wid}-{os.getpid()}").write_text("")
    worker_ready()
    while not stop:
        time.sleep(0.02)
    return 0


def test_chain_reload_from_the_fifo_replaces_each_worker_after_its_successor_is_ready(runs, tmp_path):
    fifo = str(tmp_path / "fifo")
    run = runs(ready_then_idle, processes=2, fifos=(fifo,))
    old = wait_for(lambda: len(run.all_pids()) == 2 and run.all_pids(), "two workers")
    wait_for(lambda: os.path.exists(fifo), "the fifo")
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"c")
    os.close(fd)
    wait_for(lambda: "chain reload done" in run.text(), "the chain reload")
    for pid in old:
        assert not alive(pid)
        wid = next(w for w in (1, 2) if pid in run.pids(w))
        # when it was told to finish, its successor (same wid) had already said ready
        assert int((run.dir / f"stopped{wid}-{pid}").read_text()) == 2
    assert len(run.pids(1)) == 2 and len(run.pids(2)) == 2
    assert alive(run.pid) and "chain reload: worker 1" in run.text()
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0


def test_reload_report_round_trip_and_reload_log_lines(runs):
    from jailserve.master import ReloadReport

    r = ReloadReport("graceful", 123, in_flight=3, finished=2)
    assert ReloadReport.decode(r.encode()) == r and ReloadReport.decode("junk") is None
    assert "requests in flight: 3, finished: 2, interrupted: 1" in r.summary()
    run = runs(ready_then_idle, processes=1)
    wait_for(lambda: run.pids(1), "worker")
    os.kill(run.pid, signal.SIGHUP)
    wait_for(lambda: "graceful reload done: workers accepting after" in run.text(), "the reload's last line")
    assert "graceful reload: workers stopped after" in run.text()
    os.kill(run.pid, signal.SIGINT)
    assert run.wait_exit() == 0
