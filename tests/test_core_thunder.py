"""thunder-lock in _core.serve()'s accept loop (issue 6, docs/locks.md): several forked
workers serve one listening socket; only the lock holder is in poll()/accept(), the others
sleep on the lock, and every request is still served."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest
import test_locks_support
from test_locks_support import fork_child, kernel_wait, reap

from jailserve import _core

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches /proc/PID/wchan")

ENGINES = ("posixsem", "ipcsem")
WORKERS = 3
lockset = test_locks_support.lockset    # the fixture: locks.setup() in a private run dir, cleanup() after


def hello(env, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def start_workers(srv, n):
    def worker():
        signal.signal(signal.SIGTERM, lambda *a: _core.request_stop())
        served = _core.serve([(srv, "http")], hello, _core.ServeConfig(socket_timeout=5))
        return min(served, 200)

    return [fork_child(worker) for _ in range(n)]


def waits(pids):
    return [kernel_wait(pid) for pid in pids]


def get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
    assert data.startswith(b"HTTP/1.1 200 ")
    return int(data.rsplit(b"\r\n\r\n", 1)[1])


def settle(pids, want_poll, limit=20.0):
    """Until `want_poll` of the workers sleep in poll and the rest on the lock."""
    end = time.monotonic() + limit
    chans = []
    while time.monotonic() < end:
        chans = waits(pids)
        in_poll = sum(1 for c in chans if "poll" in c)
        on_lock = sum(1 for c in chans if "futex" in c or "sem" in c)
        if in_poll == want_poll and on_lock == len(pids) - want_poll:
            return chans
        time.sleep(0.05)
    raise AssertionError(f"workers sleep on {chans}")


@pytest.mark.parametrize("engine", ENGINES)
def test_thunder_lock_serialises_the_serve_loop(engine, lockset):
    lockset("--lock-engine", engine, "--thunder-lock")
    srv = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = srv.getsockname()[1]
    pids = start_workers(srv, WORKERS)
    try:
        settle(pids, 1)                    # one polls the socket, the others wait on the lock
        served_by = {get(port) for _ in range(30)}
        assert served_by <= set(pids)
        settle(pids, 1)                    # after serving, the lock went back to one worker
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        codes = [reap(pid) for pid in pids]  # a stop request reaches a worker waiting on the lock
        srv.close()
    assert sum(codes) == 30


def test_without_thunder_lock_every_worker_polls(lockset):
    lockset()
    srv = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = srv.getsockname()[1]
    pids = start_workers(srv, WORKERS)
    try:
        settle(pids, WORKERS)
        for _ in range(10):
            get(port)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        codes = [reap(pid) for pid in pids]
        srv.close()
    assert sum(codes) == 10
