"""harakiri without a master, as uWSGI does it (core/utils.c set_harakiri: alarm(harakiri) per
request; core/uwsgi.c harakiri(): log, exit(0)): the single process ends, and its cleanup runs."""
from __future__ import annotations

import http.client
import time

import pytest

import e2e_support
from e2e_support import APPS, WAIT, free_port, get

serve = e2e_support.serve

PROBE = str(APPS / "probe.py")


@pytest.mark.parametrize("socket_option", ["--http-socket", "--http11-socket"])
def test_harakiri_without_master_ends_the_process_and_cleans_up(serve, tmp_path, socket_option):
    port = free_port()
    pidfile = tmp_path / "server.pid"
    server = serve(socket_option, f"127.0.0.1:{port}", "--wsgi-file", PROBE, "--harakiri", "1",
                   "--pidfile", str(pidfile), "--vacuum").wait_tcp(port)
    assert pidfile.read_text().strip() == str(server.pid)
    # a request that ends in time disarms the alarm: the process is still there after it
    assert get(port)[0] == 200
    time.sleep(1.5)
    assert server.proc.poll() is None and get(port)[0] == 200
    with pytest.raises((http.client.HTTPException, OSError)):
        get(port, "/sleep?60")
    assert server.proc.wait(timeout=WAIT) == 0
    log = server.log()
    assert f"Killing the current process (pid: {server.pid} app_id: 0)..." in log
    assert "consider enabling the master process" in log
    assert not pidfile.exists()                 # vacuum ran: the process unwound, not _exit
