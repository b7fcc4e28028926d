"""The master with a real server and real signals: respawn, harakiri, max-requests, stops."""
from __future__ import annotations

import http.client
import json
import os
import signal
import threading

import pytest

import e2e_support
from e2e_support import APPS, WAIT, free_port, get, process_alive, wait_for

serve = e2e_support.serve          # the fixture, shared by the e2e modules

PROBE = str(APPS / "probe.py")


# http-socket is served by _core's accept loop, http11-socket by the sync hub (its event loop)
LOOPS = pytest.mark.parametrize("socket_option", ["--http-socket", "--http11-socket"])


def start(serve, *extra, workers=1, socket_option="--http-socket"):
    port = free_port()
    server = serve(socket_option, f"127.0.0.1:{port}", "--master", "--wsgi-file", PROBE, *extra,
                   env={"PROBE_MARKS": str(server_dir(serve))})
    server.wait_tcp(port)
    wait_for(lambda: len(server.workers()) == workers, f"{workers} worker(s)")
    return server, port


def server_dir(serve):
    return serve.tmp_path


def in_app(server):
    """Pids of workers that are inside the app's /sleep right now."""
    return [int(p.name.split("-")[1]) for p in server.cwd.glob("sleeping-*")]


def test_sigkilled_worker_is_replaced(serve):
    server, port = start(serve, "--processes", "2", workers=2)
    victim = json.loads(get(port, "/whoami")[2])["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(server.workers()) == 2 and victim not in server.workers(), "a replacement worker")
    assert f"(pid: {victim}) killed by signal 9 (SIGKILL); respawning" in server.log()
    for _ in range(10):
        assert get(port)[0] == 200
    assert server.stop() == 0


@LOOPS
def test_harakiri_kills_a_sleeping_request(serve, socket_option):
    server, port = start(serve, "--processes", "1", "--harakiri", "1", socket_option=socket_option)
    stuck = server.workers()[0]
    failure = []

    def slow():
        try:
            get(port, "/sleep?60")
        except (http.client.HTTPException, OSError) as exc:
            failure.append(exc)
    t = threading.Thread(target=slow)
    t.start()
    t.join(WAIT)
    assert failure, "the sleeping request was not cut off by harakiri"
    assert f"*** HARAKIRI ON WORKER 1 (pid: {stuck}, try: 1) ***" in server.log()
    # the client sees the connection close as the SIGKILL lands; the process is gone a moment later
    wait_for(lambda: not process_alive(stuck), "the killed worker to be gone")
    assert get(port)[0] == 200                  # the replacement serves
    assert server.stop() == 0


@LOOPS
def test_max_requests_recycles_the_worker(serve, socket_option):
    server, port = start(serve, "--processes", "1", "--max-requests", "3", socket_option=socket_option)
    pids = [json.loads(get(port, "/whoami")[2])["pid"] for _ in range(7)]
    assert pids[0] == pids[1] == pids[2] and pids[3] == pids[4] == pids[5]
    assert len({pids[0], pids[3], pids[6]}) == 3
    assert "exited with code 0; respawning" in server.log()
    # uWSGI's req: R/T: R restarts with each worker, T counts the whole instance
    assert "|req: 1/7]" in server.wait_log("|req: 1/7]")
    assert "|req: 3/3]" in server.log() and "|req: 3/6]" in server.log()
    assert server.stop() == 0


def test_sighup_recycles_workers_gracefully(serve):
    server, port = start(serve, "--processes", "2", workers=2)
    before = set(server.workers())
    result = []
    t = threading.Thread(target=lambda: result.append(get(port, "/sleep?1")))
    t.start()
    wait_for(lambda: in_app(server), "the slow request to reach the app")
    os.kill(server.pid, signal.SIGHUP)
    t.join(WAIT)
    assert result and result[0][0] == 200 and result[0][2] == b"slept"   # finished, not cut
    wait_for(lambda: len(server.workers()) == 2 and not before & set(server.workers()), "new workers")
    assert get(port)[0] == 200 and process_alive(server.pid)
    assert server.stop() == 0


def test_sigint_finishes_the_request_in_hand_and_leaves_nothing(serve, tmp_path):
    pidfile = tmp_path / "m.pid"
    server, port = start(serve, "--processes", "2", "--pidfile", str(pidfile), "--vacuum", workers=2)
    result = []
    t = threading.Thread(target=lambda: result.append(get(port, "/sleep?1")))
    t.start()
    wait_for(lambda: in_app(server), "the slow request to reach the app")
    assert server.stop(signal.SIGINT) == 0       # waits until no process of the server is left
    t.join(WAIT)
    assert result and result[0][2] == b"slept"
    assert not pidfile.exists()


def test_sigquit_and_die_on_term(serve):
    server, _ = start(serve, "--processes", "2", workers=2)
    assert server.stop(signal.SIGQUIT) == 0
    server, _ = start(serve, "--die-on-term")
    assert server.stop(signal.SIGTERM) == 0
    server, port = start(serve)                     # uWSGI 2.0: SIGTERM is a brutal reload
    old = server.workers()
    os.kill(server.pid, signal.SIGTERM)
    wait_for(lambda: server.workers() and not set(old) & set(server.workers()), "workers replaced")
    assert get(port)[0] == 200
    assert server.stop() == 0


def test_sigkilled_master_takes_its_workers_with_it(serve):
    server, port = start(serve, "--processes", "2", workers=2)
    workers = server.workers()
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(timeout=WAIT)
    wait_for(lambda: not any(process_alive(pid) for pid in workers), "the workers to die with the master")


def test_sighup_and_sigterm_during_start_up_are_acted_on_after_it(serve, tmp_path):
    # uWSGI ignores them while starting; jailserve keeps them for the master: never a dead start
    for sig, kind in ((signal.SIGHUP, "graceful reload"), (signal.SIGTERM, "brutal reload")):
        mark, port = tmp_path / f"importing-{sig}", free_port()
        server = serve("--http-socket", f"127.0.0.1:{port}", "--master", "--wsgi-file",
                       str(APPS / "slow_import.py"), env={"SLOW_MARK": str(mark)})
        wait_for(mark.exists, "the app import to start")
        os.kill(server.pid, sig)
        server.wait_tcp(port)
        server.wait_log(kind)
        wait_for(lambda: len(server.workers()) == 1, "the worker after the reload")
        assert get(port)[2] == b"slow"
        assert server.stop() == 0
