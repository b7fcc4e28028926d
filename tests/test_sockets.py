"""sockets: uWSGI address syntax, planning errors, and real binds on loopback."""
from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess

import pytest

from jailserve import sockets
from jailserve.config import load_config
from jailserve.errors import ConfigError


def plan(*argv):
    return sockets.plan_sockets(load_config(list(argv), {}))


@pytest.mark.parametrize("text, family, host, port", [
    (":8000", socket.AF_INET, "", 8000),
    ("127.0.0.1:8000", socket.AF_INET, "127.0.0.1", 8000),
    ("localhost:1", socket.AF_INET, "localhost", 1),
    ("[::1]:65535", socket.AF_INET6, "::1", 65535),
    ("[::]:80", socket.AF_INET6, "::", 80),
])
def test_tcp_addresses(text, family, host, port):
    a = sockets.parse_address(text)
    assert (a.family, a.host, a.port) == (family, host, port)


def test_unix_and_abstract_and_shared():
    assert sockets.parse_address("/run/app.sock").path == "/run/app.sock"
    assert sockets.parse_address("app.sock").family == socket.AF_UNIX
    assert sockets.parse_address("@jail").path == "\0jail"
    assert sockets.parse_address("=2").shared == 2


@pytest.mark.parametrize("text, says", [
    (":0", "out of range"), (":65536", "out of range"), (":http", "not a number"),
    ("::1:80", "brackets"), ("[::1]80", "[IPV6]:PORT"), ("[nope]:80", "not an IPv6"),
    ("300.1.1.1:80", "not an IPv4"), ("=x", "=N"), ("@", "needs a name"), ("a b:80", "host name"),
])
def test_bad_addresses(text, says):
    with pytest.raises(ValueError, match=says if not says.startswith("[") else r"\[IPV6\]"):
        sockets.parse_address(text)


def test_plan_orders_shared_first_and_numbers_in_config_order():
    specs = plan("--socket", "127.0.0.1:3031", "--shared-socket", ":80", "--http-socket", "=0",
                 "--http11-socket", "[::1]:8080")
    assert [(s.kind, s.index, s.address.raw) for s in specs] == [
        ("shared", 0, ":80"), ("uwsgi", 0, "127.0.0.1:3031"), ("http", 1, "=0"), ("http11", 2, "[::1]:8080")]
    assert all(s.describe() for s in specs)


def test_plan_errors_name_the_option():
    with pytest.raises(ConfigError) as e:
        plan("--http-socket", "=1", "--shared-socket", ":80")
    assert e.value.option == "http-socket" and "1 shared-socket is configured" in e.value.message
    with pytest.raises(ConfigError) as e:
        plan("--http-socket", ":0")
    assert e.value.option == "http-socket"
    with pytest.raises(ConfigError, match="already bound"):
        plan("--http-socket", ":8000", "--socket", ":8000")
    with pytest.raises(ConfigError, match="shared socket cannot"):
        plan("--shared-socket", "=0")
    with pytest.raises(ConfigError, match="owner"):
        plan("--http-socket", ":8000", "--chown-socket", "www:")


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def test_bind_tcp_v4_v6_with_backlog_and_reuse_port():
    p4, p6 = free_port(), free_port(socket.AF_INET6, "::1")
    specs = plan("--http-socket", f"127.0.0.1:{p4}", "--socket", f"[::1]:{p6}", "--reuse-port", "--listen", "7")
    listeners = sockets.bind_listeners(specs, [], log=lambda line: None)
    try:
        (s4, k4), (s6, k6) = listeners
        assert (k4, k6) == ("http", "uwsgi")
        assert s4.getsockname() == ("127.0.0.1", p4) and s6.getsockname()[:2] == ("::1", p6)
        assert s4.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert s4.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        if shutil.which("ss"):
            # the kernel's view: a listening socket's Send-Q column is its backlog
            out = subprocess.run(["ss", "-ltnH", f"sport = :{p4}"], capture_output=True, text=True).stdout
            assert out.split()[:3] == ["LISTEN", "0", "7"], out
        with socket.create_connection(("::1", p6), timeout=5):
            pass
    finally:
        for s, _ in listeners:
            s.close()


def test_bind_unix_with_mode_replaces_stale_socket_not_files(tmp_path):
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                       # leaves the socket file behind, as a crashed server
    specs = plan("--socket", str(path), "--chmod-socket=660", "--chown-socket", f"{os.getuid()}:{os.getgid()}")
    [(sock, kind)] = sockets.bind_listeners(specs, [], log=lambda line: None)
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
    finally:
        sock.close()
    regular = tmp_path / "notasocket"
    regular.write_text("keep me")
    with pytest.raises(OSError, match="cannot bind socket"):
        sockets.bind_listeners(plan("--socket", str(regular)), [], log=lambda line: None)
    assert regular.read_text() == "keep me"


def test_shared_socket_is_used_by_reference():
    port = free_port()
    specs = plan("--shared-socket", f"127.0.0.1:{port}", "--http-socket", "=0")
    shared = sockets.bind_shared(specs, log=lambda line: None)
    try:
        [(sock, kind)] = sockets.bind_listeners(specs, shared, log=lambda line: None)
        assert sock is shared[0] and kind == "http"
    finally:
        shared[0].close()


