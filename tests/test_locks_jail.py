"""_jail section 4: the SysV and POSIX semaphore bindings, against the kernel (real sets,
real forks), with `ipcs` and /dev/shm as the outside view."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_locks_support import Holder, fork_child, reap, wait_blocked

from jailserve import _jail

pytestmark = pytest.mark.skipif(not sys.platform.startswith(("linux", "freebsd")), reason="Linux/FreeBSD only")
LINUX = sys.platform.startswith("linux")


def ipcs_semids() -> set[int]:
    out = subprocess.run(["ipcs", "-s"], capture_output=True, text=True, check=True).stdout
    return {int(f[1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 5 and f[1].isdigit()}


@pytest.fixture
def sysv_set():
    """A fresh private set of one semaphore, removed whatever the test does."""
    made = []

    def make(value=1, nsems=1):
        semid = _jail.semget(_jail.IPC_PRIVATE, nsems, _jail.IPC_CREAT | _jail.IPC_EXCL | 0o600)
        made.append(semid)
        for i in range(nsems):
            _jail.semctl(semid, i, _jail.SETVAL, value)
        return semid

    yield make
    for semid in made:
        try:
            _jail.semctl(semid, 0, _jail.IPC_RMID)
        except OSError:
            pass


needs_proc = pytest.mark.skipif(not LINUX, reason="watches /proc/PID/wchan")


class Interrupted(Exception):
    """Raised by the SIGUSR1 handler of raise_on_usr1(): it must come out of a blocking wait."""


def raise_on_usr1() -> None:
    """In a child: SIGUSR1 raises Interrupted (the EINTR path of the semaphore waits)."""
    def on_usr1(signum, frame):
        raise Interrupted()
    signal.signal(signal.SIGUSR1, on_usr1)


# --- constants from the headers --------------------------------------------------------

@pytest.mark.skipif(not LINUX, reason="the Linux values")
def test_linux_constants_are_linuxs():
    # <linux/sem.h>/<bits/ipc.h>: the numbers FREEBSD_JAILS §5 says differ from FreeBSD's
    assert (_jail.GETPID, _jail.GETVAL, _jail.GETNCNT, _jail.GETZCNT, _jail.SETVAL) == (11, 12, 14, 15, 16)
    assert (_jail.IPC_RMID, _jail.IPC_SET, _jail.IPC_STAT) == (0, 1, 2)
    assert _jail.KEY_T_SIZE == 4
    assert (_jail.IPC_CREAT, _jail.IPC_EXCL, _jail.IPC_NOWAIT, _jail.SEM_UNDO) == (0o1000, 0o2000, 0o4000, 0o10000)


@pytest.mark.skipif(LINUX, reason="the FreeBSD values")
def test_freebsd_constants_are_freebsds():
    assert (_jail.GETPID, _jail.GETVAL, _jail.GETNCNT, _jail.GETZCNT, _jail.SETVAL) == (4, 5, 3, 7, 8)
    assert _jail.KEY_T_SIZE == 8


# --- SysV ------------------------------------------------------------------------------

def test_semget_creates_a_set_ipcs_sees_and_rmid_removes(sysv_set):
    semid = sysv_set()
    assert semid in ipcs_semids()
    assert _jail.semctl(semid, 0, _jail.GETVAL) == 1
    _jail.semctl(semid, 0, _jail.IPC_RMID)
    assert semid not in ipcs_semids()
    with pytest.raises(OSError) as e:
        _jail.semctl(semid, 0, _jail.GETVAL)
    assert e.value.errno in (errno.EINVAL, errno.EIDRM)


def test_semop_nowait_reports_busy_and_getpid_names_the_last_operator(sysv_set):
    semid = sysv_set()
    assert _jail.semop(semid, 0, -1, _jail.SEM_UNDO) is True
    assert _jail.semctl(semid, 0, _jail.GETVAL) == 0
    assert _jail.semctl(semid, 0, _jail.GETPID) == os.getpid()
    assert _jail.semop(semid, 0, -1, _jail.SEM_UNDO | _jail.IPC_NOWAIT) is False
    assert _jail.semop(semid, 0, 1, _jail.SEM_UNDO) is True
    assert _jail.semctl(semid, 0, _jail.GETVAL) == 1


def test_sem_undo_releases_what_a_killed_process_held(sysv_set):
    semid = sysv_set()
    holder = Holder(lambda: _jail.semop(semid, 0, -1, _jail.SEM_UNDO))
    assert _jail.semctl(semid, 0, _jail.GETVAL) == 0
    assert holder.kill() == -signal.SIGKILL
    assert _jail.semctl(semid, 0, _jail.GETVAL) == 1      # the kernel undid the -1


def test_without_sem_undo_the_kernel_releases_nothing(sysv_set):
    # the contrast that shows the test above depends on SEM_UNDO, not on process exit
    semid = sysv_set()
    pid = fork_child(lambda: _jail.semop(semid, 0, -1, 0) and 0)
    assert reap(pid) == 0
    assert _jail.semctl(semid, 0, _jail.GETVAL) == 0


@needs_proc
def test_blocking_semop_waits_for_another_process_and_counts_as_waiter(sysv_set):
    semid = sysv_set(value=0)
    pid = fork_child(lambda: 0 if _jail.semop(semid, 0, -1, _jail.SEM_UNDO) else 3)
    wait_blocked(pid)
    assert _jail.semctl(semid, 0, _jail.GETNCNT) == 1
    _jail.semop(semid, 0, 1, 0)
    assert reap(pid) == 0


@needs_proc
def test_semop_releases_the_gil_while_blocked(sysv_set):
    semid = sysv_set(value=0)
    done = []
    t = threading.Thread(target=lambda: done.append(_jail.semop(semid, 0, -1, 0)))
    t.start()
    wait_blocked(os.getpid(), t.native_id)
    # this thread runs Python while the other one sleeps in semop: the GIL was released
    assert _jail.semctl(semid, 0, _jail.GETNCNT) == 1
    _jail.semop(semid, 0, 1, 0)
    t.join(20)
    assert done == [True]


@needs_proc
def test_eintr_runs_the_signal_handler_and_its_exception_ends_the_wait(sysv_set):
    semid = sysv_set(value=0)

    def child():
        raise_on_usr1()
        try:
            _jail.semop(semid, 0, -1, 0)
        except Interrupted:
            return 7
        return 1

    pid = fork_child(child)
    wait_blocked(pid)
    os.kill(pid, signal.SIGUSR1)
    assert reap(pid) == 7


@needs_proc
def test_eintr_with_a_quiet_handler_goes_on_waiting(sysv_set):
    semid = sysv_set(value=0)
    r, w = os.pipe()

    def child():
        signal.signal(signal.SIGUSR1, lambda s, f: os.write(w, b"h"))
        return 0 if _jail.semop(semid, 0, -1, 0) else 1

    pid = fork_child(child)
    wait_blocked(pid)
    os.kill(pid, signal.SIGUSR1)
    assert os.read(r, 1) == b"h"         # the handler ran ...
    wait_blocked(pid)                    # ... and the child waits again
    _jail.semop(semid, 0, 1, 0)
    assert reap(pid) == 0


def test_semctl_refuses_buffer_commands(sysv_set):
    semid = sysv_set()
    with pytest.raises(ValueError):
        _jail.semctl(semid, 0, _jail.IPC_STAT)


def test_sem_stat_and_set_owner(sysv_set):
    if os.geteuid() != 0:
        pytest.skip("IPC_SET to another uid needs root")
    semid = sysv_set()
    before = _jail.sem_stat(semid)
    assert (before["uid"], before["cuid"], before["mode"], before["nsems"]) == (0, 0, 0o600, 1)
    _jail.sem_set_owner(semid, 65534, 65533)
    after = _jail.sem_stat(semid)
    assert (after["uid"], after["gid"], after["cuid"], after["mode"]) == (65534, 65533, 0, 0o600)


def test_ftok_is_stable_and_reaches_the_same_set(tmp_path):
    path = tmp_path / "keyfile"
    path.write_text("")
    key = _jail.ftok(str(path), 1)
    assert key == _jail.ftok(str(path), 1) and key != _jail.ftok(str(path), 2)
    semid = _jail.semget(key, 1, _jail.IPC_CREAT | 0o600)
    try:
        assert _jail.semget(key, 1, _jail.IPC_CREAT | 0o600) == semid     # no EXCL: reused
        assert _jail.sem_stat(semid)["key"] == key
        with pytest.raises(FileExistsError):
            _jail.semget(key, 1, _jail.IPC_CREAT | _jail.IPC_EXCL | 0o600)
    finally:
        _jail.semctl(semid, 0, _jail.IPC_RMID)


def test_ftok_of_a_missing_path_is_enoent(tmp_path):
    with pytest.raises(FileNotFoundError):
        _jail.ftok(str(tmp_path / "missing"), 1)


# --- POSIX named -----------------------------------------------------------------------

@pytest.fixture
def sem_name():
    name = f"/jailserve-test-{os.getpid()}"
    yield name
    try:
        _jail.sem_unlink(name)
    except FileNotFoundError:
        pass


def test_named_semaphore_lives_in_dev_shm_until_unlinked(sem_name):
    sem = _jail.NamedSemaphore(sem_name, value=1)
    shm = "/dev/shm/sem." + sem_name[1:]
    if LINUX:
        assert os.path.exists(shm)
    assert sem.wait() is True and sem.trywait() is False and sem.value() == 0
    sem.post()
    assert sem.value() == 1
    sem.close()
    with pytest.raises(ValueError):
        sem.post()
    _jail.sem_unlink(sem_name)
    if LINUX:
        assert not os.path.exists(shm)
    with pytest.raises(FileNotFoundError):
        _jail.sem_unlink(sem_name)


def test_named_semaphore_is_shared_by_name_between_processes(sem_name):
    sem = _jail.NamedSemaphore(sem_name, value=0)
    pid = fork_child(lambda: _jail.NamedSemaphore(sem_name, 0).post())
    assert reap(pid) == 0
    assert sem.wait(timeout=0) is True


def test_named_semaphore_o_excl(sem_name):
    _jail.NamedSemaphore(sem_name).close()
    with pytest.raises(FileExistsError):
        _jail.NamedSemaphore(sem_name, os.O_CREAT | os.O_EXCL)


def test_timedwait_gives_up_on_a_held_semaphore(sem_name):
    sem = _jail.NamedSemaphore(sem_name, value=0)
    assert sem.wait(timeout=0.05) is False      # ETIMEDOUT, not an exception
    sem.post()
    assert sem.wait(timeout=5) is True


# --- POSIX unnamed, process-shared -------------------------------------------------------

def test_shared_semaphores_work_across_fork_and_record_the_holder():
    sems = _jail.SharedSemaphores(2)
    try:
        holder = Holder(lambda: sems.wait(1), release=lambda: 0 if sems.post(1) else 5)
        assert sems.holder(1) == holder.pid and sems.value(1) == 0 and sems.holder(0) == 0
        assert sems.trywait(1) is False
        assert sems.post(1) is False                 # not ours: nothing posted
        assert sems.value(1) == 0
        assert holder.let_go() == 0
        assert sems.holder(1) == 0 and sems.value(1) == 1
    finally:
        sems.close()


def test_shared_semaphore_of_a_killed_holder_is_released_once():
    sems = _jail.SharedSemaphores(1)
    try:
        holder = Holder(lambda: sems.wait(0))
        holder.kill()
        pid = holder.pid
        assert sems.value(0) == 0                    # no undo for POSIX semaphores
        assert sems.post(0, pid) is True
        assert sems.post(0, pid) is False            # a second release posts nothing
        assert sems.value(0) == 1
    finally:
        sems.close()


@needs_proc
def test_shared_semaphore_wait_releases_the_gil_and_handles_signals():
    sems = _jail.SharedSemaphores(1)
    try:
        sems.wait(0)

        def child():
            raise_on_usr1()
            t = threading.Thread(target=lambda: sems.wait(0) and sems.post(0))
            t.start()
            wait_blocked(os.getpid(), t.native_id)    # Python runs beside the waiting thread
            try:
                sems.wait(0)
            except Interrupted:
                return 7 if t.is_alive() else 2
            return 1

        pid = fork_child(child)
        # the child's main thread waits too once its thread is blocked; interrupt it
        end = time.monotonic() + 20
        while time.monotonic() < end:
            waiting = [t for t in os.listdir(f"/proc/{pid}/task")
                       if "futex" in Path(f"/proc/{pid}/task/{t}/wchan").read_text()]
            if len(waiting) == 2:
                break
            time.sleep(0.01)
        os.kill(pid, signal.SIGUSR1)
        assert reap(pid) == 7                        # its thread was still waiting
    finally:
        sems.close()


def test_shared_semaphores_are_anonymous_memory():
    before = set(os.listdir("/dev/shm")) if LINUX else set()
    sems = _jail.SharedSemaphores(8)
    try:
        if LINUX:      # glibc keeps named semaphores there; unnamed ones make no file
            assert not {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("sem.")}
        assert sems.count == 8 and sems.creator == os.getpid()
        with pytest.raises(IndexError):
            sems.wait(8)
        with pytest.raises(ValueError):         # what uwsgi.lock(n) raises for a missing lock
            sems.post(-1)
    finally:
        sems.close()
    with pytest.raises(ValueError):
        sems.value(0)


# --- SysVLocks: binary locks over SysV sets, with holder words ---------------------------

def test_sysv_locks_holder_words_and_a_dead_holder_reported_once(sysv_set):
    semids = [sysv_set(), sysv_set()]
    reports = []
    locks = _jail.SysVLocks(semids, lambda i, pid: reports.append((i, pid)))
    try:
        holder = Holder(lambda: locks.wait(1))
        pid = holder.pid
        assert locks.value(1) == 0 and locks.post(1) is False     # not ours: nothing done
        assert locks.value(1) == 0
        holder.kill()
        assert locks.value(1) == 1                 # SEM_UNDO
        assert locks.wait(1) is True               # the next taker sees the dead holder's word
        assert reports == [(1, pid)]
        assert locks.release_dead(1, pid) is False # already reported: not twice
        assert locks.post(1) is True and locks.value(1) == 1
        assert locks.semid(0) == semids[0]
        with pytest.raises(ValueError):
            locks.wait(2)
    finally:
        locks.close()


def test_sysv_locks_release_dead_reports_when_the_master_is_first(sysv_set):
    locks = _jail.SysVLocks([sysv_set()])
    try:
        holder = Holder(lambda: locks.wait(0))
        holder.kill()
        pid = holder.pid
        assert locks.release_dead(0, pid) is True
        assert locks.release_dead(0, pid) is False
        assert locks.value(0) == 1
    finally:
        locks.close()
