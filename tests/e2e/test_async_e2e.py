"""Async mode through the real server (`python -m jailserve` with `async = N` + `greenlet`):
the worker runs the greenlet hub; the app's uwsgi.async_sleep suspends only its request;
SIGINT (shutdown) finishes the requests in flight."""
from __future__ import annotations

import signal
import threading
import time

from e2e_support import free_port, get, serve

serve_fixture = serve

APP = '''
import uwsgi

def application(env, start_response):
    if env["PATH_INFO"] == "/sleep":
        uwsgi.async_sleep(1)
        uwsgi.suspend()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
'''


def fetch(port, path):
    status, _, body = get(port, path)
    return status, body


def many(port, n, path):
    out = []
    lock = threading.Lock()

    def one():
        r = fetch(port, path)
        with lock:
            out.append(r)

    threads = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, time.monotonic() - t0


def start(serve, *extra):
    app = serve.tmp_path / "app.py"
    app.write_text(APP)
    port = free_port()
    server = serve("--master", "--processes", "1", "--http-socket", f"127.0.0.1:{port}",
                   "--wsgi-file", str(app), "--disable-logging", *extra).wait_tcp(port)
    return server, port


def test_async_worker_serves_100_sleepers_at_once(serve):
    server, port = start(serve, "--async", "100", "--greenlet")
    out, took = many(port, 100, "/sleep")
    assert out == [(200, b"done")] * 100
    assert took < 5.0                        # ~1 s; a sync worker takes ~100 s
    assert server.stop(signal.SIGINT) == 0


def test_sync_worker_serves_sleepers_one_by_one(serve):
    server, port = start(serve)
    out, took = many(port, 5, "/sleep")
    assert out == [(200, b"done")] * 5
    assert took >= 4.5
    assert server.stop(signal.SIGINT) == 0


def test_shutdown_finishes_async_requests_in_flight(serve):
    server, port = start(serve, "--async", "20", "--greenlet")
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch(port, "/sleep")))
               for _ in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.5)                          # the ten are in their 1 s sleep
    server.proc.send_signal(signal.SIGINT)
    for t in threads:
        t.join()
    assert results == [(200, b"done")] * 10
    assert server.proc.wait(timeout=60) == 0
