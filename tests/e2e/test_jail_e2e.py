"""startup.run inside a Linux jail: hooks on each side of it, the bind inside, the banner.

The jail's network lives in a network namespace made for the test (`ip netns`), so its
address (198.18.0.0/15, the benchmarking range) never touches the host's.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys

import e2e_support
import pytest
from e2e_support import APPS, WAIT, get_in_netns, netns_fixture, wait_for

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="a Linux jail needs root and iproute2")

netns = netns_fixture("jsst")
jailed = e2e_support.jailed            # the fixture: servers started in netns, killed at teardown


def test_jailed_server_runs_hooks_in_order_and_binds_inside(tmp_path, netns, jailed):
    name = f"st{os.getpid() % 100000}"
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    (root / "app" / "app.py").write_text((APPS / "whoami_min.py").read_text())
    marks = tmp_path / "marks"
    ini = tmp_path / "jail.ini"
    ini.write_text(f"""[uwsgi]
jail = {root} boxhost {name}
jail-ip4 = 198.18.62.2
http-socket = 198.18.62.2:8080
socket = /app/inside.sock
vacuum = true
master = true
processes = 2
chdir = /app
wsgi-file = app.py
exec-pre-jail = echo pre-jail on the host >> {marks}
exec-post-jail = hostname > /app/post-jail
exec-in-jail = echo in-jail >> /app/in-jail
""")
    proc = jailed(ini, tmp_path / "server.log")
    out = get_in_netns(netns, "http://198.18.62.2:8080/", log=tmp_path / "server.log")
    log = (tmp_path / "server.log").read_text()
    assert "'worker_id': " in out
    assert marks.read_text() == "pre-jail on the host\n"            # ran before the jail
    assert (root / "app" / "post-jail").read_text().strip() == "boxhost"   # ran inside
    assert (root / "app" / "in-jail").exists()
    assert "jailed: root" in log and "bound to TCP address 198.18.62.2:8080" in log
    assert log.index("jailed: root") < log.index("bound to TCP address")
    assert (root / "app" / "inside.sock").is_socket()                # bound in the jail's root
    proc.send_signal(signal.SIGHUP)       # to the process outside: it reaches the master
    wait_for(lambda: "graceful reload" in (tmp_path / "server.log").read_text(), "the reload in the jail")
    assert "'worker_id': " in get_in_netns(netns, "http://198.18.62.2:8080/")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT) == 0, (tmp_path / "server.log").read_text()
    assert not (root / "app" / "inside.sock").exists()               # vacuumed by the jailed master
