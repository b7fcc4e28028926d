"""The real server: workers under concurrent HTTP load increment a counter under
`uwsgi.lock()`; a worker SIGKILLed while holding the lock does not stop the next request;
`ipcs -s` and /dev/shm are the same before and after each way the server stops.

Servers are started as `python -m jailserve` on their own port and stopped by pid (their
process group is ours).  The stop-path scenarios run in a clean IPC + mount namespace
(unshare(1)) so the before/after comparison is exact on a busy machine.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve()

APP = '''
import os, time, uwsgi

COUNTER = {counter!r}
HELD = {held!r}


def bump():
    value = int(open(COUNTER).read())
    time.sleep(0.002)                      # widen the read-modify-write window
    tmp = f"{{COUNTER}}.{{os.getpid()}}"
    with open(tmp, "w") as f:
        f.write(str(value + 1))
    os.replace(tmp, COUNTER)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/locked":
        uwsgi.lock()
        try:
            bump()
        finally:
            uwsgi.unlock()
    elif path == "/unlocked":
        bump()
    elif path == "/hold":
        uwsgi.lock()
        with open(HELD, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)                    # until the test kills this worker
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, workdir: Path, *options: str, processes: int = 4):
        self.workdir = workdir
        self.counter = workdir / "counter"
        self.held = workdir / "held"
        self.counter.write_text("0")
        (workdir / "app.py").write_text(APP.format(counter=str(self.counter), held=str(self.held)))
        self.port = free_port()
        self.log = open(workdir / "server.log", "w")  # noqa: SIM115  (open while the server runs)
        env = {k: v for k, v in os.environ.items() if not k.startswith("UWSGI_")}
        env["PYTHONPATH"] = str(ROOT)
        self.args = [sys.executable, "-m", "jailserve", "--http-socket", f"127.0.0.1:{self.port}",
                     "--master", "--processes", str(processes), "--wsgi-file", str(workdir / "app.py"),
                     "--disable-logging", *options]
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log, env=env,
                                     cwd=workdir, start_new_session=True)
        self.wait_serving()

    def wait_serving(self, limit: float = 60.0) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                if self.get("/") == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server never answered")

    def get(self, path: str, timeout: float = 60.0) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def log_text(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, limit: float = 60.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(limit)
        finally:
            self.kill_group()

    def kill_group(self) -> None:
        # whatever is left of this server (its own session): never someone else's process
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait()
        self.log.close()


# --- the clean-room driver (run as a script under unshare) --------------------------------

def snapshot() -> dict:
    out = subprocess.run(["ipcs", "-s"], capture_output=True, text=True, check=True).stdout
    sets = sorted(f"{f[0]}/{f[1]}" for f in (line.split() for line in out.splitlines())
                  if len(f) >= 5 and f[1].isdigit())
    return {"ipcs": sets, "shm": sorted(os.listdir("/dev/shm"))}


def drive(mode: str, engine: str, workdir: str) -> dict:
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/dev/shm"], check=True)
    options = ["--lock-engine", engine, "--locks", "1", "--thunder-lock", "--die-on-term"]
    result = {"before": snapshot()}
    server = Server(Path(workdir), *options, processes=2)
    assert server.get("/locked") == 200
    result["during"] = snapshot()
    if mode == "sigkill":
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(60)
        server.kill_group()                # the orphaned workers (this session only)
        result["after_stop"] = snapshot()
        server = Server(Path(workdir), *options, processes=2)     # the next start
        result["next_during"] = snapshot()
        mode = "sigint"
    result["status"] = server.stop(signal.SIGTERM if mode == "sigterm" else signal.SIGINT)
    result["after"] = snapshot()
    result["log"] = server.log_text()[-3000:]
    return result


if __name__ == "__main__":
    print(json.dumps(drive(*sys.argv[2:5])))
    sys.exit(0)


# --- the tests -------------------------------------------------------------------------------

import e2e_support  # here, below the driver: it runs without pytest
import pytest
from e2e_support import netns_fixture, run_in_netns

ENGINES = ["posixsem", "ipcsem"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith(("linux", "freebsd")), reason="POSIX only")
netns = netns_fixture("jslk")        # for the jail test: its address lives only in there
jailed = e2e_support.jailed          # the fixture: servers started in netns, killed at teardown


@pytest.fixture
def server(tmp_path):
    made = []

    def start(*options: str, processes: int = 4) -> Server:
        made.append(Server(tmp_path, *options, processes=processes))
        return made[-1]

    yield start
    for s in made:
        s.stop()


def hammer(server: Server, path: str, clients: int = 8, each: int = 25) -> None:
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(lambda _: [server.get(path) for _ in range(each)], range(clients)))
    assert all(status == 200 for batch in statuses for status in batch)


@pytest.mark.parametrize("engine", ENGINES)
def test_workers_under_load_count_exactly_under_uwsgi_lock(engine, server):
    s = server("--lock-engine", engine)
    hammer(s, "/locked")
    assert int(s.counter.read_text()) == 8 * 25


@pytest.mark.parametrize("engine", ENGINES)
def test_the_same_load_without_the_lock_loses_updates(engine, server):
    s = server("--lock-engine", engine)
    hammer(s, "/unlocked")
    assert int(s.counter.read_text()) < 8 * 25


@pytest.mark.parametrize("engine", ENGINES)
def test_a_worker_killed_holding_the_lock_does_not_block_the_next_request(engine, server):
    s = server("--lock-engine", engine, processes=2)
    pool = ThreadPoolExecutor(1)
    held = pool.submit(lambda: s.get("/hold", timeout=120))
    end = time.monotonic() + 60
    while not (s.held.exists() and s.held.read_text()) and time.monotonic() < end:
        time.sleep(0.02)
    holder = int(s.held.read_text())
    os.kill(holder, signal.SIGKILL)        # a worker of the server this test started
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        held.result(120)
    pool.shutdown()
    assert s.get("/locked") == 200         # would hang if the lock stayed taken
    assert int(s.counter.read_text()) == 1
    how = "released by the kernel (SEM_UNDO)" if engine == "ipcsem" else "released by the master"
    assert f"lock 0 was held by dead process {holder}: {how}" in s.log_text()


needs_clean_room = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="clean room made with Linux namespaces (root, unshare)")


def run_scenario(mode: str, engine: str, tmp_path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["unshare", "--ipc", "--mount", "--propagation", "private",
                           sys.executable, str(SELF), "driver", mode, engine, str(tmp_path)],
                          capture_output=True, text=True, timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@needs_clean_room
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["sigint", "sigterm"])
def test_server_stop_leaves_no_semaphore(mode, engine, tmp_path):
    r = run_scenario(mode, engine, tmp_path)
    grown = len(r["during"]["ipcs"]) - len(r["before"]["ipcs"])
    assert grown == (3 if engine == "ipcsem" else 0), r["log"]
    assert r["status"] == 0, r["log"]
    assert r["after"] == r["before"], r["log"]


@needs_clean_room
@pytest.mark.parametrize("engine", ENGINES)
def test_killed_master_leftovers_are_removed_by_the_next_start(engine, tmp_path):
    r = run_scenario("sigkill", engine, tmp_path)
    extra = 3 if engine == "ipcsem" else 0
    assert len(r["after_stop"]["ipcs"]) == len(r["before"]["ipcs"]) + extra    # really left
    assert len(r["next_during"]["ipcs"]) == len(r["before"]["ipcs"]) + extra   # not doubled
    assert r["after"] == r["before"], r["log"]


# --- inside a Linux jail -------------------------------------------------------------------

JAIL_APP = '''
import json, os, time, uwsgi
from jailserve import _jail, locks

COUNTER = "/app/counter"


def application(environ, start_response):
    if environ["PATH_INFO"] == "/locked":
        uwsgi.lock()
        try:
            value = int(open(COUNTER).read())
            time.sleep(0.002)
            with open(COUNTER + ".tmp", "w") as f:
                f.write(str(value + 1))
            os.replace(COUNTER + ".tmp", COUNTER)
        finally:
            uwsgi.unlock()
    sets = [dict(_jail.sem_stat(i), semid=i) for i in locks.current().engine.semids]
    body = json.dumps({"ipcns": os.readlink("/proc/self/ns/ipc"), "sets": sets,
                       "shm": sorted(os.listdir("/dev/shm")), "count": int(open(COUNTER).read())}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

LOAD_CLIENT = '''
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
url = sys.argv[1]
deadline = time.monotonic() + 30          # the server is starting: a liveness guard
while True:
    try:
        urllib.request.urlopen(url + "/", timeout=5).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
get = lambda path: urllib.request.urlopen(url + path, timeout=60).read()
with ThreadPoolExecutor(6) as pool:
    list(pool.map(lambda _: [get("/locked") for _ in range(20)], range(6)))
print(get("/").decode())
'''


def host_sysv_sets() -> set[tuple[int, int]]:
    """(semid, ctime) of every set the host's IPC namespace holds (/proc/sysvipc/sem)."""
    with open("/proc/sysvipc/sem") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {(int(r[1]), int(r[9])) for r in rows if len(r) >= 10}


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0
                    or shutil.which("ip") is None or shutil.which("nsenter") is None,
                    reason="a Linux jail (root, ip, nsenter)")
