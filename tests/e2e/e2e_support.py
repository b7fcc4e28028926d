"""Whole-server helpers: start `python -m jailserve` for real, talk to it, always clean up.

The `serve` fixture is imported by the test modules (`from e2e_support import serve`): there
is no conftest.py here, so that tests/conftest.py stays the only module named `conftest`.

Every server runs in its own session (start_new_session), so teardown can SIGKILL exactly
the processes the test started — the master and its workers — by process group id, even
when an assertion failed half-way.  Unix sockets and pidfiles live in the test's tmp_path.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"
WAIT = 60.0          # a generous bound for a server to start or stop; never a timing assertion


def free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):   # gone before the open, or during the read
        return False


def session_pids(sid: int) -> list[int]:
    """Live processes of a session (the server's master, workers, hooks)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


class Server:
    """A running jailserve: its master pid, its log, and helpers to reach it."""

    def __init__(self, argv: list[str], cwd: Path, env: dict | None = None):
        self.cwd = cwd
        self.logfile = cwd / f"server-{len(list(cwd.glob('server-*.log')))}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("UWSGI_")}
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
        full_env.update(env or {})
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "jailserve", *argv], cwd=cwd, env=full_env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_tcp(self, port: int, host: str = "127.0.0.1") -> Server:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return self._wait_accepting(family, (host, port), f"{host}:{port}")

    def wait_unix(self, path: Path) -> Server:
        return self._wait_accepting(socket.AF_UNIX, str(path), str(path))

    def _wait_accepting(self, family: int, address, name: str) -> Server:
        """Until a connect to address succeeds; a server that exited fails at once, with its log."""
        def accepting():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.socket(family) as s:
                    s.settimeout(2)
                    s.connect(address)
                return True
            except OSError:
                return False
        wait_for(accepting, f"the server to accept on {name}")
        return self

    def wait_log(self, text: str) -> str:
        return wait_for(lambda: text in self.log() and self.log(), f"{text!r} in the server log")

    def workers(self) -> list[int]:
        return [pid for pid in session_pids(self.pid) if pid != self.pid]

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send sig to the master and wait for the whole session to be gone."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=WAIT)
        wait_for(lambda: not session_pids(self.pid), "every process of the server to exit")
        return code

    def kill(self) -> None:
        if self.proc.poll() is None or session_pids(self.pid):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def get(port: int, path: str = "/", host: str = "127.0.0.1", method: str = "GET", body=None, headers=None):
    """One request with http.client; returns (status, headers dict, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=WAIT)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(WAIT)
        self.sock.connect(self.path)


def fifo_send(fifo: Path, letters: str) -> None:
    """Write master-FIFO commands (uWSGI's letters: r, c, q, ...) without blocking: the
    master must have the FIFO open already, else this raises (ENXIO) instead of hanging."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, letters.encode())
    finally:
        os.close(fd)


@pytest.fixture
def serve(tmp_path):
    """serve(argv..., env=None) -> Server; every server started is killed at teardown."""
    started: list[Server] = []

    def start(*argv: str, env: dict | None = None) -> Server:
        server = Server(list(argv), tmp_path, env)
        started.append(server)
        return server
    start.tmp_path = tmp_path
    yield start
    for server in started:
        server.kill()


# ---------------------------------------------------------------------------------------
# jailed servers (tests/e2e/test_jail*.py, test_locks_e2e.py, test_debootstrap.py,
# test_reload_jail_linux.py).  The jail's address (198.18.0.0/15) lives in a throwaway
# network namespace standing in for the host (linux_helpers.throwaway_netns: made, lo up,
# deleted afterwards); the server is started in it and asked from it, so no packet of the
# test reaches the host's own network.

NETNS_GET = """
import sys, time, urllib.request
deadline = time.monotonic() + 60          # the server is starting: a liveness guard, not a timing check
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
"""


def netns_fixture(prefix: str):
    """A `netns` fixture for a module: a throwaway network namespace named prefix + pid."""
    @pytest.fixture
    def netns():
        jail_tests = str(ROOT / "tests" / "jail")
        if jail_tests not in sys.path:
            sys.path.insert(0, jail_tests)
        from linux_helpers import throwaway_netns
        with throwaway_netns(f"{prefix}{os.getpid() % 100000}") as ns:
            yield ns
    return netns


@pytest.fixture
def jailed(netns):
    """start(ini, log) -> Popen: `python -m jailserve INI` inside `netns`, in a session of its
    own, output (unbuffered: read while it runs) to log.  A server still running at teardown
    is SIGKILLed with its process group, before the namespace goes."""
    started: list[subprocess.Popen] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("UWSGI_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")

    def start(ini: Path, log: Path) -> subprocess.Popen:
        with open(log, "w") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "jailserve", str(ini)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        started.append(proc)
        return proc
    yield start
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def run_in_netns(netns: str, script: str, *args: str, log: Path | None = None, timeout: float = WAIT * 2) -> str:
    """`python -c script args` inside netns; its stdout.  A failure shows its stderr and the
    server's log."""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script, *args],
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr + (log.read_text() if log else "")
    return out.stdout


