"""Quick side check: one jailserve worker (sync or async mode) on loopback under wrk.

    python bench/async/quick.py sync|async [seconds] [connections]

Prints requests/s and the server's CPU per request (user+sys of the server process over the
run, divided by the requests wrk counted).  Not a test; numbers only.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from jailserve import _core

HELLO = b"Hello, World!"


def app(env, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "sync"
    secs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    port = s.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {0})
        signal.signal(signal.SIGTERM, lambda *a: _core.request_stop())
        cfg = _core.ServeConfig(socket_timeout=30, server_name="bench")
        if os.environ.get("NOGC"):
            import gc
            gc.disable()
        if mode == "async":
            _core.serve_async([(s, "http11")], app, cfg, cores=100)
        else:
            _core.serve([(s, "http11")], app, cfg)
        os._exit(0)
    s.close()
    time.sleep(0.3)
    t0 = os.times()
    c0 = _cpu(pid)
    out = subprocess.run(["taskset", "-c", "1", "wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{secs}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=False).stdout
    c1 = _cpu(pid)
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    print(out if os.environ.get("FULL") else ("p99 %s" % (p99.group(1) if p99 else None)))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    print(f"{mode}: {rps:.0f} req/s, server CPU {1e6 * (c1 - c0) / reqs:.1f} us/request "
          f"({reqs} requests, {conns} connections)")
    del t0


def _cpu(pid):
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
