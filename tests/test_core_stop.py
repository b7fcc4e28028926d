"""A stop never costs a client its answer: a connection the loop has accepted is served even
when the stop signal comes before the client's request bytes (the classic reload race)."""
from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from jailserve import _core


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def _accepted_by(pid: int, server_port: int, client_port: int) -> bool:
    """Whether process pid holds the server side of our connection: a connection still in
    the backlog has no socket inode in /proc/net/tcp; an accepted one has, and pid has an fd
    on it."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote and fields[9] != "0":
                inode = fields[9]
    if inode is None:
        return False
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="watches /proc/net/tcp and /proc/PID/fd")
@pytest.mark.parametrize("kind", ["http", "http11"])
def test_accepted_connection_is_served_after_a_stop(kind):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    pid = os.fork()
    if pid == 0:                                   # the worker
        code = 1
        try:
            signal.signal(signal.SIGHUP, lambda *a: _core.request_stop())
            _core.serve([(listener, kind)], app, _core.ServeConfig(socket_timeout=10))
            code = 0
        finally:
            os._exit(code)
    try:
        client = socket.create_connection(listener.getsockname(), timeout=30)
        ports = listener.getsockname()[1], client.getsockname()[1]
        deadline = time.monotonic() + 30
        while not _accepted_by(pid, *ports):       # wait until the worker has accepted it
            assert time.monotonic() < deadline, "the worker never accepted"
            time.sleep(0.01)
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.3)                            # the stop is in before the request
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"\r\n\r\nok" not in answer:
            chunk = client.recv(4096)
            assert chunk, f"closed without an answer after {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        client.close()
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        listener.close()
