"""The sync hub: _core.serve() with a keep-alive (http11) listener runs the event loop of the
greenlet hub with the app called on the loop's own stack (docs/internals.md, "Sync hub").
What a client must see: an idle keep-alive connection does not hold the worker, requests of
several connections interleave, a request that stalls inside its body times out, and
several workers share one listener without one of them taking every connection."""
import os
import signal
import socket
import time

import pytest

from jailserve import _core
from core_fixtures import connect, listener, read_responses, serving, stop


def counter_app():
    served = []

    def app(env, start_response):
        served.append(env["PATH_INFO"])
        body = ("%s %d %d" % (env["PATH_INFO"], len(served), os.getpid())).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return app


def get(sock, path):
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    ((status, headers, body, _),) = read_responses(sock, ["GET"])
    return status, headers, body


def test_an_idle_keepalive_connection_does_not_hold_the_worker():
    # socket-timeout 60: before the sync hub, the second client waited for the first
    # client's idle time to run out (a sync worker served one connection at a time)
    with serving(counter_app(), socket_timeout=60.0) as (ports, _):
        idle = connect(ports[0], timeout=5)
        assert get(idle, "/first")[2].startswith(b"/first 1 ")
        other = connect(ports[0], timeout=5)        # a timeout here would fail the test
        assert get(other, "/other")[2].startswith(b"/other 2 ")
        # the idle connection is still alive and still served
        status, headers, body = get(idle, "/again")
        assert status == 200 and body.startswith(b"/again 3 ") and "connection" not in headers
        idle.close()
        other.close()


def test_requests_of_several_connections_interleave_on_one_worker():
    with serving(counter_app()) as (ports, _):
        conns = [connect(ports[0], timeout=5) for _ in range(3)]
        bodies = []
        for round_ in range(3):
            for i, c in enumerate(conns):
                bodies.append(get(c, "/c%d-r%d" % (i, round_))[2].split())
        assert [int(b[1]) for b in bodies] == list(range(1, 10))     # one counter: one worker
        assert [b[0] for b in bodies] == [b"/c%d-r%d" % (i, r) for r in range(3) for i in range(3)]
        assert len({b[2] for b in bodies}) == 1
        for c in conns:
            c.close()


def test_pipelined_requests_are_answered_in_order():
    with serving(counter_app()) as (ports, _):
        with connect(ports[0], timeout=5) as c:
            c.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(4)))
            out = read_responses(c, ["GET"] * 4)
        assert [body.split()[0] for _, _, body, _ in out] == [b"/p%d" % i for i in range(4)]


def echo(env, start_response):
    body = env["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def test_a_body_that_stalls_times_out_and_the_worker_goes_on():
    with serving(echo, socket_timeout=1.0) as (ports, _):
        stalled = connect(ports[0], timeout=10)
        stalled.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        t0 = time.monotonic()
        assert stalled.recv(100) == b""                 # closed, no response
        assert time.monotonic() - t0 > 0.5         # closed by the timeout, not at once
        with connect(ports[0], timeout=5) as c:
            c.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            assert read_responses(c, ["POST"])[0][2] == b"hello"
        stalled.close()


def test_a_response_larger_than_the_socket_buffer_waits_for_the_reader():
    big = os.urandom(16 << 20)        # more than loopback's socket buffers hold

    def app(env, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [big]

    with serving(app) as (ports, _):
        with connect(ports[0], timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.3)                             # the server's send must block
            ((status, _, body, _),) = read_responses(c, ["GET"])
            assert status == 200 and body == big


def test_the_async_api_is_not_active_in_sync_mode():
    def app(env, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            _core.async_sleep(0)
        except RuntimeError as exc:
            return [str(exc).encode()]
        return [b"no error"]

    with serving(app) as (ports, _):
        with connect(ports[0], timeout=5) as c:
            assert _core.async_active() is False
            assert b"needs async mode" in get(c, "/")[2]


# --- several workers on one listener ---------------------------------------------------------

def rendezvous_app(directory):
    """Each request records its worker, then waits (up to 5 s) until two workers have one."""

    def app(env, start_response):
        open(os.path.join(directory, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 5
        while len(os.listdir(directory)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        together = len(os.listdir(directory)) >= 2
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%s %d" % (b"together" if together else b"alone", os.getpid())]

    return app


def fork_worker(sock, app):
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            signal.signal(signal.SIGTERM, lambda *a: _core.request_stop())
            _core.serve([(sock, "http11")], app, _core.ServeConfig(socket_timeout=10))
            code = 0
        finally:
            os._exit(code)
    return pid


def test_two_workers_take_one_connection_each(tmp_path):
    # Both connections wait in the backlog before any worker starts; the app answers only
    # once two workers are inside it at the same time (else "alone" after 5 s).
    sock = listener()
    port = sock.getsockname()[1]
    clients = [connect(port, timeout=15) for _ in range(2)]
    for c in clients:
        c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    pids = [fork_worker(sock, rendezvous_app(str(tmp_path))) for _ in range(2)]
    sock.close()
    try:
        answers = [read_responses(c, ["GET"])[0][2].split() for c in clients]
        assert [a[0] for a in answers] == [b"together", b"together"]
        assert {int(a[1]) for a in answers} == set(pids)
        # each keep-alive connection stays with the worker that accepted it
        for c, a in zip(clients, answers):
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_responses(c, ["GET"])[0][2].split()[1] == a[1]
    finally:
        for c in clients:
            c.close()
        for pid in pids:
            stop(pid)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stop_serves_a_request_already_waiting_on_an_idle_connection(mode):
    # While the worker is busy with /slow, the idle keep-alive connection's next request
    # arrives and the stop comes.  Closing that connection would make its client retry (or
    # fail); it is answered instead, with Connection: close.
    import core_fixtures
    from core_fixtures import Pipe

    inside = Pipe()

    def app(env, start_response):
        if env["PATH_INFO"] == "/slow":
            inside.send("slow")
            time.sleep(0.5)                 # blocks the whole worker, in both modes
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [env["PATH_INFO"].encode()]

    core_fixtures.set_mode(mode)
    try:
        with serving(app) as (ports, state):
            idle = connect(ports[0], timeout=10)
            assert get(idle, "/first")[2] == b"/first"
            busy = connect(ports[0], timeout=10)
            busy.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert inside.lines(1) == ["slow"]      # the worker is inside /slow now
            idle.sendall(b"GET /waiting HTTP/1.1\r\nHost: t\r\n\r\n")
            os.kill(state["pid"], signal.SIGTERM)
            ((status, headers, body, _),) = read_responses(idle, ["GET"])
            assert (status, body, headers.get("connection")) == (200, b"/waiting", "close")
            assert read_responses(busy, ["GET"])[0][2] == b"/slow"
            idle.close()
            busy.close()
    finally:
        core_fixtures.set_mode("sync")
        inside.close()
