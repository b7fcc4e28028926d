"""jailserve.locks: both engines with real forks and real semaphores.

Mutual exclusion is shown the direct way: processes increment a counter in a file with a
read-sleep-write (so that, unprotected, updates are lost) and the total is exact only under
the lock."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import test_locks_support
from test_locks_support import Holder, fork_child, kernel_wait, reap

from jailserve import _jail, locks
from jailserve.config.loader import load_config
from jailserve.errors import ConfigError

ENGINES = ["posixsem", "ipcsem"]
LINUX = sys.platform.startswith("linux")


lockset = test_locks_support.lockset    # the fixture: setup() in a private run dir, cleanup() after


def config(*args: str):
    return load_config(list(args), {})


class alarm_guard:
    """A blocking lock() that would hang instead raises: SIGALRM interrupts the wait and
    its handler's exception comes out of lock() (the EINTR path)."""

    def __init__(self, seconds=20):
        self.seconds = seconds

    def __enter__(self):
        def on_alarm(signum, frame):
            raise TimeoutError("lock() still waiting")
        self.old = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


# --- mutual exclusion --------------------------------------------------------------------

WORKERS, ROUNDS = 4, 20


def run_counters(path, use_lock: bool, n: int) -> int:
    path.write_text("0")
    gate_r, gate_w = os.pipe()

    def bump():
        os.read(gate_r, 1)                 # all start together
        for _ in range(ROUNDS):
            if use_lock:
                locks.lock(n)
            try:
                value = int(path.read_text())
                time.sleep(0.002)          # widen the read-modify-write window
                tmp = path.with_name(f"{path.name}.{os.getpid()}")
                tmp.write_text(str(value + 1))
                os.replace(tmp, path)      # a reader never sees a half-written file
            finally:
                if use_lock:
                    locks.unlock(n)

    pids = [fork_child(bump) for _ in range(WORKERS)]
    os.write(gate_w, b"g" * WORKERS)
    assert [reap(pid) for pid in pids] == [0] * WORKERS
    return int(path.read_text())


@pytest.mark.parametrize("engine", ENGINES)
def test_counter_is_exact_under_the_lock(engine, lockset, tmp_path):
    lockset("--lock-engine", engine, "--locks", "2")
    assert run_counters(tmp_path / "count", True, 2) == WORKERS * ROUNDS


@pytest.mark.parametrize("engine", ENGINES)
def test_counter_loses_updates_without_the_lock(engine, lockset, tmp_path):
    # the same workload unprotected: shows the exact count above is the lock's doing
    lockset("--lock-engine", engine)
    assert run_counters(tmp_path / "count", False, 0) < WORKERS * ROUNDS


# --- API ---------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_locks_n_gives_n_plus_one_and_out_of_range_is_valueerror(engine, lockset):
    lockset("--lock-engine", engine, "--locks", "3")
    for n in range(4):
        locks.lock(n)
        assert locks.is_locked(n)
        locks.unlock(n)
        assert not locks.is_locked(n)
    for bad in (4, -1):
        for call in (locks.lock, locks.unlock, locks.is_locked):
            with pytest.raises(ValueError):
                call(bad)


@pytest.mark.parametrize("engine", ENGINES)
def test_default_is_one_lock(engine, lockset):
    lockset("--lock-engine", engine)
    locks.lock()
    assert locks.is_locked() and locks.is_locked(0)
    locks.unlock()
    with pytest.raises(ValueError):
        locks.is_locked(1)


@pytest.mark.parametrize("engine", ENGINES)
def test_is_locked_sees_another_processs_lock_and_unlock_by_non_holder_is_ignored(engine, lockset):
    lockset("--lock-engine", engine)
    def unlock():                        # its exit code 0, whatever unlock() returns
        locks.unlock(0)

    holder = Holder(lambda: locks.lock(0), release=unlock)
    assert locks.is_locked(0)
    locks.unlock(0)                      # not ours: must not let a second holder in
    assert locks.is_locked(0)
    assert holder.let_go() == 0
    assert not locks.is_locked(0)


def test_default_engine_is_posixsem(lockset):
    ls = lockset()
    assert ls.engine.name == "posixsem"


