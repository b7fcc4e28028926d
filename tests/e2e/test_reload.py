"""Reloads under load, for real (issue 7): the server re-execs itself on SIGHUP, keeps its
listening socket, and no request fails, is reset or gets a wrong body.

The load client (e2e_support.Load) checks every response's body; the waits are bounded
liveness guards, never timing assertions.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import e2e_support
from e2e_support import Load, fifo_send, free_port, get, wait_for

serve = e2e_support.serve

APP = '''
import time
VERSION = %r
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        time.sleep(2)
        body = ("slow-" + VERSION + "-" + "x" * 200000).encode()
    elif path == "/reload":
        import uwsgi
        body = b"asked" if uwsgi.reload() else b"no master"
    else:
        body = (VERSION + ":" + environ.get("QUERY_STRING", "")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def write_app(path: Path, version: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(APP % version)
    os.replace(tmp, path)


def count(server, text: str) -> int:
    return server.log().count(text)


def reload_and_wait(server, send, done_text: str) -> None:
    before = count(server, done_text)
    send()
    wait_for(lambda: count(server, done_text) > before, f"{done_text!r} after a reload")


def start(serve, tmp_path, *extra, version="v1", processes=2, socket="--http-socket"):
    app = tmp_path / "app.py"
    write_app(app, version)
    port = free_port()
    fifo = tmp_path / "fifo"
    server = serve(socket, f"127.0.0.1:{port}", "--master", "--processes", str(processes),
                   "--wsgi-file", str(app), "--disable-logging", "--master-fifo", str(fifo), *extra)
    server.wait_tcp(port)
    wait_for(lambda: count(server, "spawned jailserve worker") >= processes, "the workers")
    if "--lazy-apps" in extra:
        # each worker loads the app itself: until they all have, a test that breaks the app
        # file would break a worker of the first start, not the reload it means to test
        wait_for(lambda: count(server, "ready in worker") >= processes, "the workers' apps")
    return server, port, app, fifo


def reloads_under_load(server, port: int, app: Path, fifo: Path, n: int) -> Load:
    """Under the load client: n SIGHUPs, n chain reloads (fifo 'c'), then new code (v2) and
    one more SIGHUP; returns the client, finished once the new code has answered."""
    master = server.pid
    load = Load("127.0.0.1", port, threads=4).start()
    try:
        for _ in range(n):
            reload_and_wait(server, lambda: os.kill(master, signal.SIGHUP), "graceful reload done")
        for _ in range(n):
            reload_and_wait(server, lambda: fifo_send(fifo, "c"), "chain reload done")
        load.versions = {"v1", "v2"}
        write_app(app, "v2")
        reload_and_wait(server, lambda: os.kill(master, signal.SIGHUP), "graceful reload done")
        wait_for(lambda: load.seen.get("v2", 0) > 20, "responses from the new code")
    finally:
        load.finish()
    return load


def test_20_sighups_20_chain_reloads_and_new_code_under_load_drop_nothing(serve, tmp_path):
    server, port, app, fifo = start(serve, tmp_path, "--lazy-apps")
    master = server.pid
    load = reloads_under_load(server, port, app, fifo, 20)
    assert load.failures == [], load.summary()
    assert load.seen["v1"] > 100 and load.seen["v2"] > 20
    assert get(port, "/echo?x")[2] == b"v2:x"
    log = server.log()
    # the same process all along: the master re-exec'd itself 21 times, never restarted
    assert server.proc.poll() is None
    assert f"reload 21 of this instance (pid {master})" in log
    assert log.count(f"spawned jailserve master process (pid: {master})") == 22
    assert log.count("http-socket 0 inherited TCP address") == 21
    assert log.count("chain reload done") == 20
    assert server.stop() == 0


def test_keepalive_clients_across_10_sighups_on_http11_socket_lose_nothing(serve, tmp_path):
    # http11-socket: the sync hub.  A stop closes the keep-alive connections that are idle
    # (a client retries a request that met such a close before any response byte, which is
    # counted apart) and finishes the rest; nothing else may fail.
    server, port, _app, _fifo = start(serve, tmp_path, socket="--http11-socket")
    load = Load("127.0.0.1", port, threads=4, keepalive=True).start()
    try:
        wait_for(lambda: load.ok > 50, "the keep-alive load to run")
        for _ in range(10):
            reload_and_wait(server, lambda: os.kill(server.pid, signal.SIGHUP), "graceful reload done")
        wait_for(lambda: load.ok > 500, "requests after the reloads")
    finally:
        load.finish()
    summary = load.summary()
    assert load.failures == [], summary
    # far fewer new connections than requests: the connections were kept alive
    assert load.retries < load.ok / 10, summary
    assert server.stop() == 0


def test_a_slow_request_finishes_with_its_full_body_across_a_reload(serve, tmp_path):
    server, port, _app, _fifo = start(serve, tmp_path)
    finish = slow_request_in_flight(server, port)
    reload_and_wait(server, lambda: os.kill(server.pid, signal.SIGHUP), "graceful reload done")
    status, _, body = finish()
    assert status == 200 and body == b"slow-v1-" + b"x" * 200000
    assert re.search(r"graceful reload: workers stopped after [0-9.]+ s, requests in flight: 1, finished: 1", server.log())
    assert server.stop() == 0


def slow_request_in_flight(server, port: int):
    """Start GET /slow (2 s in the app) in a thread and wait until a worker is busy with it;
    returns a function that waits for the response and gives it."""
    import threading

    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", get(port, "/slow")))
    t.start()
    wait_for(lambda: "busy" in _usr1(server), "the slow request to be in a worker")

    def finish():
        t.join(60)
        return result["r"]
    return finish


def _usr1(server) -> str:
    before = len(server.log())
    os.kill(server.pid, signal.SIGUSR1)
    time.sleep(0.05)
    return server.log()[before:]


def test_uwsgi_reload_from_the_app_brutal_reload_and_fifo_letters(serve, tmp_path):
    server, port, _app, fifo = start(serve, tmp_path)
    master = server.pid
    _, _, body = get(port, "/reload")
    assert body == b"asked"
    wait_for(lambda: "graceful reload done" in server.log(), "the reload asked by uwsgi.reload()")
    reload_and_wait(server, lambda: os.kill(master, signal.SIGTERM), "brutal reload done")
    reload_and_wait(server, lambda: fifo_send(fifo, "R"), "brutal reload done")
    reload_and_wait(server, lambda: fifo_send(fifo, "w"), "workers reload done")
    assert get(port, "/echo?y")[2] == b"v1:y"
    assert "reload 3 of this instance" in server.log() and "reload 4 of" not in server.log()
    fifo_send(fifo, "q")                       # graceful shutdown
    assert server.proc.wait(timeout=60) == 0
    assert "goodbye to jailserve." in server.log()


def test_max_requests_with_several_workers_under_load_drops_nothing(serve, tmp_path):
    server, port, _app, _fifo = start(serve, tmp_path, "--max-requests", "25", "--max-requests-delta", "5",
                                    processes=4)
    load = Load("127.0.0.1", port, threads=6).start()
    try:
        wait_for(lambda: server.log().count("exited with code 0; respawning") >= 20 and load.ok > 600,
                 "workers recycled by max-requests")
    finally:
        load.finish()
    assert load.failures == [], load.summary()
    assert server.stop() == 0


def test_ipcsem_locks_are_replaced_not_doubled_across_reloads(serve, tmp_path):
    def semids():
        out = subprocess.run(["ipcs", "-s"], capture_output=True, text=True, check=True).stdout
        return {int(line.split()[1]) for line in out.splitlines() if line.startswith("0x")}

    before = semids()
    server, _port, _app, _fifo = start(serve, tmp_path, "--lock-engine", "ipcsem", "--locks", "2")
    first = semids() - before
    assert len(first) == 3                    # locks 0..2, one set each
    for _ in range(3):
        reload_and_wait(server, lambda: os.kill(server.pid, signal.SIGHUP), "graceful reload done")
    now = semids() - before
    assert len(now) == 3 and not (now & first)      # fresh sets, the old ones removed
    assert server.stop() == 0
    assert not (semids() & now)


def test_touch_reload_and_touch_chain_reload(serve, tmp_path):
    touch, chain = tmp_path / "touch", tmp_path / "chain"
    touch.write_text("")
    chain.write_text("")
    server, port, app, _fifo = start(serve, tmp_path, "--touch-reload", str(touch),
                                    "--touch-chain-reload", str(chain), "--lazy-apps")
    write_app(app, "v2")
    os.utime(chain, ns=(time.time_ns(), time.time_ns() + 10**9))
    wait_for(lambda: "chain reload done" in server.log(), "the chain reload")
    assert get(port, "/echo?z")[2] == b"v2:z"        # lazy-apps: each new worker loaded the new file
    os.utime(touch, ns=(time.time_ns(), time.time_ns() + 10**9))
    wait_for(lambda: "graceful reload done" in server.log(), "the touch reload")
    assert f"reload 1 of this instance (pid {server.pid})" in server.log()
    assert server.stop() == 0


def test_shutdown_finishes_the_request_in_hand(serve, tmp_path):
    server, port, _app, _fifo = start(serve, tmp_path)
    finish = slow_request_in_flight(server, port)
    assert server.stop(signal.SIGINT) == 0
    status, _, body = finish()
    assert status == 200 and body == b"slow-v1-" + b"x" * 200000


def test_a_chain_reload_to_a_broken_app_keeps_the_old_workers_serving(serve, tmp_path):
    server, port, app, fifo = start(serve, tmp_path, "--lazy-apps")
    app.write_text("raise RuntimeError('broken deploy')\n")
    fifo_send(fifo, "c")
    wait_for(lambda: "chain reload stopped" in server.log(), "the chain reload to give up")
    assert get(port, "/echo?still")[2] == b"v1:still"
    assert server.proc.poll() is None
    write_app(app, "v2")
    reload_and_wait(server, lambda: fifo_send(fifo, "c"), "chain reload done")
    assert get(port, "/echo?fixed")[2] == b"v2:fixed"
    assert server.stop() == 0


def test_binary_path_fifo_slots_stats_and_exit_on_reload(serve, tmp_path):
    marker = tmp_path / "wrapper-ran"
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexec {sys.executable} -m jailserve \"$@\"\n")
    wrapper.chmod(0o755)
    second = tmp_path / "fifo1"
    server, port, _app, fifo = start(serve, tmp_path, "--binary-path", str(wrapper), "--master-fifo", str(second))
    reload_and_wait(server, lambda: fifo_send(fifo, "r"), "graceful reload done")
    assert "--binary-path" in marker.read_text()          # the new image came through binary-path
    assert f"reload 1 of this instance (pid {server.pid})" in server.log()
    fifo_send(fifo, "1")                                  # from now on the second fifo is read
    wait_for(lambda: f"master-fifo: now reading {second}" in server.log(), "the fifo slot switch")
    fifo_send(second, "s")
    wait_for(lambda: re.search(r"worker 1 \(pid: \d+\) requests: \d+ idle", server.log()), "stats in the log")
    assert get(port, "/echo?b")[2] == b"v1:b"
    assert server.stop() == 0

    server, port, _app, fifo = start(serve, tmp_path, "--exit-on-reload")
    os.kill(server.pid, signal.SIGHUP)
    assert server.proc.wait(timeout=60) == 0
    assert "exit-on-reload: exiting instead of re-executing" in server.log()
