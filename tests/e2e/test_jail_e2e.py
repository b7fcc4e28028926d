"""startup.run inside a Linux jail: hooks on each side of it, the bind inside, the banner.

The jail's network lives in a network namespace made for the test (`ip netns`), so its
address (198.18.0.0/15, the benchmarking range) never touches the host's.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from e2e_support import APPS, ROOT, WAIT, wait_for

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="a Linux jail needs root and iproute2")

CLIENT = """
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.1)
"""


def test_jailed_server_runs_hooks_in_order_and_binds_inside(tmp_path):
    netns, name = f"jsst{os.getpid() % 100000}", f"st{os.getpid() % 100000}"
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("UWSGI_")}
    env["PYTHONPATH"] = str(ROOT)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        with open(tmp_path / "server.log", "w") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "jailserve", str(ini)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT,
                              "http://198.18.62.2:8080/"], capture_output=True, text=True, timeout=WAIT * 2)
        log = (tmp_path / "server.log").read_text()
        assert out.returncode == 0, out.stderr + log
        assert "'worker_id': " in out.stdout
        assert marks.read_text() == "pre-jail on the host\n"            # ran before the jail
        assert (root / "app" / "post-jail").read_text().strip() == "boxhost"   # ran inside
        assert (root / "app" / "in-jail").exists()
        assert "jailed: root" in log and "bound to TCP address 198.18.62.2:8080" in log
        assert log.index("jailed: root") < log.index("bound to TCP address")
        assert (root / "app" / "inside.sock").is_socket()                # bound in the jail's root
        proc.send_signal(signal.SIGHUP)       # to the process outside: it reaches the master
        wait_for(lambda: "graceful reload" in (tmp_path / "server.log").read_text(), "the reload in the jail")
        out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CLIENT,
                              "http://198.18.62.2:8080/"], capture_output=True, text=True, timeout=WAIT * 2)
        assert "'worker_id': " in out.stdout, out.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0, (tmp_path / "server.log").read_text()
        assert not (root / "app" / "inside.sock").exists()               # vacuumed by the jailed master
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["ip", "netns", "del", netns], check=False)
