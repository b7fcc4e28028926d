"""Async-mode benchmark (issue 8): jailserve `async = 100` + greenlet against uWSGI 2.0.31
`--gevent 100` (pip's uWSGI has no greenlet plugin: `--greenlet` is "unrecognized option")
and gunicorn's gevent worker; jailserve's sync http11-socket for reference.

    python bench/async/run.py [--duration 5] [--connections 50] [--idle 10000] [--only NAME,...]

1. keep-alive GET hello under wrk: requests/s, p99, server CPU per request (user+sys of the
   server's process tree / requests), server pinned to CPU 0, wrk to CPU 1.
2. `--idle` keep-alive connections, each after one request, held open on the one worker: the
   server's RSS growth (VmRSS of its processes, before vs with them open), and the latency of a
   new connection (connect + one GET, median and worst of 50) with and without them.
Benchmarks, not tests: nothing here asserts a speed.  Helpers come from bench/server/run.py.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "server"))
import run as srv

APP = os.path.join(os.path.dirname(HERE), "server", "app.py")
KEEP = "120"        # idle keep-alive limit for the idle test (seconds), same for every server


def servers() -> list[srv.Server]:
    py = sys.executable
    js = [py, "-m", "jailserve", "--master", "--processes", "1", "--disable-logging",
          "--wsgi-file", APP, "--socket-timeout", KEEP]
    uw = [shutil.which("uwsgi") or "uwsgi", "--master", "--processes", "1", "--disable-logging",
          "--wsgi-file", APP, "--need-app", "--socket-timeout", KEEP]
    out = []
    p = srv.free_port()
    out.append(srv.Server("jailserve async=100 greenlet",
                          [js + ["--http11-socket", f"127.0.0.1:{p}", "--async", "100", "--greenlet"]], p))
    p = srv.free_port()
    out.append(srv.Server("jailserve sync (reference)", [js + ["--http11-socket", f"127.0.0.1:{p}"]], p))
    p = srv.free_port()
    # --http11-socket under --gevent serves two requests and then hangs (wrk: 2 requests in
    # 1 s), so uWSGI runs its http-socket: one request per connection, wrk reconnects
    out.append(srv.Server("uWSGI --gevent 100 (http-socket)",
                          [uw + ["--http-socket", f"127.0.0.1:{p}", "--gevent", "100"]], p))
    p = srv.free_port()
    out.append(srv.Server("gunicorn gevent", [[py, "-m", "gunicorn", "-w", "1", "-k", "gevent",
                                               "--worker-connections", "100", "--keep-alive", KEEP,
                                               "--chdir", os.path.dirname(APP), "-b", f"127.0.0.1:{p}",
                                               "--log-level", "warning", "app:application"]], p))
    return out


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def one_response(s: socket.socket) -> None:
    data = b""
    while b"Hello, World!" not in data:
        b = s.recv(65536)
        if not b:
            raise ConnectionError("closed")
        data += b


def new_conn_latency(port: int, n: int = 50) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(REQ)
                one_response(s)
        except OSError:
            out.append(float("inf"))          # no answer within 5 s
            if len(out) >= 3 and all(x == float("inf") for x in out[-3:]):
                break
            continue
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def idle_test(server: srv.Server, procs, n: int) -> dict:
    """n connections held open: after one request where the server keeps them (keep-alive),
    else (uWSGI's http-socket closes after each response) open with no request sent."""
    keeps = "http-socket" not in server.name
    pids = [p for proc in procs for p in srv.tree(proc.pid)]
    base_lat = new_conn_latency(server.port)
    rss0 = rss_kib(pids)
    held, failed = [], 0
    t0 = time.monotonic()
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if keeps:
                s.sendall(REQ)
                one_response(s)
            held.append(s)
        except OSError:
            failed += 1
            if failed >= 3:
                break               # the server takes no more: report how many it held
    open_s = time.monotonic() - t0
    time.sleep(1.0)
    pids = [p for proc in procs for p in srv.tree(proc.pid)]
    rss1 = rss_kib(pids)
    lat = new_conn_latency(server.port)
    alive = 0
    for s in held[:: max(1, len(held) // 200)] if keeps else ():   # a sample still works
        try:
            s.sendall(REQ)
            one_response(s)
            alive += 1
        except OSError:
            pass
    for s in held:
        s.close()
    return {"idle": len(held), "after_request": keeps, "failed": failed, "open_s": round(open_s, 2),
            "rss_before_kib": rss0, "rss_with_idle_kib": rss1,
            "rss_per_idle_bytes": round((rss1 - rss0) * 1024 / max(len(held), 1)),
            "new_conn_ms_median_without": round(statistics.median(base_lat), 3),
            "new_conn_ms_median_with": round(statistics.median(lat), 3),
            "new_conn_ms_max_with": round(max(lat), 3),
            "idle_sample_alive": alive}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--only", default="")
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))     # children inherit it
    load = srv.LOADS["keep-alive GET hello"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for server in servers():
            if args.only and not any(w.lower() in server.name.lower() for w in args.only.split(",")):
                continue
            procs = srv.start(server, tmp)
            try:
                r = srv.measure(server, procs, load, args.duration, args.connections)
                if args.idle and "reference" not in server.name:
                    r["idle_test"] = idle_test(server, procs, args.idle)
                results[server.name] = r
                print(server.name, json.dumps(r), flush=True)
            finally:
                srv.stop(procs)
    path = os.path.join(HERE, "results.json")
    if args.only and os.path.exists(path):          # a partial run updates its rows only
        with open(path) as f:
            results = {**json.load(f).get("results", {}), **results}
    with open(path, "w") as f:
        json.dump({"versions": srv.versions(), "connections": args.connections,
                   "duration": args.duration, "results": results}, f, indent=1)
    print()
    print("| server | req/s | p99 ms | server CPU µs/req | idle conns | RSS growth | B/idle conn | new conn ms (median, without → with idle) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        it = r.get("idle_test")
        idle = (f"{it['idle']} | {(it['rss_with_idle_kib'] - it['rss_before_kib']) / 1024:.1f} MiB | "
                f"{it['rss_per_idle_bytes']} | {it['new_conn_ms_median_without']} → {it['new_conn_ms_median_with']}"
                if it else "– | – | – | –")
        print(f"| {name} | {r['rps']:.0f} | {r['p99_ms']} | {r['cpu_us_per_req']:.1f} | {idle} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