def test_unknown_engine_is_a_config_error_naming_the_option_and_the_choices():
    with pytest.raises(ConfigError) as e:
        config("--lock-engine", "pthread")
    assert "lock-engine" in str(e.value) and "posixsem" in str(e.value) and "ipcsem" in str(e.value)


def test_ini_error_has_file_and_line(tmp_path):
    ini = tmp_path / "app.ini"
    ini.write_text("[uwsgi]\nlocks = 2\nlock-engine = spinlock\n")
    with pytest.raises(ConfigError) as e:
        config(str(ini))
    assert str(e.value).startswith(f"{ini}:3: option 'lock-engine'")


def test_ftok_missing_file_is_a_config_error(lockset, tmp_path):
    with pytest.raises(ConfigError) as e:
        lockset("--lock-engine", "ipcsem", "--ftok", str(tmp_path / "nope"))
    assert "ftok" in str(e.value)


def test_too_many_ftok_locks(lockset, tmp_path):
    (tmp_path / "k").write_text("")
    with pytest.raises(ConfigError) as e:
        lockset("--lock-engine", "ipcsem", "--ftok", str(tmp_path / "k"), "--locks", "255")
    assert "at most 255" in str(e.value)


def test_lock_before_setup_says_so():
    locks.cleanup()
    with pytest.raises(locks.LockError):
        locks.lock()


def test_enosys_names_allow_sysvipc_and_sysvsem():
    # FreeBSD jails without SysV IPC fail semget with ENOSYS (FREEBSD_JAILS §5.1); Linux
    # cannot be made to, so the translation is checked on the error itself.
    plan = locks.LockPlan(config("--lock-engine", "ipcsem"))
    err = locks.sysv_error(OSError(errno.ENOSYS, "Function not implemented"), plan)
    text = str(err)
    assert isinstance(err, ConfigError)
    assert "allow.sysvipc" in text and "sysvsem=new" in text and "lock-engine" in text


# --- dead holders ------------------------------------------------------------------------

def kill_while_holding(n: int) -> int:
    holder = Holder(lambda: locks.lock(n))
    assert locks.is_locked(n)
    assert holder.kill() == -signal.SIGKILL
    return holder.pid


def test_ipcsem_killed_holder_is_released_by_the_kernel(lockset, capfd):
    lockset("--lock-engine", "ipcsem", "--locks", "1")
    pid = kill_while_holding(1)
    assert not locks.is_locked(1)              # SEM_UNDO, before the master did anything
    assert locks.release_dead(pid) == [1]
    assert f"lock 1 was held by dead process {pid}: released by the kernel" in capfd.readouterr().err
    with alarm_guard():
        locks.lock(1)
    locks.unlock(1)


def test_ipcsem_dead_holder_is_reported_once_by_whoever_takes_the_lock_first(lockset, capfd):
    # the next worker may take the lock (freed by SEM_UNDO) before the master hears of the
    # death: then the taker reports it, and the master's release_dead finds nothing more
    lockset("--lock-engine", "ipcsem")
    pid = kill_while_holding(0)
    with alarm_guard():
        locks.lock(0)
    locks.unlock(0)
    assert locks.release_dead(pid) == []
    err = capfd.readouterr().err
    assert err.count(f"lock 0 was held by dead process {pid}: released by the kernel (SEM_UNDO)") == 1


def test_posixsem_killed_holder_is_released_by_release_dead(lockset, capfd):
    lockset("--lock-engine", "posixsem", "--locks", "1")
    pid = kill_while_holding(1)
    assert locks.is_locked(1)                  # POSIX semaphores have no undo
    assert locks.release_dead(pid) == [1]
    assert f"lock 1 was held by dead process {pid}: released by the master" in capfd.readouterr().err
    assert not locks.is_locked(1)
    assert locks.release_dead(pid) == []       # twice: nothing more is posted
    with alarm_guard():
        locks.lock(1)
    assert locks.is_locked(1)
    locks.unlock(1)


@pytest.mark.parametrize("engine", ENGINES)
def test_release_dead_of_a_pid_that_holds_nothing_changes_nothing(engine, lockset):
    lockset("--lock-engine", engine)
    locks.lock(0)
    pid = fork_child(lambda: 0)
    reap(pid)
    assert locks.release_dead(pid) == []
    assert locks.is_locked(0)
    locks.unlock(0)


