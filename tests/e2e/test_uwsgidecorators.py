"""uWSGI's uwsgidecorators module imports under jailserve and its @lock takes uwsgi.lock()."""
from __future__ import annotations

import importlib.util

import pytest
from e2e_support import APPS, free_port, get, serve  # noqa: F401 (serve is a fixture)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("uwsgidecorators") is None,
                                reason="uwsgidecorators comes with pip's uwsgi (tools/install.sh --test)")


def test_uwsgidecorators_lock_decorator(serve):
    port = free_port()
    server = serve("--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "2",
                   "--wsgi-file", str(APPS / "decorated_lock.py")).wait_tcp(port)
    for _ in range(4):
        status, _, body = get(port)
        assert status == 200, body
        text = body.decode()
        assert text.startswith("inside=True after=False worker="), text
        assert int(text.rsplit("=", 1)[1]) in (1, 2)
    assert server.stop() == 0
