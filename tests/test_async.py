"""Async mode (issue 8): _core.serve_async(), the greenlet hub, through real loopback sockets,
and the `uwsgi` module's async calls.  Bounds are generous guards, never timing assertions:
"100 requests that each sleep 1 s finish in about a second" is checked as < 5 s, against the
sync loop's >= 4.5 s for 5 of them."""
from __future__ import annotations

import http.client
import os
import socket
import threading
import time

import core_fixtures
import pytest
from core_fixtures import Pipe, connect, read_responses, recv_all, serving, wait_exit

from jailserve import _core
from jailserve import uwsgi_compat as uwsgi
from jailserve.config import load_config
from jailserve.errors import ConfigError
from jailserve.greenlet_hub import plan_async


@pytest.fixture
def mode():
    def use(m, cores=8):
        core_fixtures.set_mode(m)
        core_fixtures.ASYNC_CORES = cores
    yield use
    core_fixtures.set_mode("sync")
    core_fixtures.ASYNC_CORES = 8


def sleeper(env, start_response):
    uwsgi.async_sleep(float(env.get("QUERY_STRING") or 1))
    uwsgi.suspend()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept"]


def hello(env, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def get(port, path="/", timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def concurrently(n, fn):
    out = [None] * n
    errors = []

    def run(i):
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001  (reported below, not swallowed)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out, time.monotonic() - t0


# -- acceptance: 100 sleeping requests on one worker ------------------------------------------
def test_100_sleeping_requests_run_at_once(mode):
    mode("async", 100)
    with serving(sleeper, kinds=("http",)) as (ports, _):
        out, took = concurrently(100, lambda i: get(ports[0], "/?1"))
    assert out == [(200, b"slept")] * 100
    assert took < 5.0                    # ~1 s; one at a time it would be 100 s


def test_sync_mode_serves_sleepers_one_at_a_time(mode):
    mode("sync")
    with serving(sleeper, kinds=("http",)) as (ports, _):
        out, took = concurrently(5, lambda i: get(ports[0], "/?1"))
    assert out == [(200, b"slept")] * 5
    assert took >= 4.5                   # 5 x 1 s: async_sleep blocks the sync worker


def test_async_mode_same_five_sleepers(mode):
    mode("async", 100)
    with serving(sleeper, kinds=("http",)) as (ports, _):
        out, took = concurrently(5, lambda i: get(ports[0], "/?1"))
    assert out == [(200, b"slept")] * 5
    assert took < 4.5


# -- slowloris and idle connections -----------------------------------------------------------
def test_500_slowloris_connections_do_not_stop_normal_requests(mode):
    mode("async", 10)
    with serving(hello, socket_timeout=60) as (ports, _):
        held = []
        try:
            for i in range(500):
                s = connect(ports[0])
                s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Drip: ")   # never finished
                held.append(s)
            for round_ in range(3):
                for s in held[round_::7]:
                    s.sendall(b"a")                                   # still dripping
                out, _ = concurrently(20, lambda i: get(ports[0]))
                assert out == [(200, b"hello")] * 20
            for s in held:                                            # none was dropped
                s.setblocking(False)
                with pytest.raises(BlockingIOError):
                    s.recv(1)
        finally:
            for s in held:
                s.close()


def test_idle_keepalive_connections_hold_no_core(mode):
    # one core; 50 keep-alive connections that served a request stay open and idle; a new
    # client is still served at once (uWSGI's sync http11 worker would wait for the idle
    # one's timeout; jailserve's sync hub does not either: tests/test_core_keepalive.py)
    mode("async", 1)
    with serving(hello, socket_timeout=60) as (ports, _):
        idle = []
        try:
            for i in range(50):
                s = connect(ports[0])
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                (status, _, body, _), = read_responses(s, ["GET"])
                assert (status, body) == (200, b"hello")
                idle.append(s)
            assert get(ports[0], timeout=20) == (200, b"hello")
            for s in idle:                      # and each idle one can go on
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                (status, _, body, _), = read_responses(s, ["GET"])
                assert status == 200
        finally:
            for s in idle:
                s.close()


def test_stalled_head_and_body_are_closed_by_socket_timeout(mode):
    mode("async", 4)

    def reader(env, start_response):
        body = env["wsgi.input"].read()
        start_response("200 OK", [])
        return [body]

    with serving(reader, socket_timeout=1.0) as (ports, _):
        head = connect(ports[0])
        head.sendall(b"GET / HTTP/1.1\r\nHost")                  # head never completes
        body = connect(ports[0])
        body.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        idle = connect(ports[0])                                   # never sends a byte
        for s in (head, body, idle):
            s.settimeout(30)
            assert recv_all(s) == b""                              # closed, no answer
            s.close()
        assert get(ports[0]) == (200, b"")                         # the worker is fine


# -- cores, FIFO, limits ----------------------------------------------------------------------
def test_at_most_n_requests_in_the_app_and_fifo_order(mode):
    mode("async", 2)
    pipe = Pipe()
    state = {"in": 0}

    def app(env, start_response):
        state["in"] += 1
        pipe.send(f"start {env['QUERY_STRING']} {state['in']}")
        uwsgi.async_sleep(0.3)
        uwsgi.suspend()
        state["in"] -= 1
        start_response("200 OK", [])
        return [b"ok"]

    try:
        with serving(app, kinds=("http",)) as (ports, _):
            socks = []
            for i in range(8):          # sent one after the other: queued in this order
                s = connect(ports[0])
                s.sendall(f"GET /?{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                socks.append(s)
                time.sleep(0.02)
            for s in socks:
                assert recv_all(s).startswith(b"HTTP/1.1 200 ")
                s.close()
            lines = pipe.lines(8)
    finally:
        pipe.close()
    order = [int(line.split()[1]) for line in lines]
    inside = [int(line.split()[2]) for line in lines]
    assert max(inside) == 2                      # never more than the 2 cores
    assert order == sorted(order)                # waiting requests go in arrival order


def test_graceful_stop_finishes_requests_in_flight(mode):
    mode("async", 20)
    pipe = Pipe()

    def app(env, start_response):
        pipe.send("in")
        uwsgi.async_sleep(1.0)
        uwsgi.suspend()
        start_response("200 OK", [])
        return [b"finished"]

    try:
        with serving(app, kinds=("http11",)) as (ports, state):
            socks = [connect(ports[0]) for _ in range(10)]
            for s in socks:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert len(pipe.lines(10)) == 10     # all ten are in the app
            os.kill(state["pid"], 15)            # SIGTERM: request_stop()
            for s in socks:
                data = recv_all(s)               # answered, then closed
                assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"finished")
                assert b"Connection: close" in data
                s.close()
            assert wait_exit(state["pid"]) == 10  # serve_async returned: 10 served
            state["status"] = 0
            with pytest.raises(OSError):
                connect(ports[0], timeout=2).recv(1)
    finally:
        pipe.close()


# -- the app's own waits --------------------------------------------------------------------
def test_wait_fd_read_and_async_connect(mode):
    mode("async", 8)
    backend = socket.create_server(("127.0.0.1", 0))
    bport = backend.getsockname()[1]
    release = threading.Event()             # the backend answers only once the test says so

    def serve_backend():
        c, _ = backend.accept()
        data = c.recv(100)
        release.wait(60)
        c.sendall(b"pong:" + data)
        c.close()

    t = threading.Thread(target=serve_backend, daemon=True)
    t.start()

    def app(env, start_response):
        if env["PATH_INFO"] == "/hello":
            return hello(env, start_response)
        fd = uwsgi.async_connect(f"127.0.0.1:{bport}")
        try:
            uwsgi.wait_fd_write(fd, 5)
            uwsgi.suspend()
            assert uwsgi.ready_fd() == fd
            os.write(fd, b"ping")
            uwsgi.wait_fd_read(fd, 5)
            uwsgi.suspend()
            got = os.read(fd, 100) if uwsgi.ready_fd() == fd else b"timeout"
        finally:
            os.close(fd)
        start_response("200 OK", [])
        return [got]

    with serving(app) as (ports, _):
        results = {}

        def backend_call():
            results["backend"] = get(ports[0], "/backend")

        th = threading.Thread(target=backend_call)
        th.start()
        time.sleep(0.1)
        for _ in range(5):                       # served while the other one waits on its fd
            assert get(ports[0], "/hello", timeout=20) == (200, b"hello")
        assert th.is_alive()                     # still waiting for the backend
        release.set()
        th.join()
        assert results["backend"] == (200, b"pong:ping")
    t.join(5)
    backend.close()


def test_wait_fd_read_timeout_gives_ready_fd_minus_one(mode):
    mode("async", 4)

    def app(env, start_response):
        r, w = os.pipe()
        try:
            yield_value = uwsgi.wait_fd_read(r, 0.2)
            uwsgi.suspend()
            ready = uwsgi.ready_fd()
        finally:
            os.close(r)
            os.close(w)
        start_response("200 OK", [])
        return [yield_value + str(ready).encode()]

    with serving(app) as (ports, _):
        assert get(ports[0]) == (200, b"-1")


def test_generator_style_yield_of_a_wait(mode):
    # uWSGI's older style: `yield uwsgi.async_sleep(n)` suspends at the yield
    mode("async", 50)

    def app(env, start_response):
        start_response("200 OK", [])
        yield b"a"
        yield uwsgi.async_sleep(1)
        yield b"b"

    with serving(app, kinds=("http",)) as (ports, _):
        out, took = concurrently(20, lambda i: get(ports[0]))
    assert out == [(200, b"ab")] * 20
    assert took < 10.0


def test_async_calls_outside_a_request_are_refused():
    with pytest.raises(RuntimeError):
        _core.async_suspend()
    assert _core.async_active() is False


def test_sync_mode_compat_calls_block():
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        assert uwsgi.wait_fd_read(r, 1) == b""
        assert uwsgi.ready_fd() == r
        os.read(r, 1)
        uwsgi.wait_fd_read(r, 0.05)
        assert uwsgi.ready_fd() == -1
        uwsgi.suspend()                          # nothing to switch to
    finally:
        os.close(r)
        os.close(w)


# -- validation (plan_async) -----------------------------------------------------------------
def plan(*args):
    return plan_async(load_config(["--http-socket", ":0", "--wsgi-file", "x.py", *args], {}))


def test_plan_async():
    assert plan().cores == 0 and not plan().enabled
    p = plan("--async", "100", "--greenlet")
    assert (p.cores, p.engine) == (100, "greenlet") and "100 cores" in p.describe()
    assert plan("--async", "4").engine == "greenlet"
    assert plan("--async", "4", "--plugin", "python,greenlet").cores == 4


@pytest.mark.parametrize("args,option", [(("--greenlet",), "greenlet"),
                                         (("--ugreen",), "greenlet"),
                                         (("--plugin", "greenlet"), "plugin"),
                                         (("--async", "0", "--greenlet"), "greenlet")])
def test_greenlet_without_async_is_a_config_error(args, option):
    with pytest.raises(ConfigError) as info:
        plan(*args)
    assert "requires async mode" in str(info.value) and info.value.option == option


def test_async_cores_bounds():
    with pytest.raises(ConfigError):
        load_config(["--async", "100000000"], {})


def test_a_wait_left_registered_by_a_failing_request_does_not_leak(mode):
    # the app registers a wait and raises before suspend(): 500, and the next request on the
    # same (pooled) connection buffers is not suspended by the stale wait
    mode("async", 1)

    def app(env, start_response):
        if env["PATH_INFO"] == "/fail":
            r, w = os.pipe()
            uwsgi.wait_fd_read(r, 30)
            os.close(r)
            os.close(w)
            raise RuntimeError("before suspend")
        return hello(env, start_response)

    with serving(app, kinds=("http",), errors=open(os.devnull, "w")) as (ports, _):
        assert get(ports[0], "/fail")[0] == 500
        for _ in range(3):
            assert get(ports[0], "/", timeout=10) == (200, b"hello")


def test_harakiri_slot_is_busy_only_while_a_core_has_the_cpu(mode):
    # the worker's status slot (u64 "busy since" ns): 0 while requests only wait (sleeping
    # is not stuck), set while a request keeps the CPU
    import mmap
    import struct

    mode("async", 4)
    slot = mmap.mmap(-1, 16)
    pipe = Pipe()

    def app(env, start_response):
        if env["PATH_INFO"] == "/sleep":
            pipe.send("sleeping")
            uwsgi.async_sleep(2)
            uwsgi.suspend()
        else:
            pipe.send("spinning")
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                pass
        start_response("200 OK", [])
        return [b"ok"]

    try:
        with serving(app, kinds=("http",), status_slot=slot) as (ports, _):
            t = threading.Thread(target=get, args=(ports[0], "/sleep"))
            t.start()
            assert pipe.lines(1) == ["sleeping"]
            time.sleep(0.3)
            assert struct.unpack_from("=Q", slot, 0)[0] == 0      # waiting, not busy
            t.join()
            t = threading.Thread(target=get, args=(ports[0], "/spin"))
            t.start()
            assert pipe.lines(1) == ["spinning"]
            time.sleep(0.3)
            assert struct.unpack_from("=Q", slot, 0)[0] != 0      # in the app, on the CPU
            t.join()
    finally:
        pipe.close()


def test_rlimit_nofile_is_raised_to_the_cores(mode):
    # uWSGI raises RLIMIT_NOFILE to `async` when it is lower (up to the hard limit)
    import resource

    mode("async", 300)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 300:
        pytest.skip("hard RLIMIT_NOFILE below 300")

    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    def limit_app(env, start_response):
        start_response("200 OK", [])
        return [str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]).encode()]

    with serving(limit_app, kinds=("http",), setup=lower) as (ports, _):
        assert get(ports[0]) == (200, b"300")