def test_find_inherited_matches_by_address(tmp_path):
    port = free_port()
    path = str(tmp_path / "s.sock")
    specs = plan("--http-socket", f"127.0.0.1:{port}", "--socket", path, "--socket", "@jailserve-test-abstract")
    bound = [s for s, _ in sockets.bind_listeners(specs, [], log=lambda line: None)]
    try:
        found = sockets.find_inherited(specs)
        assert {k: v.fileno() for k, v in found.items()} == {
            f"127.0.0.1:{port}": bound[0].fileno(), path: bound[1].fileno(),
            "@jailserve-test-abstract": bound[2].fileno()}
        for s in found.values():
            s.detach()
    finally:
        for s in bound:
            s.close()


def test_backlog_above_somaxconn_is_refused(tmp_path):
    limit = tmp_path / "somaxconn"
    limit.write_text("128\n")
    sockets.check_backlog(128, str(limit))
    with pytest.raises(OSError, match="greater than the system max net.core.somaxconn \\(128\\)"):
        sockets.check_backlog(129, str(limit))
    sockets.check_backlog(10**6, str(tmp_path / "missing"))       # no limit known: no check
    if os.path.exists(sockets.SOMAXCONN):
        too_big = int(open(sockets.SOMAXCONN).read()) + 1
        with pytest.raises(OSError, match="somaxconn"):
            sockets.bind_listeners(plan("--http-socket", "127.0.0.1:9", "--listen", str(too_big)), [],
                                   log=lambda line: None)


def test_close_stray_closes_only_inheritable_listeners():
    kept = socket.socket()
    kept.bind(("127.0.0.1", 0))
    kept.listen(1)                        # non-inheritable (adopted, or our own): kept
    stray = socket.socket()
    stray.bind(("127.0.0.1", 0))
    stray.listen(1)
    stray.set_inheritable(True)           # what a previous image left and the config dropped
    plain = socket.socket()               # not listening: never touched
    plain.set_inheritable(True)
    lines = []
    name = stray.getsockname()
    try:
        closed = sockets.close_stray(lines.append)
        assert closed == [stray.fileno()]
        assert lines == [(f"closing inherited socket fd {closed[0]} (127.0.0.1:{name[1]}): "
                          "not in the config any more")]
        with pytest.raises(OSError):
            os.fstat(closed[0])
        assert kept.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        os.fstat(plain.fileno())
    finally:
        stray.detach()
        kept.close()
        plain.close()


def test_shared_socket_addresses_are_found_for_a_reload():
    port = free_port()
    specs = plan("--shared-socket", f"127.0.0.1:{port}", "--http-socket", "=0")
    shared = sockets.bind_shared(specs, log=lambda line: None)
    try:
        found = sockets.find_inherited(specs)
        assert list(found) == [f"127.0.0.1:{port}"] and found[f"127.0.0.1:{port}"].fileno() == shared[0].fileno()
        found[f"127.0.0.1:{port}"].detach()
    finally:
        shared[0].close()


# deferred accept (uWSGI core/socket.c bind_to_tcp: TCP_DEFER_ACCEPT = socket-timeout unless
# no-defer-accept; undeferred-shared-socket is a shared socket without it)


def test_defer_accept_follows_socket_timeout_and_no_defer_accept():
    specs = plan("--shared-socket", "127.0.0.1:8002", "--undeferred-shared-socket", "127.0.0.1:8003",
                 "--http-socket", "=1", "--socket", "/tmp/x.sock", "-z", "7")
    assert [(s.kind, s.index, s.option, s.defer_accept) for s in specs] == [
        ("shared", 0, "shared-socket", 7), ("shared", 1, "undeferred-shared-socket", 0),
        ("http", 0, "http-socket", 7), ("uwsgi", 1, "socket", 7)]
    assert {s.defer_accept for s in plan("--http-socket", ":8001", "--no-defer-accept")} == {0}


def _accepts_within(listener, seconds):
    listener.settimeout(seconds)
    try:
        conn, _ = listener.accept()
    except (socket.timeout, BlockingIOError):
        return False
    conn.close()
    return True


@pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="Linux TCP_DEFER_ACCEPT")
@pytest.mark.parametrize("extra, silent_accepted", [((), False), (("--no-defer-accept",), True)])
def test_deferred_accept_holds_a_silent_client_back(extra, silent_accepted):
    port = free_port()
    (spec,) = plan("--http-socket", f"127.0.0.1:{port}", *extra)
    (listener, _), = sockets.bind_listeners([spec], [], log=lambda line: None)
    try:
        assert (listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0) is not silent_accepted
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            # the client's connect() succeeded, but the kernel keeps the connection from
            # accept() until data comes (or the defer time runs out, seconds later)
            assert _accepts_within(listener, 0.5) is silent_accepted
        with socket.create_connection(("127.0.0.1", port), timeout=5) as talker:
            talker.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert _accepts_within(listener, 5)
    finally:
        listener.close()


def test_a_refused_deferred_accept_is_reported_and_binding_goes_on(capsys):
    # uWSGI logs a refused TCP_DEFER_ACCEPT / accept filter and keeps the socket; a unix
    # socket stands in for a system that refuses it
    from jailserve import _core
    with socket.socket(socket.AF_UNIX) as refusing:
        with pytest.raises(OSError):
            _core.defer_accept(refusing.fileno(), 4)
        sockets._defer(refusing, 4)
    assert "deferred accept on" in capsys.readouterr().err
