"""uid/gid drop in uWSGI's order: before ordinary sockets are bound, after shared sockets."""
from __future__ import annotations

import ast
import os
import pwd
import shutil
import socket
import tempfile
from pathlib import Path

import e2e_support
import pytest
from e2e_support import APPS, UnixHTTPConnection, get

serve = e2e_support.serve          # the fixture, shared by the e2e modules

APP = str(APPS / "whoami_min.py")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def low_port():
    """A free port below 1024, which only root may bind."""
    for port in range(1000, 600, -7):
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                return port
        except OSError:
            continue
    pytest.skip("no free port below 1024")


@pytest.fixture
def open_dir():
    """A directory nobody can reach (pytest's tmp_path is 0700 all the way up)."""
    d = Path(tempfile.mkdtemp(prefix="jailserve-priv-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def world_readable_probe(d):
    # nobody must be able to read the app after the drop
    app = d / "whoami.py"
    app.write_text(open(APP).read())
    return str(app)


def test_drop_to_nobody_then_bind_the_unix_socket_as_nobody(serve, open_dir):
    nobody = pwd.getpwnam("nobody")
    sockdir = open_dir / "run"
    sockdir.mkdir()
    os.chown(sockdir, nobody.pw_uid, nobody.pw_gid)
    sock = sockdir / "app.sock"
    server = serve("--http-socket", str(sock), "--master", "--wsgi-file", world_readable_probe(open_dir),
                   "--uid", "nobody", "--gid", str(nobody.pw_gid)).wait_unix(sock)
    assert os.stat(sock).st_uid == nobody.pw_uid       # bound after the drop, as uWSGI
    conn = UnixHTTPConnection(str(sock))
    conn.request("GET", "/")
    info = ast.literal_eval(conn.getresponse().read().decode())
    conn.close()
    assert (info["uid"], info["gid"]) == (nobody.pw_uid, nobody.pw_gid)
    assert info["groups"] == sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
    log = server.log()
    assert f"setgid() to {nobody.pw_gid}" in log and f"setuid() to {nobody.pw_uid}" in log
    assert server.stop() == 0


def test_low_port_needs_shared_socket_after_the_drop(serve, open_dir):
    app = world_readable_probe(open_dir)
    port = low_port()
    plain = serve("--http-socket", f"127.0.0.1:{port}", "--wsgi-file", app, "--uid", "nobody")
    assert plain.proc.wait(timeout=60) == 1
    assert "Permission denied" in plain.log()

    server = serve("--shared-socket", f"127.0.0.1:{port}", "--http-socket", "=0", "--master",
                   "--wsgi-file", app, "--uid", "nobody").wait_tcp(port)
    info = ast.literal_eval(get(port)[2].decode())
    assert info["uid"] == pwd.getpwnam("nobody").pw_uid
    assert "uses shared socket 0" in server.log()
    assert server.stop() == 0


def test_chown_socket_binds_before_the_drop(serve, tmp_path, open_dir):
    # with chown-socket uWSGI binds as root, chowns, and only then drops (step 27)
    nobody = pwd.getpwnam("nobody")
    sock = tmp_path / "root-owned-dir.sock"
    server = serve("--http-socket", str(sock), "--chown-socket", "nobody", "--chmod-socket=600",
                   "--wsgi-file", world_readable_probe(open_dir), "--uid", "nobody").wait_unix(sock)
    st = os.stat(sock)
    assert st.st_uid == nobody.pw_uid and (st.st_mode & 0o777) == 0o600
    # without a master the process becomes the worker after binding: once it answers, its
    # stop handlers are in (a SIGINT before that is Python's KeyboardInterrupt)
    conn = UnixHTTPConnection(str(sock))
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()
    assert server.stop() == 0
