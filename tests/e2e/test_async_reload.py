"""issue 7's reload-under-load check in async mode (issue 8): the same app, load client and
reload steps as tests/e2e/test_reload.py, with `async = 20` + `greenlet` workers.  uWSGI drops
in-flight async requests on a graceful reload (UWSGI_SEMANTICS §6.3); here nothing fails."""
from __future__ import annotations

import os
import signal

import e2e_support
from e2e_support import get, wait_for
from test_reload import reload_and_wait, reloads_under_load, start

serve = e2e_support.serve

ASYNC = ("--async", "20", "--greenlet")


def test_async_reloads_under_load_drop_nothing(serve, tmp_path):
    server, port, app, fifo = start(serve, tmp_path, "--lazy-apps", *ASYNC)
    load = reloads_under_load(server, port, app, fifo, 8)
    assert load.failures == [], load.summary()
    assert load.seen["v1"] > 50 and load.seen["v2"] > 20
    assert get(port, "/echo?x")[2] == b"v2:x"
    assert server.proc.poll() is None
    assert server.stop() == 0


def test_async_slow_request_finishes_across_a_reload(serve, tmp_path):
    # /slow blocks its worker (time.sleep: no monkey-patching, as uWSGI) for 2 s; a reload in
    # the middle still lets it finish with its whole body
    import threading

    server, port, _app, _fifo = start(serve, tmp_path, *ASYNC)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=get(port, "/slow")))
    t.start()
    wait_for(lambda: server.log().count("spawned jailserve worker") >= 2, "workers")
    import time
    time.sleep(0.5)
    reload_and_wait(server, lambda: os.kill(server.pid, signal.SIGHUP), "graceful reload done")
    t.join(60)
    status, _, body = result["r"]
    assert status == 200 and body.startswith(b"slow-v1-") and len(body) == len("slow-v1-") + 200000
    assert server.stop() == 0