@pytest.mark.parametrize("engine", ENGINES)
def test_waiter_gets_the_lock_of_a_killed_holder(engine, lockset, tmp_path):
    # the acceptance scenario: a second worker blocked on the lock proceeds once the master
    # has handled the death (posixsem) or at once (ipcsem)
    lockset("--lock-engine", engine)
    done = tmp_path / "done"

    def wait_then_mark():
        locks.lock(0)
        done.write_text(str(os.getpid()))
        locks.unlock(0)

    holder = Holder(lambda: locks.lock(0))
    waiter = fork_child(wait_then_mark)
    holder.kill()
    locks.release_dead(holder.pid)             # what the master does on SIGCHLD
    assert reap(waiter) == 0
    assert done.read_text() == str(waiter)


# --- thunder lock ------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_thunder_lock_is_separate_from_user_locks(engine, lockset):
    ls = lockset("--lock-engine", engine, "--thunder-lock")
    assert locks.thunder_lock_enabled()
    locks.accept_lock()
    assert ls.engine.is_locked(ls.thunder_index)
    assert not locks.is_locked(0)
    with pytest.raises(ValueError):
        locks.lock(1)                          # the thunder lock is not user lock 1
    locks.accept_unlock()
    assert not ls.engine.is_locked(ls.thunder_index)


@pytest.mark.skipif(not LINUX, reason="watches /proc/PID/wchan")
def test_thunder_lock_serialises_accept_between_processes(lockset):
    # two processes accept() on one listening socket; under the thunder lock only one is
    # ever inside accept: the second sleeps on the lock (a futex), not in accept()
    import socket

    lockset("--thunder-lock")
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    r, w = os.pipe()

    def acceptor():
        locks.accept_lock()
        os.write(w, b"a")
        conn, _ = srv.accept()
        locks.accept_unlock()
        conn.close()

    first = fork_child(acceptor)
    assert os.read(r, 1) == b"a"
    second = fork_child(acceptor)
    assert "futex" in kernel_wait(second)
    socket.create_connection(("127.0.0.1", port)).close()
    assert reap(first) == 0
    assert os.read(r, 1) == b"a"              # now the second one took the lock
    socket.create_connection(("127.0.0.1", port)).close()
    assert reap(second) == 0
    srv.close()


def test_no_thunder_lock_makes_accept_lock_free(lockset):
    lockset()
    assert not locks.thunder_lock_enabled()
    locks.accept_lock()
    locks.accept_lock()                        # no lock: nothing to wait for
    locks.accept_unlock()


# --- ownership of SysV sets ----------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_ipcsem_sets_and_registry_are_given_to_uid_gid(lockset):
    ls = lockset("--lock-engine", "ipcsem", "--uid", "65534", "--gid", "65534", "--locks", "1")
    for semid in ls.engine.semids:
        st = _jail.sem_stat(semid)
        assert (st["uid"], st["gid"]) == (65534, 65534)
    assert os.stat(ls.registry.path).st_uid == 65534


