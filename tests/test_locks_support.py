"""Helpers shared by the lock tests (no tests here): forked children that always end with
os._exit, bounded reaping, and watching a child sleep on a semaphore."""
from __future__ import annotations

import os
import signal
import time
import traceback

import pytest
from core_fixtures import waitpid_within


def fork_child(fn) -> int:
    """Run fn() in a forked child; its return value (or 70 on an exception) is the exit code.
    The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            code = fn() or 0
        except BaseException:  # noqa: BLE001  (a child must reach os._exit whatever happens)
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid: int, limit: float = 60.0) -> int:
    """Exit status of a child; a child still running after `limit` hung and is killed (a
    guard against a hang, not a timing assertion)."""
    status = waitpid_within(pid, limit, step=0.01)
    if status is not None:
        return os.waitstatus_to_exitcode(status)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} hung")


class Holder:
    """A forked child that takes a lock (take()) and holds it: until the test kills it, or,
    with `release`, until let_go() (then its exit code is release()'s, None being 0).  The
    constructor returns once the child holds the lock."""

    def __init__(self, take, release=None):
        r, w = os.pipe()
        self._go_r, self._go_w = os.pipe()

        def hold():
            take()
            os.write(w, b"x")
            if release is None:
                time.sleep(60)                 # until the test kills it
                return 0
            os.read(self._go_r, 1)
            return release()

        self.pid = fork_child(hold)
        os.close(w)                            # a child that dies first ends the read with b""
        try:
            assert os.read(r, 1) == b"x", "the holder died before it held the lock"
        finally:
            os.close(r)

    def let_go(self) -> int:
        """Tell it to release the lock; its exit status."""
        os.write(self._go_w, b"g")
        return self._reaped()

    def kill(self) -> int:
        """SIGKILL it while it holds the lock; its exit status."""
        os.kill(self.pid, signal.SIGKILL)
        return self._reaped()

    def _reaped(self) -> int:
        os.close(self._go_r)
        os.close(self._go_w)
        return reap(self.pid)


@pytest.fixture
def lockset(tmp_path):
    """locks.setup(*options) with a private registry directory; cleanup() whatever the test
    does (tests/test_locks.py, tests/test_core_thunder.py)."""
    from jailserve import locks
    from jailserve.config.loader import load_config

    made = []

    def make(*args: str, run_dir=None):
        ls = locks.setup(load_config(list(args), {}), run_dir=run_dir or str(tmp_path / "run"))
        made.append(ls)
        return ls

    yield make
    for ls in made:
        ls.cleanup()
    locks.cleanup()


def _watch_wchan(pid: int, tid: int | None, limit: float, done) -> tuple[str, str, bool]:
    """Read /proc/PID[/task/TID]/wchan until done(chan) or `limit` s: (path, last chan, done?)."""
    path = f"/proc/{pid}/task/{tid}/wchan" if tid else f"/proc/{pid}/wchan"
    end = time.monotonic() + limit
    chan = ""
    while time.monotonic() < end:
        with open(path) as f:
            chan = f.read()
        if done(chan):
            return path, chan, True
        time.sleep(0.01)
    return path, chan, False


def kernel_wait(pid: int, tid: int | None = None, limit: float = 20.0) -> str:
    """What a process (or one of its threads) sleeps on in the kernel (Linux
    /proc/PID/wchan), once it sleeps."""
    path, chan, slept = _watch_wchan(pid, tid, limit, lambda c: c not in ("", "0"))
    if not slept:
        pytest.fail(f"{path}: never slept")
    return chan


def wait_blocked(pid: int, tid: int | None = None, limit: float = 20.0) -> None:
    """Until the process (or thread) sleeps on a semaphore or futex."""
    path, chan, blocked = _watch_wchan(pid, tid, limit, lambda c: "futex" in c or "sem" in c)
    if not blocked:
        pytest.fail(f"{path} never showed a semaphore wait (last: {chan!r})")
