"""Lock/unlock round trips per second: jailserve's engines beside uWSGI 2.0.31's, in one run.

    python bench/locks/run.py [--n 200000] [--repeat 5] [--uwsgi PATH]

1. In-process numbers for each jailserve layer and engine (bench_locks.py).
2. The same app (app.py: N uwsgi.lock()/uwsgi.unlock() pairs inside the request, timed
   inside the worker, so HTTP is not in the number) served by uWSGI 2.0.31 (its default
   engine on Linux: process-shared robust pthread mutexes; and lock-engine = ipcsem) and by
   jailserve (posixsem; ipcsem).  One worker each, pinned to CPU 0; the best of --repeat
   requests is reported (the least disturbed run).

uWSGI is looked for in .venv/bin (tools/install.sh --test puts it there), then on PATH;
`pip install uwsgi==2.0.31` builds it in about two minutes.  Benchmarks are not tests:
nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
APP = os.path.join(HERE, "app.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_uwsgi(given: str | None) -> str | None:
    for candidate in (given, os.path.join(ROOT, ".venv", "bin", "uwsgi"), shutil.which("uwsgi")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def commands(uwsgi: str | None, port: int) -> dict[str, list[str]]:
    common = ["--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "1",
              "--disable-logging", "--wsgi-file", APP]
    js = [sys.executable, "-m", "jailserve", *common]
    out = {"jailserve posixsem": js, "jailserve ipcsem": js + ["--lock-engine", "ipcsem"]}
    if uwsgi:
        uw = [uwsgi, *common, "--need-app"]
        out["uWSGI 2.0.31 default (pthread robust mutex)"] = uw
        out["uWSGI 2.0.31 ipcsem"] = uw + ["--lock-engine", "ipcsem"]
    return out


def wait_listening(port: int, proc: subprocess.Popen, limit: float = 30.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def serve_and_measure(cmd: list[str], port: int, n: int, repeat: int, log) -> float | None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + HERE)
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    proc = subprocess.Popen(taskset + cmd, stdout=log, stderr=log, env=env, cwd=HERE,
                            start_new_session=True)
    try:
        if not wait_listening(port, proc):
            return None
        best = 0.0
        for _ in range(repeat):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/?n={n}", timeout=120) as r:
                    best = max(best, json.loads(r.read())["per_second"])
            except (OSError, ValueError):
                return None
        return best
    finally:
        os.killpg(proc.pid, signal.SIGINT)        # both servers: SIGINT is shutdown
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--uwsgi")
    args = ap.parse_args()

    sys.path.insert(0, HERE)
    import bench_locks

    print(f"in-process, n={args.n}")
    for name, per_second in bench_locks.measure(args.n).items():
        print(f"  {name:55s} {per_second:12,.0f} round trips/s")

    uwsgi = find_uwsgi(args.uwsgi)
    if uwsgi is None:
        print("uWSGI not found (.venv/bin/uwsgi or PATH): only jailserve measured")
    print(f"in a worker, uwsgi.lock()/uwsgi.unlock() from app.py, n={args.n}, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in commands(uwsgi, 0).items():
            port = free_port()
            cmd = [c if c != "127.0.0.1:0" else f"127.0.0.1:{port}" for c in cmd]
            log_path = os.path.join(tmp, "server.log")
            with open(log_path, "w") as log:
                result = serve_and_measure(cmd, port, args.n, args.repeat, log)
            if result is None:
                with open(log_path) as f:
                    tail = f.read().strip().splitlines()[-3:]
                print(f"  {name:55s} did not serve: {' | '.join(tail)}")
            else:
                print(f"  {name:55s} {result:12,.0f} round trips/s")


if __name__ == "__main__":
    main()