def test_ipcsem_inside_a_linux_jail_is_private_and_works(tmp_path, netns, jailed):
    name = f"lk{os.getpid() % 100000}"
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    (root / "app" / "app.py").write_text(JAIL_APP)
    (root / "app" / "counter").write_text("0")
    jidfile = tmp_path / "jid"
    ini = tmp_path / "jail.ini"
    ini.write_text(f"""[uwsgi]
jail = {root} lockjail {name}
jail-ip4 = 198.18.61.2
jidfile = {jidfile}
http-socket = 198.18.61.2:8080
master = true
processes = 3
chdir = /app
wsgi-file = app.py
lock-engine = ipcsem
locks = 1
""")
    proc = jailed(ini, tmp_path / "server.log")
    out = run_in_netns(netns, LOAD_CLIENT, "http://198.18.61.2:8080", log=tmp_path / "server.log", timeout=180)
    facts = json.loads(out)
    assert facts["count"] == 6 * 20                       # the lock works in the jail
    assert len(facts["sets"]) == 2                         # locks = 1: two sets
    assert facts["ipcns"] != os.readlink("/proc/self/ns/ipc")
    # from outside: the jail's namespace holds exactly these sets, the host's none of them
    jid = int(jidfile.read_text())
    inside = subprocess.run(["nsenter", "-t", str(jid), "--ipc", "cat", "/proc/sysvipc/sem"],
                            capture_output=True, text=True, check=True).stdout
    seen = {(int(r[1]), int(r[9])) for r in (l.split() for l in inside.splitlines()[1:]) if len(r) >= 10}
    ours = {(s["semid"], s["ctime"]) for s in facts["sets"]}
    assert seen == ours
    assert not ours & host_sysv_sets()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, (tmp_path / "server.log").read_text()
    assert not ours & host_sysv_sets()

