"""Serving end to end: sockets of every kind, the app options, `import uwsgi`, logging."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess

import e2e_support
import pytest
from e2e_support import APPS, ROOT, UnixHTTPConnection, free_port, get, wait_for

serve = e2e_support.serve          # the fixture, shared by the e2e modules

PROBE = str(APPS / "probe.py")


def test_examples_app_ini_serves_and_sigint_leaves_nothing(serve, tmp_path):
    # examples/app.ini with its port swapped for a free one (the example's 9090 may be taken)
    port = free_port()
    ini = tmp_path / "app.ini"
    ini.write_text((ROOT / "examples" / "app.ini").read_text().replace("127.0.0.1:9090", f"127.0.0.1:{port}")
                   .replace("%d", str(ROOT / "examples") + "/"))
    server = serve(str(ini)).wait_tcp(port)
    status, headers, body = get(port)
    assert status == 200 and body
    assert len(server.workers()) == 2
    assert f"bound to TCP address 127.0.0.1:{port}" in server.log()
    assert server.stop() == 0


def test_probe_sees_uwsgi_module_env_chdir_and_workers(serve, tmp_path):
    port = free_port()
    server = serve("--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "2", "--wsgi-file", PROBE,
                   "--env", "TESTVAR=from-env", "--chdir", str(tmp_path)).wait_tcp(port)
    seen = {}
    for _ in range(40):
        info = json.loads(get(port, "/whoami")[2])
        seen[info["worker_id"]] = info["pid"]
        if len(seen) == 2:
            break
    assert set(seen) <= {1, 2} and info["numproc"] == 2 and info["masterpid"] == server.pid
    assert info["opt_processes"] == "2" and info["testvar"] == "from-env" and info["cwd"] == str(tmp_path)
    assert info["loaded_in"] == server.pid             # not lazy: imported once, in the master
    assert set(seen.values()) <= set(server.workers())
    assert server.stop() == 0


def test_lazy_apps_load_in_each_worker(serve):
    port = free_port()
    serve("--http-socket", f"127.0.0.1:{port}", "--master", "--wsgi-file", PROBE, "--lazy-apps").wait_tcp(port)
    info = json.loads(get(port, "/whoami")[2])
    assert info["loaded_in"] == info["pid"]


def test_module_callable_and_pythonpath(serve, tmp_path):
    port = free_port()
    serve("--http-socket", f"127.0.0.1:{port}", "--module", "pkg.wsgi", "--callable", "app",
          "--pythonpath", str(APPS)).wait_tcp(port)
    assert get(port)[2] == b"module"


def test_ipv6_http11_keepalive_with_curl(serve):
    try:
        port = free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = serve("--http11-socket", f"[::1]:{port}", "--master", "--wsgi-file", PROBE).wait_tcp(port, "::1")
    r = subprocess.run(["curl", "-sv", f"http://[::1]:{port}/", f"http://[::1]:{port}/big?100"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "Hello, World!" + "x" * 100
    assert "Re-using existing connection" in r.stderr or "Reusing existing connection" in r.stderr
    assert f"bound to TCP6 address [::1]:{port}" in server.log()


def test_unix_socket_chmod_vacuum_pidfile(serve, tmp_path):
    sock, pidfile = tmp_path / "app.sock", tmp_path / "app.pid"
    server = serve("--http-socket", str(sock), "--chmod-socket=660", "--master", "--wsgi-file", PROBE,
                   "--pidfile", str(pidfile), "--vacuum").wait_unix(sock)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    assert pidfile.read_text().strip() == str(server.pid)
    conn = UnixHTTPConnection(str(sock))
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"Hello, World!"
    conn.close()
    assert server.stop() == 0
    assert not sock.exists() and not pidfile.exists()


def test_abstract_socket_uwsgi_protocol_by_hand(serve):
    name = f"jailserve-e2e-{os.getpid()}"
    serve("--socket", f"@{name}", "--wsgi-file", PROBE).wait_unix("\0" + name)
    # one uwsgi packet (UWSGI_SEMANTICS §9): modifier1 0, vars as u16-le sized pairs
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REQUEST_URI": "/", "QUERY_STRING": "",
           "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "x", "SERVER_PORT": "80", "REMOTE_ADDR": "1.2.3.4"}
    body = b"".join(len(k).to_bytes(2, "little") + k.encode() + len(v).to_bytes(2, "little") + v.encode()
                    for k, v in env.items())
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect("\0" + name)
        s.sendall(b"\0" + len(body).to_bytes(2, "little") + b"\0" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"Hello, World!")


def test_request_log_default_format_logto_and_disable(serve, tmp_path):
    port = free_port()
    server = serve("--http-socket", f"127.0.0.1:{port}", "--wsgi-file", PROBE).wait_tcp(port)
    get(port, "/big?5")
    line = server.wait_log("GET /big?5 =>")
    assert "127.0.0.1 () {" in line and "generated 5 bytes in" in line and "(HTTP/1.1 200)" in line

    port = free_port()
    logto = tmp_path / "requests.log"
    serve("--http-socket", f"127.0.0.1:{port}", "--wsgi-file", PROBE, "--logto", str(logto),
          "--log-format", "%(method) %(uri) -> %(status) %(size) %(uagent)").wait_tcp(port)
    get(port, "/big?7", headers={"User-Agent": "e2e-agent/1"})
    wait_for(lambda: logto.exists() and "GET /big?7 -> 200 7 e2e-agent/1" in logto.read_text(), "the log-format line")
    assert "bound to TCP address" in logto.read_text()         # banner lines go there too

    port = free_port()
    quiet = serve("--http-socket", f"127.0.0.1:{port}", "--wsgi-file", PROBE, "--disable-logging").wait_tcp(port)
    get(port, "/big?9")
    get(port, "/")
    assert "/big?9" not in quiet.log()


def test_bind_failure_exits_1_and_names_the_socket(serve):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = serve("--http-socket", f"127.0.0.1:{port}", "--wsgi-file", PROBE)
        assert server.proc.wait(timeout=60) == 1
    assert f"cannot bind http-socket 127.0.0.1:{port}" in server.log()


def test_app_that_fails_to_load_exits_22(serve, tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('no such thing')\n")
    server = serve("--http-socket", f"127.0.0.1:{free_port()}", "--wsgi-file", "broken.py", "--master")
    assert server.proc.wait(timeout=60) == 22
    assert "ImportError: no such thing" in server.log()
    lazy = serve("--http-socket", f"127.0.0.1:{free_port()}", "--wsgi-file", "broken.py", "--master", "--lazy-apps")
    assert lazy.proc.wait(timeout=60) == 22
    assert "failed loading app" in lazy.log()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_wrk_briefly_sees_no_errors(serve):
    port = free_port()
    serve("--http11-socket", f"127.0.0.1:{port}", "--master", "--processes", "2", "--wsgi-file", PROBE,
          "--disable-logging").wait_tcp(port)
    r = subprocess.run(["wrk", "-t1", "-c8", "-d1s", f"http://127.0.0.1:{port}/"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and " requests in " in r.stdout, r.stdout + r.stderr
    assert "Socket errors" not in r.stdout and "Non-2xx" not in r.stdout, r.stdout


def test_without_master_the_process_is_the_worker(serve):
    port = free_port()
    server = serve("--http-socket", f"127.0.0.1:{port}", "--wsgi-file", PROBE).wait_tcp(port)
    info = json.loads(get(port, "/whoami")[2])
    assert info["pid"] == server.pid and info["worker_id"] == 1 and info["masterpid"] == 0
    assert server.workers() == []
    assert server.stop() == 0
