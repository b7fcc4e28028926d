"""worker: a real fork running the real _core loop on a loopback listener."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import time

from jailserve import apps
from jailserve.config import load_config
from jailserve.master import WORKER_STOP, StatusSlots
from jailserve.worker import Worker, run_forked

HELLO = os.path.join(os.path.dirname(__file__), "apps", "hello.py")


def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def fork_worker(worker, slots, logfile):
    """As the master does: stop signals blocked across fork, fd 2 to a file, os._exit."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_STOP)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 2)
            code = run_forked(worker, 1, slots.slot(1))
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return pid


def get(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def make(argv, lazy_app=None):
    config = load_config(argv, {})
    spec = apps.plan_app(config)
    app = None if spec.lazy else apps.load(spec)
    return config, spec, app


def test_worker_serves_counts_in_its_slot_logs_and_stops_on_sighup(tmp_path):
    s = listener()
    port = s.getsockname()[1]
    config, spec, app = make(["--http-socket", f"127.0.0.1:{port}", "--wsgi-file", HELLO])
    slots = StatusSlots(1)
    pid = fork_worker(Worker([(s, "http")], app, spec, config), slots, tmp_path / "w.log")
    try:
        assert get(port) == (200, b"Hello, World!")
        assert get(port, "/x?y") == (200, b"Hello, World!")
        # the loop marks the slot idle after its write and close(): the response can arrive
        # first, so poll until a generous deadline (a liveness bound, not a timing check)
        deadline = time.monotonic() + 30
        while slots.read(1) != (0, 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slots.read(1) == (0, 2)          # idle, two requests done
    finally:
        os.kill(pid, signal.SIGHUP)
        _, status = os.waitpid(pid, 0)
    s.close()
    assert os.waitstatus_to_exitcode(status) == 0
    log = (tmp_path / "w.log").read_text()
    assert f"[pid: {pid}|app: 0|req: 2/2] 127.0.0.1 ()" in log and "GET /x?y => generated 13 bytes" in log


def test_max_requests_ends_the_worker_with_0(tmp_path):
    s = listener()
    port = s.getsockname()[1]
    config, spec, app = make(["--http-socket", f"127.0.0.1:{port}", "--wsgi-file", HELLO,
                              "--max-requests", "2", "--disable-logging"])
    pid = fork_worker(Worker([(s, "http")], app, spec, config), StatusSlots(1), tmp_path / "w.log")
    try:
        get(port)
        get(port)
    finally:
        _, status = os.waitpid(pid, 0)
        s.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "w.log").read_text() == ""      # disable-logging: no request lines


def test_lazy_worker_that_cannot_load_exits_22(tmp_path):
    s = listener()
    config, spec, app = make(["--http-socket", "127.0.0.1:1", "--wsgi-file", str(tmp_path / "nope.py"), "--lazy-apps"])
    pid = fork_worker(Worker([(s, "http")], app, spec, config), StatusSlots(1), tmp_path / "w.log")
    _, status = os.waitpid(pid, 0)
    s.close()
    assert os.waitstatus_to_exitcode(status) == apps.FAILED_APP_CODE
    assert "worker 1: unable to load wsgi-file" in (tmp_path / "w.log").read_text()
