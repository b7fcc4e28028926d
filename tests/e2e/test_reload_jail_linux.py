"""Reloads inside a Linux jail (issue 7): the master (pid 2 in the jail) re-execs itself
inside, the keeper and the init stay, and a client in the test's throwaway outer network
namespace sees no failed, reset or wrong response across SIGHUPs (relayed by the keeper),
chain reloads (the master FIFO inside the jail's root) and a code change.  Needs root;
addresses from 198.18.0.0/15 only."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                                reason="Linux namespaces, as root")

REPO = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests" / "jail"))
import e2e_support
from e2e_support import netns_fixture
from linux_helpers import pidns_members, registry_names, sh, wait_until

APP = '''
VERSION = %r
def application(environ, start_response):
    body = (VERSION + ":" + environ.get("QUERY_STRING", "")).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''
WAIT = 60.0


netns = netns_fixture("jsrl")
jailed = e2e_support.jailed            # the fixture: servers started in netns, killed at teardown


@pytest.fixture
def procs():
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_count(log: Path, text: str, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while log.read_text().count(text) < n:
        assert time.monotonic() < deadline, f"never {n} x {text!r}:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)


def write_app(path: Path, version: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(APP % version)
    os.replace(tmp, path)


def test_reloads_inside_a_linux_jail_drop_nothing_and_keep_the_jail(tmp_path, netns, jailed, procs):
    name = f"rl{os.getpid() % 100000}"
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    write_app(root / "app" / "app.py", "v1")
    os.mkfifo(root / "fifo", 0o600)          # the jail's root is read-only inside: made here
    conf = tmp_path / "conf"                 # outside the root: the jail must show it for a reload
    conf.mkdir()
    (conf / "jail.ini").write_text(f"""[uwsgi]
jail = {root} webjail {name}
jail-ip4 = 198.18.61.2
http-socket = 198.18.61.2:8080
master = true
processes = 2
lazy-apps = true
chdir = /app
wsgi-file = app.py
disable-logging = true
master-fifo = /fifo
""")
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("UWSGI_")}
    keeper = jailed(conf / "jail.ini", log)
    wait_count(log, "spawned jailserve worker", 2)
    init_pidns = os.readlink(f"/proc/{keeper.pid}/ns/pid")
    stopfile = tmp_path / "stop"
    client = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(HERE / "e2e_support.py"),
                               "198.18.61.2", "8080", str(stopfile), "v1", "v2"],
                              stdout=subprocess.PIPE, text=True, env=env)
    procs.append(client)
    try:
        for i in range(1, 11):
            keeper.send_signal(signal.SIGHUP)          # the keeper relays it to init, init to the master
            wait_count(log, "graceful reload done", i)
        for i in range(1, 11):
            with open(root / "fifo", "w") as fifo:
                fifo.write("c")
            wait_count(log, "chain reload done", i)
        write_app(root / "app" / "app.py", "v2")
        keeper.send_signal(signal.SIGHUP)
        wait_count(log, "graceful reload done", 11)
    finally:
        stopfile.write_text("")
        out, _ = client.communicate(timeout=WAIT)
    summary = json.loads(out)
    assert summary["failed"] == 0, summary
    assert summary["versions"].get("v1", 0) > 100, summary
    text = log.read_text()
    assert "reload 11 of this instance (pid 2)" in text            # re-exec inside, same pid
    assert text.count("spawned jailserve master process (pid: 2)") == 12
    assert text.count("http-socket 0 inherited TCP address 198.18.61.2:8080") == 11
    assert keeper.poll() is None                                    # keeper and jail kept
    assert os.readlink(f"/proc/{keeper.pid}/ns/pid") == init_pidns
    got = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                          "import urllib.request; print(urllib.request.urlopen('http://198.18.61.2:8080/echo?z', timeout=30).read().decode())"],
                         capture_output=True, text=True, env=env, check=False)
    assert got.stdout.strip() == "v2:z", got.stderr
    pidns = [os.readlink(f"/proc/{p}/ns/pid") for p in _children(keeper.pid)]
    keeper.send_signal(signal.SIGINT)
    assert keeper.wait(timeout=WAIT) == 0, text[-3000:]
    wait_until(lambda: all(pidns_members(ns) == [] for ns in pidns), "the jail's processes gone")
    assert name not in registry_names()
    assert sh("ip -o link show type veth", netns) == ""


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]
