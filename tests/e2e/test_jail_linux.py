"""python -m jailserve with a jail config, for real, on Linux: the seed's jail.ini adapted
(the address lives in a throwaway outer netns instead of `ifconfig em0 alias`), asked over
HTTP from outside; a second instance attached by name serves from the same jail; both
stop on SIGINT and leave nothing behind.  Needs root; 198.18.0.0/15 only."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0,
                                reason="Linux namespaces, as root")

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO / "tests" / "jail"))
from linux_helpers import pidns_members, registry_names, sh, throwaway_netns, wait_until  # noqa: E402

APP = '''
import json, os, socket, subprocess
def application(environ, start_response):
    facts = {"hostname": socket.gethostname(), "root": sorted(os.listdir("/")), "uid": os.getuid(),
             "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
             "pidns": os.readlink("/proc/self/ns/pid"), "host_marker": os.path.exists(%(marker)r),
             "addrs": sorted(l.split()[1] + " " + l.split()[3] for l in subprocess.run(
                 ["ip", "-o", "addr"], capture_output=True, text=True).stdout.splitlines())}
    body = json.dumps(facts).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

CLIENT = '''
import sys, time, urllib.request
deadline = time.monotonic() + 30          # the server is starting: a liveness guard, not a timing check
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
'''


@pytest.fixture
def netns():
    with throwaway_netns(f"jse2e{os.getpid() % 100000}") as ns:
        yield ns


@pytest.fixture
def servers():
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start(netns, ini: Path, log: Path, servers) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}     # the log is read while it runs
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "jailserve", str(ini)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    servers.append(proc)
    return proc


def ask(netns, url: str) -> dict:
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT, url],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_jailed_instance_and_an_attached_one_serve_and_leave_nothing(tmp_path, netns, servers):
    name = f"e2e{os.getpid() % 100000}"
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    (root / "ROOT_MARKER").write_text("x\n")
    (tmp_path / "HOST_MARKER").write_text("x\n")
    (root / "app" / "app.py").write_text(APP % {"marker": str(tmp_path / "HOST_MARKER")})
    jidfile = tmp_path / "jid"
    (tmp_path / "jail.ini").write_text(f"""[uwsgi]
jail = {root} webjail {name}
jail-ip4 = 198.18.60.2
jidfile = {jidfile}
http-socket = 198.18.60.2:8080
master = true
processes = 2
chdir = /app
wsgi-file = app.py
uid = nobody
gid = nogroup
""")
    (tmp_path / "attach.ini").write_text(f"""[uwsgi]
jail-attach = {name}
http-socket = 198.18.60.2:8081
master = true
processes = 1
chdir = /app
wsgi-file = app.py
uid = nobody
gid = nogroup
""")
    first = start(netns, tmp_path / "jail.ini", tmp_path / "first.log", servers)
    wait_until(lambda: "spawned jailserve worker 2" in (tmp_path / "first.log").read_text(), "both workers")
    facts = ask(netns, "http://198.18.60.2:8080/")
    assert facts["hostname"] == "webjail"
    assert "ROOT_MARKER" in facts["root"] and not facts["host_marker"]
    assert facts["uid"] == 65534
    assert facts["pids"] == [1, 2, 3, 4]           # init, master, two workers: only the jail's
    assert facts["addrs"] == ["eth0 198.18.60.2/32", "lo 127.0.0.1/8", "lo ::1/128"]
    jid = int(jidfile.read_text())
    assert f"js-{name}" in sh("ip -o link show type veth", netns)
    assert "198.18.60.2 dev" in sh("ip route", netns)

    second = start(netns, tmp_path / "attach.ini", tmp_path / "second.log", servers)
    wait_until(lambda: "spawned jailserve worker 1" in (tmp_path / "second.log").read_text(), "its worker")
    other = ask(netns, "http://198.18.60.2:8081/")
    assert other["hostname"] == "webjail" and other["pidns"] == facts["pidns"]
    jls = subprocess.run([sys.executable, "-m", "jailserve", "--jls"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    (row,) = [r for r in jls.splitlines() if f" {name} " in r]
    assert row.split()[0] == str(jid) and row.endswith("/ 5")     # 3 + 2 processes, init not counted

    for proc in (second, first):
        proc.send_signal(signal.SIGINT)             # the keepers relay it: uWSGI's shutdown
        assert proc.wait() == 0, (tmp_path / "first.log").read_text()
    assert pidns_members(facts["pidns"]) == []
    assert name not in registry_names() and not jidfile.exists()
    assert sh("ip -o link show type veth", netns) == "" and "198.18." not in sh("ip route", netns)
