"""startup.run: uWSGI's start-up order, seen from real hooks in a real server.

Every exec-* hook appends "phase uid" to a file, so one run shows the order of the phases and
on which side of the privilege drop each ran.  Servers run in their own session and are
SIGKILLed by process group at teardown if still there.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from jailserve import startup
from jailserve.config import load_config

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "whoami_min.py"
PHASES = ("asap", "pre-jail", "in-jail", "post-jail", "as-root", "as-user", "pre-app", "post-app")


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="jailserve-startup-"))
    os.chmod(d, 0o777)           # hooks after the drop write here as nobody
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def servers():
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _log_of(p) -> bytes:
    return Path(p.logfile).read_bytes()


def start(servers, workdir, *argv, env=None):
    log = open(workdir / "server.log", "ab")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("UWSGI_")}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    p = subprocess.Popen([sys.executable, "-m", "jailserve", *argv], cwd=workdir, env=full_env,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    p.logfile = workdir / "server.log"
    servers.append(p)
    return p


def hooks(trace):
    trace.touch(mode=0o666)
    os.chmod(trace, 0o666)          # hooks after the drop append as nobody
    out = []
    for phase in PHASES:
        # backquotes: $(...) is the config language's environment expansion
        out += [f"--exec-{phase}", f"echo {phase} `id -u` >> {trace}"]
    return out


def wait_port(p, port, workdir):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert p.poll() is None, (workdir / "server.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        raise AssertionError("server did not start")
    # the port accepts (the kernel's backlog) before the app hooks ran and before the master
    # handles SIGINT (before, it is Python's KeyboardInterrupt): wait for the start to end
    ready = b"spawned jailserve worker" if "--master" in p.args else b"ready in the"
    while ready not in _log_of(p):
        assert p.poll() is None and time.monotonic() < deadline, (workdir / "server.log").read_text()
        time.sleep(0.02)
    if "--master" not in p.args:
        # without a master the process itself becomes the worker after that line, and its
        # stop handlers are in once it serves: one answered request says so
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert c.recv(12).startswith(b"HTTP/1.1 "), (workdir / "server.log").read_text()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(p):
    p.send_signal(signal.SIGINT)
    return p.wait(timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="the drop needs root")
def test_phase_order_and_drop_point(servers, workdir):
    app = workdir / "app.py"
    app.write_text(APP.read_text())
    trace, port = workdir / "trace", free_port()
    nobody = pwd.getpwnam("nobody").pw_uid
    p = start(servers, workdir, "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", str(app), "--master",
              "--uid", "nobody", "--pidfile", str(workdir / "pid"), *hooks(trace))
    wait_port(p, port, workdir)
    assert trace.read_text().split("\n")[:-1] == [
        "asap 0", "pre-jail 0", "in-jail 0", "as-root 0", f"as-user {nobody}", f"pre-app {nobody}",
        f"post-app {nobody}"]                          # no jail and no `jailed`: no post-jail
    assert (workdir / "pid").read_text().strip() == str(p.pid)
    assert os.stat(workdir / "pid").st_uid == 0        # written before the drop
    assert stop(p) == 0


def test_jailed_runs_post_jail_and_lazy_apps_run_app_hooks_per_worker(servers, workdir):
    trace, port = workdir / "trace", free_port()
    p = start(servers, workdir, "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", str(APP), "--master",
              "--processes", "2", "--lazy-apps", "--jailed", *hooks(trace))
    wait_port(p, port, workdir)
    deadline = time.monotonic() + 60
    while trace.read_text().count("post-app") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    phases = [line.split()[0] for line in trace.read_text().splitlines()]
    assert phases[:6] == ["asap", "pre-jail", "in-jail", "post-jail", "as-root", "as-user"]
    assert sorted(phases[6:]) == ["post-app", "post-app", "pre-app", "pre-app"]
    assert stop(p) == 0


def test_reload_skips_first_start_steps(servers, workdir):
    trace, port = workdir / "trace", free_port()
    p = start(servers, workdir, "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", str(APP),
              "--pidfile", str(workdir / "pid"), *hooks(trace), env={"UWSGI_RELOADS": "1"})
    wait_port(p, port, workdir)
    phases = [line.split()[0] for line in trace.read_text().splitlines()]
    assert "pre-jail" not in phases and phases[:3] == ["asap", "in-jail", "as-root"]
    assert not (workdir / "pid").exists()
    assert stop(p) == 0


def test_failing_hook_stops_the_start_with_1(servers, workdir):
    port = free_port()
    p = start(servers, workdir, "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", str(APP),
              "--exec-as-root", "exit 7")
    assert p.wait(timeout=60) == 1
    assert "exit 7" in (workdir / "server.log").read_text()
    with socket.socket() as s:                           # as-root comes before the bind
        s.bind(("127.0.0.1", port))


def test_cleanup_vacuums_only_in_the_process_that_made_it(workdir):
    pidfile = workdir / "x.pid"
    config = load_config(["--http-socket", ":1", "--pidfile", str(pidfile), "--vacuum"], {})
    cleanup = startup.Cleanup(config)
    cleanup.write_pidfile("pidfile")
    assert pidfile.read_text().strip() == str(os.getpid())
    pid = os.fork()
    if pid == 0:
        cleanup.run()                                    # a worker or hook child: no-op
        os._exit(0)
    os.waitpid(pid, 0)
    assert pidfile.exists()
    cleanup.run()
    assert not pidfile.exists()


def test_exec_argv_keeps_the_arguments_and_makes_config_files_absolute(tmp_path):
    (tmp_path / "app.ini").write_text("[uwsgi]\nprocesses = 2\n")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        config = load_config(["app.ini", "--http-socket", "127.0.0.1:9", "--wsgi-file", "app.py"], {})
    finally:
        os.chdir(here)
    argv = startup.exec_argv(config, str(tmp_path))
    assert argv == [sys.executable, "-m", "jailserve", str(tmp_path / "app.ini"),
                    "--http-socket", "127.0.0.1:9", "--wsgi-file", "app.py"]
    config = load_config(["--binary-path", "/opt/bin/jailserve", "--http-socket", "127.0.0.1:9"], {})
    assert startup.exec_argv(config, "/") == ["/opt/bin/jailserve", "--binary-path", "/opt/bin/jailserve",
                                                "--http-socket", "127.0.0.1:9"]