def test_ipcs_lists_exactly_our_sets(lockset):
    ls = lockset("--lock-engine", "ipcsem", "--locks", "2", "--thunder-lock")
    out = subprocess.run(["ipcs", "-s"], capture_output=True, text=True, check=True).stdout
    listed = {int(f[1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 5 and f[1].isdigit()}
    ours = set(ls.engine.semids)
    assert len(ours) == 4 and ours <= listed
    ls.cleanup()
    out = subprocess.run(["ipcs", "-s"], capture_output=True, text=True, check=True).stdout
    listed = {int(f[1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 5 and f[1].isdigit()}
    assert not ours & listed


# --- the registry sweep ------------------------------------------------------------------

def dead_pid() -> int:
    pid = fork_child(lambda: 0)
    reap(pid)
    return pid


def stray_set() -> int:
    semid = _jail.semget(_jail.IPC_PRIVATE, 1, _jail.IPC_CREAT | _jail.IPC_EXCL | 0o600)
    _jail.semctl(semid, 0, _jail.SETVAL, 1)
    return semid


def write_record(run_dir, name, pid, space, semid):
    import json

    (run_dir / "locks").mkdir(parents=True, exist_ok=True)
    (run_dir / "locks" / f"{name}.json").write_text(json.dumps(
        {"pid": pid, "ipc_space": space, "sets": [locks.set_identity(semid)]}))


def set_exists(semid: int) -> bool:
    try:
        _jail.semctl(semid, 0, _jail.GETVAL)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("whose,removed", [("dead", True), ("alive", False), ("other-namespace", False)])
def test_setup_sweeps_only_the_sets_of_dead_masters_in_this_ipc_namespace(whose, removed, lockset, tmp_path):
    run_dir = tmp_path / "run"
    semid = stray_set()
    try:
        pid = os.getppid() if whose == "alive" else dead_pid()
        space = _jail.ipc_space() + (1 if whose == "other-namespace" else 0)
        write_record(run_dir, "someone-else", pid, space, semid)
        lockset("--lock-engine", "ipcsem", run_dir=str(run_dir))
        assert set_exists(semid) is not removed
        assert (run_dir / "locks" / "someone-else.json").exists() is not removed
    finally:
        if set_exists(semid):
            _jail.semctl(semid, 0, _jail.IPC_RMID)


def test_sweep_leaves_a_recycled_id_alone(lockset, tmp_path):
    # the record names a set id that now belongs to a set made later (ctime differs)
    import json

    run_dir = tmp_path / "run"
    semid = stray_set()
    try:
        write_record(run_dir, "old", dead_pid(), _jail.ipc_space(), semid)
        path = run_dir / "locks" / "old.json"
        record = json.loads(path.read_text())
        record["sets"][0]["ctime"] -= 100
        path.write_text(json.dumps(record))
        lockset("--lock-engine", "ipcsem", run_dir=str(run_dir))
        assert set_exists(semid)
    finally:
        _jail.semctl(semid, 0, _jail.IPC_RMID)


@pytest.mark.skipif(not LINUX, reason="watches /proc/PID/wchan")
@pytest.mark.parametrize("engine", ENGINES)
def test_accept_lock_gives_up_when_a_signal_handler_asks_to_stop(engine, lockset):
    # a worker's stop request only sets a flag: the thunder-lock wait must return so the
    # serve loop can see it, instead of waiting on for the lock
    lockset("--lock-engine", engine, "--thunder-lock")
    assert locks.accept_lock() is True       # the master holds it: the child must wait

    def child():
        stop = []
        signal.signal(signal.SIGUSR1, lambda s, f: stop.append(s))
        while not stop:
            if locks.accept_lock():
                return 3                     # must not get it: we never released
        return 0

    pid = fork_child(child)
    chan = kernel_wait(pid)
    assert "futex" in chan or "sem" in chan
    os.kill(pid, signal.SIGUSR1)
    assert reap(pid) == 0
    locks.accept_unlock()


def test_persistent_private_sets_are_kept_at_exit_and_removed_by_the_next_start(tmp_path):
    # persistent-ipcsem keeps the sets (uWSGI); without ftok keys nobody could find them
    # again, so the next start's sweep removes them instead of leaking them
    run_dir = str(tmp_path / "run")
    args = ("--lock-engine", "ipcsem", "--persistent-ipcsem")
    first = locks.setup(config(*args), run_dir=run_dir)
    old = list(first.engine.semids)
    locks.cleanup()
    second = None
    try:
        assert all(set_exists(semid) for semid in old)
        second = locks.setup(config(*args), run_dir=run_dir)
        assert not any(set_exists(semid) for semid in old)
    finally:
        new = list(second.engine.semids) if second and second.engine else []
        locks.cleanup()
        for semid in old + new:
            if set_exists(semid):
                _jail.semctl(semid, 0, _jail.IPC_RMID)


@pytest.mark.parametrize("engine", ENGINES)
def test_thunder_lock_of_a_killed_worker_is_released_and_named(engine, lockset, capfd):
    lockset("--lock-engine", engine, "--thunder-lock")
    holder = Holder(locks.accept_lock)
    holder.kill()
    pid = holder.pid
    assert locks.release_dead(pid) == [1]            # numbered after the user lock 0
    assert f"thunder lock was held by dead process {pid}" in capfd.readouterr().err
    with alarm_guard():
        assert locks.accept_lock() is True
    locks.accept_unlock()
