"""Whole-server fixtures (helpers in e2e_support.py): every server a test starts is killed at
teardown by its process group, even when the test failed half-way."""
from __future__ import annotations

import pytest
from e2e_support import Server


@pytest.fixture
def serve(tmp_path):
    """serve(argv..., env=None) -> Server; every server started is killed at teardown."""
    started: list[Server] = []

    def start(*argv: str, env: dict | None = None) -> Server:
        server = Server(list(argv), tmp_path, env)
        started.append(server)
        return server
    start.tmp_path = tmp_path
    yield start
    for server in started:
        server.kill()

