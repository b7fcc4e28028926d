"""Reload under load, jailserve against uWSGI 2.0.31, same app, same options.

Each server gets: `--http-socket 127.0.0.1:PORT --master --processes 2 --lazy-apps
--wsgi-file app.py --disable-logging --master-fifo FIFO`.  A client of 4 threads
(tests/e2e/e2e_support.Load: a new connection per request, every body checked) runs while
the script sends 20 SIGHUPs (graceful reload) then 20 chain reloads (FIFO 'c'), one every
--interval seconds, then --tail seconds more.  Reported per server and phase: requests
answered right, failed ones (reset, closed without answer, wrong body), the longest stall
(longest gap between two answers of one client thread).  Writes results.json next to this
file and prints a markdown table.

    python bench/reload/run.py [--uwsgi PATH] [--interval 0.5] [--reloads 20]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from e2e_support import Load, fifo_send, free_port, session_pids

APP = '''
VERSION = "v1"
def application(environ, start_response):
    body = (VERSION + ":" + environ.get("QUERY_STRING", "")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def command(name: str, uwsgi: str, port: int, app: Path, fifo: Path) -> list[str]:
    opts = ["--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "2", "--lazy-apps",
            "--wsgi-file", str(app), "--disable-logging", "--master-fifo", str(fifo)]
    if name == "jailserve":
        return [sys.executable, "-m", "jailserve", *opts]
    return [uwsgi, *opts]


def wait_accepting(port: int, proc) -> None:
    import socket
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def run_one(name: str, args, work: Path) -> dict:
    app = work / "app.py"
    app.write_text(APP)
    fifo = work / f"{name}.fifo"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UWSGI_")}
    env["PYTHONPATH"] = str(ROOT)
    log = (work / f"{name}.log").open("wb")
    proc = subprocess.Popen(command(name, args.uwsgi, port, app, fifo), cwd=work, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_accepting(port, proc)
        time.sleep(1.0)                      # both workers up
        out = {}
        for phase, send in (("sighup", lambda: os.kill(proc.pid, signal.SIGHUP)),
                            ("chain", lambda: fifo_send(fifo, "c"))):
            load = Load("127.0.0.1", port, threads=4, timeout=10).start()
            for _ in range(args.reloads):
                send()
                time.sleep(args.interval)
            time.sleep(args.tail)
            load.finish()
            out[phase] = load.summary()
            out[phase]["alive"] = proc.poll() is None
        return out
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uwsgi", default="/root/.pyenv/versions/3.11.7/bin/uwsgi")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--tail", type=float, default=2.0)
    args = parser.parse_args()
    version = subprocess.run([args.uwsgi, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    results = {"uwsgi": version, "interval_s": args.interval, "reloads": args.reloads, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as d:
        for name in ("jailserve", "uwsgi"):
            work = Path(d) / name
            work.mkdir()
            results["servers"][name] = run_one(name, args, work)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| server | reloads | answered right | failed | longest stall |")
    print("|---|---|---|---|---|")
    for name, phases in results["servers"].items():
        label = "jailserve" if name == "jailserve" else f"uWSGI {version}"
        for phase, r in phases.items():
            kind = f"{args.reloads} x SIGHUP" if phase == "sighup" else f"{args.reloads} x chain (fifo c)"
            print(f"| {label} | {kind} | {r['ok']} | {r['failed']} | {r['longest_stall_s']:.3f} s |")


if __name__ == "__main__":
    main()