def get_in_netns(netns: str, url: str, log: Path | None = None) -> str:
    """The body of GET url, asked from inside netns (retried while the server starts)."""
    return run_in_netns(netns, NETNS_GET, url, log=log)


# ---------------------------------------------------------------------------------------
# the reload load client (tests/e2e/test_reload*.py, bench/reload): several threads send
# requests continuously and check every response's body, not only that one came back.
# Each request asks /echo?<thread>-<n> and expects exactly `<version>:<thread>-<n>`, the
# version one of `versions`; anything else (an exception, a reset, a short or wrong body, a
# status other than 200) is a failure, recorded with what went wrong.  `stall` is the
# longest time between two completed requests of one thread.  As a program
# (`python e2e_support.py HOST PORT STOPFILE VERSIONS...`) it runs until STOPFILE exists and
# prints a JSON summary, so the same client runs inside a network namespace.


class Load:
    def __init__(self, host: str, port: int, threads: int = 4, timeout: float = 30.0,
                 family: int = socket.AF_INET, keepalive: bool = False):
        self.host, self.port, self.timeout = host, port, timeout
        self.keepalive = keepalive      # one persistent connection per thread (see _exchange)
        self.retries = 0
        self.versions: set[str] = {"v1"}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.seen: dict[str, int] = {}
        self.stall = 0.0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def finish(self, bound: float = 60.0) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(bound)
            assert not t.is_alive(), "a client thread did not finish"

    def _exchange(self, conn, tag: str):
        """(connection for the next request, response, body).  Without keepalive a new
        connection per request.  With it, a reused connection that the server closed while it
        was idle (nothing of the response came) is retried once on a new one, as clients do
        for idempotent requests (RFC 9112 §9.3.1); a failure on a new connection is not."""
        reused = conn is not None
        for attempt in (1, 2):
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("GET", f"/echo?{tag}")
                resp = conn.getresponse()
                body = resp.read().decode("latin-1")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                conn = None
                if not (reused and attempt == 1):
                    raise
                with self.lock:
                    self.retries += 1
                continue
            if not self.keepalive or resp.will_close:
                conn.close()
                conn = None
            return conn, resp, body
        raise AssertionError("unreachable")

    def _run(self, i: int) -> None:
        n = 0
        last = time.monotonic()
        conn = None
        while not self.stop.is_set():
            n += 1
            tag = f"{i}-{n}"
            problem = None
            version = None
            try:
                conn, resp, body = self._exchange(conn, tag)
                version, _, got = body.partition(":")
                if resp.status != 200 or got != tag:
                    problem = f"{tag}: status {resp.status} body {body[:80]!r}"
                elif version not in self.versions:
                    problem = f"{tag}: unexpected version {version!r}"
            except Exception as exc:  # noqa: BLE001 -- every kind of failure is counted, none hidden
                problem = f"{tag}: {type(exc).__name__}: {exc}"
                conn = None
            now = time.monotonic()
            with self.lock:
                self.stall = max(self.stall, now - last)
                last = now
                if problem:
                    self.failures.append(problem)
                else:
                    self.ok += 1
                    self.seen[version] = self.seen.get(version, 0) + 1

    def summary(self) -> dict:
        return {"ok": self.ok, "failed": len(self.failures), "failures": self.failures[:20],
                "idle_connection_retries": self.retries,
                "longest_stall_s": round(self.stall, 3), "versions": self.seen}


if __name__ == "__main__":
    import os

    host, port, stopfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    load = Load(host, port)
    load.versions = set(sys.argv[4:]) or {"v1"}
    load.start()
    deadline = time.monotonic() + 300          # a liveness bound: the caller forgot the file
    while not os.path.exists(stopfile) and time.monotonic() < deadline:
        time.sleep(0.05)
    load.finish()
    print(json.dumps(load.summary()))
