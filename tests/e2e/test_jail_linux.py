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
import e2e_support
from e2e_support import get_in_netns, netns_fixture
from linux_helpers import pidns_members, registry_names, sh, wait_until  # noqa: E402

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

netns = netns_fixture("jse2e")
jailed = e2e_support.jailed            # the fixture: servers started in netns, killed at teardown


def start_and_ask(jailed, netns, ini: Path, log: Path, workers: int, url: str):
    """Start a server of ini, wait for its workers and ask it: (process, the app's facts)."""
    proc = jailed(ini, log)
    wait_until(lambda: f"spawned jailserve worker {workers}" in log.read_text(), f"{workers} worker(s)")
    return proc, json.loads(get_in_netns(netns, url))


def test_jailed_instance_and_an_attached_one_serve_and_leave_nothing(tmp_path, netns, jailed):
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
    first, facts = start_and_ask(jailed, netns, tmp_path / "jail.ini", tmp_path / "first.log", 2,
                                 "http://198.18.60.2:8080/")
    assert facts["hostname"] == "webjail"
    assert "ROOT_MARKER" in facts["root"] and not facts["host_marker"]
    assert facts["uid"] == 65534
    assert facts["pids"] == [1, 2, 3, 4]           # init, master, two workers: only the jail's
    assert facts["addrs"] == ["eth0 198.18.60.2/32", "lo 127.0.0.1/8", "lo ::1/128"]
    jid = int(jidfile.read_text())
    assert f"js-{name}" in sh("ip -o link show type veth", netns)
    assert "198.18.60.2 dev" in sh("ip route", netns)

    second, other = start_and_ask(jailed, netns, tmp_path / "attach.ini", tmp_path / "second.log", 1,
                                  "http://198.18.60.2:8081/")
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
