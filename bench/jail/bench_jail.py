"""What a Linux jail costs: start-up time and memory, against the same thing without a jail.

    python bench/jail/bench_jail.py [--runs 50] [--hold 20] [--server 10]

1. create(): from "fork the process that will make the jail" to "the master inside says it
   is running", one jail after another (each torn down before the next): bare (a plain
   fork), a jail with loopback only, a jail with one IPv4 + one IPv6 address (veth).
2. memory: --hold jails kept alive at once; PSS (proportional set size, so the pages the
   keeper, init and master still share with their parent count once) of all the processes
   of each, per jail, against a bare forked child.
3. --server N: `python -m jailserve` serving a WSGI app, bare vs jailed (loopback-only
   jail and veth jail), from exec to the first HTTP 200; and the PSS of all its processes.

Network jails run in a throwaway netns (unshare -n child), 198.18.0.0/15 and fd00::/8 only.
Needs root.  Numbers vary with the machine's load; compare rows of one run.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from jailserve import _jail  # noqa: E402
from jailserve.jail import linux  # noqa: E402
from jailserve.jail.netlink import Netlink  # noqa: E402
from jailserve.jail.spec import JailSpec  # noqa: E402


def spec_for(root: str, n: int, net: bool) -> JailSpec:
    ip4 = (ipaddress.IPv4Address(f"198.18.{100 + n // 250}.{n % 250 + 2}"),) if net else ()
    ip6 = (ipaddress.IPv6Address(f"fd00:100::{n + 2:x}"),) if net else ()
    return JailSpec(source="jail", root=root, hostname=f"b{n}", name=f"b{os.getpid() % 10000}x{n}",
                    ip4=ip4, ip6=ip6, ip4_mode="new" if net else "disable", ip6_mode="new" if net else "disable")


def start_one(kind: str, root: str, n: int):
    """Fork; the child makes the jail (or not, for 'bare'); the master writes one byte
    when it runs and then waits for its pipe to close.  Returns (keeper pid, seconds, stop fd)."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r), os.close(stop_w)
        try:
            if kind != "bare":
                linux.create(spec_for(root, n, kind == "veth"))
            os.write(ready_w, b"r")
            os.read(stop_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w), os.close(stop_r)
    os.read(ready_r, 1)
    elapsed = time.perf_counter() - t0
    os.close(ready_r)
    return pid, elapsed, stop_w


def stop_one(pid: int, stop_w: int) -> None:
    # a byte, not EOF: the other instances forked meanwhile hold copies of this pipe
    os.write(stop_w, b"s")
    os.close(stop_w)
    os.waitpid(pid, 0)


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def tree(pid: int) -> list[int]:
    out = [pid]
    for p in out:
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def bench_create(kinds, runs: int, root: str) -> dict:
    res: dict[str, list] = {kind: [] for kind in kinds}
    for i in range(runs):                          # interleaved, as in bench_server
        for kind in kinds:
            pid, elapsed, stop_w = start_one(kind, root, i)
            res[kind].append(elapsed)
            stop_one(pid, stop_w)
    return res


def bench_memory(kinds, hold: int, root: str) -> dict:
    res = {}
    for kind in kinds:
        running = [start_one(kind, root, i) for i in range(hold)]
        time.sleep(0.2)
        per = [sum(pss_kb(p) for p in tree(pid)) for pid, _, _ in running]
        res[kind] = (statistics.mean(per), len(tree(running[0][0])))
        for pid, _, stop_w in running:
            stop_one(pid, stop_w)
    return res


