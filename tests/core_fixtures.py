"""Helpers for tests/test_core_*.py: run _core.serve() in a forked child on loopback.

The child is always reaped: SIGTERM (the loop's request_stop), then SIGKILL if it has not
exited after a grace period; both by the pid we forked.
"""
import contextlib
import http.client
import io
import os
import select
import signal
import socket
import sys
import time
import traceback

from jailserve import _core

# "sync": _core.serve(); "async": _core.serve_async() (the greenlet hub).  Test modules
# parametrize it with the `core_mode` fixture below (tests run in both modes).
MODE = "sync"
ASYNC_CORES = 8
MODES = ("sync", "async")


def set_mode(mode):
    global MODE
    MODE = mode


def listener(host="127.0.0.1", family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(64)
    return s


def _child(socks, app, cfg_kwargs, setup):
    code = 99
    try:
        signal.signal(signal.SIGTERM, lambda *a: _core.request_stop())
        signal.signal(signal.SIGHUP, lambda *a: _core.request_stop())
        if setup is not None:
            setup()
        cfg = _core.ServeConfig(**cfg_kwargs)
        if MODE == "async":
            served = _core.serve_async(socks, app, cfg, cores=ASYNC_CORES)
        else:
            served = _core.serve(socks, app, cfg)
        code = min(served, 200)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


@contextlib.contextmanager
def serving(app, kinds=("http11",), setup=None, host="127.0.0.1", family=socket.AF_INET,
            **cfg):
    """Fork a child running serve(); yield (ports, pid).  Cleans up the child on exit."""
    socks = [(listener(host, family), kind) for kind in kinds]
    cfg.setdefault("socket_timeout", 5.0)
    cfg.setdefault("server_name", "testhost")
    pid = os.fork()
    if pid == 0:
        _child(socks, app, cfg, setup)
    ports = [s.getsockname()[1] for s, _ in socks]
    for s, _ in socks:
        s.close()
    state = {"pid": pid, "status": None}
    try:
        yield ports, state
    finally:
        if state["status"] is None:
            state["status"] = stop(pid)


def waitpid_within(pid, timeout, step=0.02):
    """The wait status of child pid once it has exited, polled every `step` s; None if it is
    still running after `timeout` s (also used by tests/test_locks_support.py)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(step)
    return None


def stop(pid, grace=10.0):
    """SIGTERM, wait up to `grace` s, then SIGKILL; returns the wait status."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    status = waitpid_within(pid, grace)
    if status is not None:
        return status
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def wait_exit(pid, timeout=20.0):
    """Wait for the child to exit by itself; its exit code (None if it did not)."""
    status = waitpid_within(pid, timeout)
    return None if status is None else os.waitstatus_to_exitcode(status)


def connect(port, host="127.0.0.1", timeout=10.0):
    return socket.create_connection((host, port), timeout=timeout)


def exchange(port, data, host="127.0.0.1", timeout=10.0):
    """Send data on a new connection and read until the server closes it; what came back."""
    with connect(port, host, timeout) as s:
        s.sendall(data)
        return recv_all(s)


class _OneFile:
    """Lets several http.client.HTTPResponse objects read one buffered stream in turn."""

    def __init__(self, f):
        self.f = f

    def makefile(self, *a, **k):
        return self.f


class _Shared(io.BufferedReader):
    """HTTPResponse closes its file at the end of a body; the next response needs it."""

    def close(self):
        pass


def read_responses(sock, methods):
    """Parse len(methods) responses from one connection with the stdlib client parser."""
    f = _Shared(socket.SocketIO(sock, "rb"))
    out = []
    for m in methods:
        r = http.client.HTTPResponse(_OneFile(f), method=m)
        r.begin()
        out.append((r.status, {k.lower(): v for k, v in r.getheaders()}, r.read(), r))
    return out


def recv_all(sock):
    """Read until the server closes the connection."""
    chunks = []
    while True:
        b = sock.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


class Pipe:
    """A pipe the child writes lines to (app events, log records) and the test reads."""

    def __init__(self):
        self.r, self.w = os.pipe()

    def send(self, text):
        os.write(self.w, (text + "\n").encode())

    def lines(self, n, timeout=10.0):
        buf = b""
        deadline = time.monotonic() + timeout
        while buf.count(b"\n") < n and time.monotonic() < deadline:
            ready, _, _ = select.select([self.r], [], [], 0.1)
            if ready:
                buf += os.read(self.r, 65536)
        return buf.decode().splitlines()

    def close(self):
        os.close(self.r)
        os.close(self.w)


def eprint(*a):
    print(*a, file=sys.stderr)
