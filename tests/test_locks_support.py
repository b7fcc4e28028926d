"""Helpers shared by the lock tests (no tests here): forked children that always end with
os._exit, bounded reaping, and watching a child sleep on a semaphore."""
from __future__ import annotations

import os
import signal
import time
import traceback

import pytest


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
    end = time.monotonic() + limit
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} hung")


def kernel_wait(pid: int, tid: int | None = None, limit: float = 20.0) -> str:
    """What a process (or one of its threads) sleeps on in the kernel (Linux
    /proc/PID/wchan), once it sleeps."""
    path = f"/proc/{pid}/task/{tid}/wchan" if tid else f"/proc/{pid}/wchan"
    end = time.monotonic() + limit
    chan = ""
    while time.monotonic() < end:
        with open(path) as f:
            chan = f.read()
        if chan not in ("", "0"):
            return chan
        time.sleep(0.01)
    pytest.fail(f"{path}: never slept")


def wait_blocked(pid: int, tid: int | None = None, limit: float = 20.0) -> None:
    """Until the process (or thread) sleeps on a semaphore or futex."""
    path = f"/proc/{pid}/task/{tid}/wchan" if tid else f"/proc/{pid}/wchan"
    end = time.monotonic() + limit
    chan = ""
    while time.monotonic() < end:
        with open(path) as f:
            chan = f.read()
        if "futex" in chan or "sem" in chan:
            return
        time.sleep(0.01)
    pytest.fail(f"{path} never showed a semaphore wait (last: {chan!r})")