def in_netns(fn):
    """fn() in a forked child in a new netns (the stand-in host); its repr() comes back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _jail.unshare(_jail.NS_CONSTANTS["CLONE_NEWNET"])
            with Netlink() as nl:
                nl.link_up(socket.if_nametoindex("lo"))
            os.write(w, repr(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 20):
        data += chunk
    os.waitpid(pid, 0)
    return eval(data)


APP = "def application(e, s):\n    s('200 OK', [('Content-Length', '2')])\n    return [b'ok']\n"


def serve_once(tmp: str, kind: str, n: int) -> tuple[float, float, int]:
    """exec python -m jailserve; (time to the first HTTP 200, time from its banner line to its
    first worker's line - the part the jail adds to, without the interpreter's own start,
    which the machine's load makes vary by tens of ms - and the PSS of its process tree)."""
    root = os.path.join(tmp, "root")
    addr = "127.0.0.1" if kind in ("bare", "jail") else f"198.18.150.{n % 250 + 2}"
    port = 9300 + n
    lines = ["[uwsgi]", f"http-socket = {addr}:{port}", "master = true", "processes = 1",
             "disable-logging = true"]
    if kind == "bare":
        lines += [f"chdir = {root}/app", "wsgi-file = app.py"]
    else:
        lines += [f"jail = {root} srv{n} srv{os.getpid() % 10000}x{n}", "chdir = /app", "wsgi-file = app.py"]
        if kind == "veth":
            lines.append(f"jail-ip4 = {addr}")
    ini = os.path.join(tmp, f"{kind}{n}.ini")
    with open(ini, "w") as f:
        f.write("\n".join(lines) + "\n")
    # with .pyc files, as in production (this environment may say PYTHONDONTWRITEBYTECODE;
    # then every start compiles every module, ~10 ms for jail/linux.py alone)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "jailserve", ini], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**env, "PYTHONPATH": REPO})
    try:
        inner = _banner_to_worker(proc)
        elapsed = _first_200(proc, kind, addr, port, t0)
        time.sleep(0.1)
        pss = sum(pss_kb(p) for p in tree(proc.pid))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate()
    return elapsed, inner, pss


def _banner_to_worker(proc) -> float:
    start = None
    for line in proc.stdout:
        if b"detected binary path" in line:
            start = time.perf_counter()
        elif b"spawned jailserve worker" in line and start is not None:
            return time.perf_counter() - start
    raise RuntimeError(f"server exited with {proc.wait()}")


def _first_200(proc, kind, addr, port, t0) -> float:
    """A loopback-only jail is reached from inside its netns (it has no veth)."""
    target = None
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if kind == "jail":
                target = target or _jail_init(proc.pid)
                if target is None:
                    time.sleep(0.001)
                    continue
                fd = os.open(f"/proc/{target}/ns/net", os.O_RDONLY)
                own = os.open("/proc/self/ns/net", os.O_RDONLY)
                _jail.setns(fd, _jail.NS_CONSTANTS["CLONE_NEWNET"])
                try:
                    sock = socket.create_connection((addr, port), timeout=0.05)
                finally:
                    _jail.setns(own, _jail.NS_CONSTANTS["CLONE_NEWNET"])
                    os.close(fd), os.close(own)
            else:
                # short: a SYN sent before the jail's link is up is dropped, and TCP would
                # only resend it after its 1 s initial timeout
                sock = socket.create_connection((addr, port), timeout=0.05)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            head = sock.recv(64)
            sock.close()
            if b" 200 " not in head:
                raise RuntimeError(f"unexpected answer {head!r}")
            return time.perf_counter() - t0
        except OSError:
            time.sleep(0.001)


def _jail_init(keeper: int) -> int | None:
    kids = tree(keeper)[1:]
    return kids[0] if kids else None


def bench_server(runs: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="jsbench")
    os.makedirs(os.path.join(tmp, "root", "app"))
    with open(os.path.join(tmp, "root", "app", "app.py"), "w") as f:
        f.write(APP)
    try:
        kinds = ("bare", "jail", "veth")
        for kind in kinds:
            serve_once(tmp, kind, runs)            # warm-up: writes the .pyc files
        rows: dict[str, list] = {kind: [] for kind in kinds}
        for i in range(runs):                      # interleaved, so a change in the machine's load hits all three
            for kind in kinds:
                rows[kind].append(serve_once(tmp, kind, i))
        return {kind: ([r[0] for r in rs], [r[1] for r in rs], statistics.mean(r[2] for r in rs))
                for kind, rs in rows.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--hold", type=int, default=20)
    ap.add_argument("--server", type=int, default=0)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="jsbench-root")
    try:
        kinds = ("bare", "jail", "veth")
        created = in_netns(lambda: bench_create(kinds, args.runs, root))
        memory = in_netns(lambda: bench_memory(kinds, args.hold, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(created["bare"])
    print(f"create() to a running master, {args.runs} runs each; memory with {args.hold} held at once")
    print(f"{'kind':<6} {'median ms':>10} {'p95 ms':>8} {'added ms':>9} {'procs':>6} {'PSS MB/instance':>16}")
    for kind in kinds:
        t = created[kind]
        mem, procs = memory[kind]
        print(f"{kind:<6} {statistics.median(t) * 1000:10.2f} {pct(t, 95) * 1000:8.2f} "
              f"{(statistics.median(t) - base) * 1000:9.2f} {procs:6d} {mem / 1024:16.2f}")
    if args.server:
        res = in_netns(lambda: bench_server(args.server))
        base = statistics.median(res["bare"][0])
        inner_base = statistics.median(res["bare"][1])
        print(f"\npython -m jailserve, {args.server} runs each: exec to first HTTP 200; banner line to first worker line")
        print(f"{'kind':<6} {'median ms':>10} {'p95 ms':>8} {'added ms':>9} {'banner->worker ms':>18} "
              f"{'added ms':>9} {'PSS MB/instance':>16}")
        for kind, (t, inner, pss) in res.items():
            print(f"{kind:<6} {statistics.median(t) * 1000:10.2f} {pct(t, 95) * 1000:8.2f} "
                  f"{(statistics.median(t) - base) * 1000:9.2f} {statistics.median(inner) * 1000:18.2f} "
                  f"{(statistics.median(inner) - inner_base) * 1000:9.2f} {pss / 1024:16.2f}")


if __name__ == "__main__":
    main()
