"""The jail's network set-up through jailserve's own rtnetlink encoder vs pyroute2.

    python bench/jail/bench_netlink.py [--runs 100]

Each run does what the keeper and the jail's init do for one jail with one IPv4 and one
IPv6 address: a veth pair with the peer in another netns, the host end's gateway addresses,
rp_filter, link up, two host routes; inside: lo up, the jail end's addresses and default
routes; then the pair is deleted.  Everything happens in throwaway network namespaces
(`unshare -n` children), 198.18.0.0/15 and fd00::/8 only.

Also measured: the import time of each module in a fresh interpreter, and the memory an
import adds (Private+Shared RSS of a child that imported it, from /proc/self/smaps_rollup).
pyroute2 is not a jailserve dependency; install it to run that half (pip install pyroute2).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from jailserve import _jail  # noqa: E402

NEWNET = _jail.NS_CONSTANTS["CLONE_NEWNET"]
GW4, GW6 = "169.254.0.1", "fe80::1"
A4, A6 = "198.18.200.2", "fd00:200::2"


def jail_side_peer() -> tuple[int, int, int]:
    """A child in its own netns that waits; returns (pid, go_w, done_r)."""
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _jail.unshare(NEWNET)
        os.write(done_w, b"u")
        os.read(go_r, 1)
        os._exit(0)
    os.read(done_r, 1)
    return pid, go_w, done_r


def ours_host(peer: int) -> None:
    import socket
    from jailserve.jail.netlink import Netlink
    with Netlink() as nl:
        nl.add_veth("bnl0", "eth0", peer)
        i = socket.if_nametoindex("bnl0")
        nl.add_address(i, GW4)
        nl.add_address(i, GW6, 64, 253)
        with open("/proc/sys/net/ipv4/conf/bnl0/rp_filter", "w") as f:
            f.write("1\n")
        nl.link_up(i)
        nl.add_route(i, A4, prefsrc=GW4)
        nl.add_route(i, A6)


def ours_jail(peer: int) -> None:
    """The init's half, run here in the peer's netns through setns (for timing)."""
    import socket
    from jailserve.jail.netlink import Netlink
    fd = os.open(f"/proc/{peer}/ns/net", os.O_RDONLY)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    _jail.setns(fd, NEWNET)
    try:
        with Netlink() as nl:
            nl.link_up(socket.if_nametoindex("lo"))
            j = socket.if_nametoindex("eth0")
            nl.link_up(j, no_ipv6_autoconf=True)
            nl.add_address(j, A4)
            nl.add_address(j, A6)
            nl.add_route(j, GW4)
            nl.add_route(j, None, GW4)
            nl.add_route(j, None, GW6, family=socket.AF_INET6)
    finally:
        _jail.setns(own, NEWNET)
        os.close(fd), os.close(own)


def ours_delete() -> None:
    from jailserve.jail.netlink import Netlink
    with Netlink() as nl:
        nl.delete_link("bnl0")


def pyroute2_host(peer: int) -> None:
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        ip.link("add", ifname="bnl0", kind="veth", peer={"ifname": "eth0", "net_ns_pid": peer})
        i = ip.link_lookup(ifname="bnl0")[0]
        ip.addr("add", index=i, address=GW4, prefixlen=32)
        ip.addr("add", index=i, address=GW6, prefixlen=64, flags=0x02)
        with open("/proc/sys/net/ipv4/conf/bnl0/rp_filter", "w") as f:
            f.write("1\n")
        ip.link("set", index=i, state="up")
        ip.route("add", dst=f"{A4}/32", oif=i, prefsrc=GW4, scope=253)
        ip.route("add", dst=f"{A6}/128", oif=i)


def pyroute2_jail(peer: int) -> None:
    from pyroute2 import IPRoute
    with IPRoute(netns=f"/proc/{peer}/ns/net", flags=0) as ip:
        ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        j = ip.link_lookup(ifname="eth0")[0]
        ip.link("set", index=j, state="up")
        ip.addr("add", index=j, address=A4, prefixlen=32)
        ip.addr("add", index=j, address=A6, prefixlen=128, flags=0x02)
        ip.route("add", dst=f"{GW4}/32", oif=j, scope=253)
        ip.route("add", dst="0.0.0.0/0", gateway=GW4, oif=j)
        ip.route("add", dst="::/0", gateway=GW6, oif=j, family=10)


def pyroute2_delete() -> None:
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        ip.link("del", index=ip.link_lookup(ifname="bnl0")[0])


def one_run(host, jail, delete) -> float:
    peer, go_w, done_r = jail_side_peer()
    t0 = time.perf_counter()
    host(peer)
    jail(peer)
    elapsed = time.perf_counter() - t0
    delete()
    os.write(go_w, b"g")
    os.waitpid(peer, 0)
    os.close(go_w), os.close(done_r)
    return elapsed


def import_cost(module: str) -> tuple[float, float]:
    """(ms to import in a fresh interpreter that has jailserve.jail already, MB of RSS the
    import adds): the marginal cost for a process that is about to make a jail."""
    code = ("import time, os, jailserve.jail\n"
            "def rss():\n"
            "    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])\n"
            f"r0 = rss(); t = time.perf_counter(); import {module}\n"
            "print((time.perf_counter() - t) * 1000, (rss() - r0) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(HERE))}).stdout
    ms, mb = out.split()
    return float(ms), float(mb)


def in_fresh_netns(fn):
    """Run fn() in a forked child inside a new netns (the stand-in host); return its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _jail.unshare(NEWNET)
        os.write(w, repr(fn()).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return eval(data)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args()
    rows = [("jailserve.jail.netlink", ours_host, ours_jail, ours_delete)]
    try:
        import pyroute2  # noqa: F401
        rows.append(("pyroute2", pyroute2_host, pyroute2_jail, pyroute2_delete))
    except ImportError:
        print("pyroute2 not installed: its row is skipped")
    print(f"{'method':<24} {'import ms':>9} {'import MB':>9} {'setup median ms':>16} {'p95 ms':>7}")
    for label, host, jail, delete in rows:
        times = in_fresh_netns(lambda: [one_run(host, jail, delete) for _ in range(args.runs)])
        ms, mb = import_cost("jailserve.jail.netlink" if label.startswith("jailserve") else "pyroute2")
        print(f"{label:<24} {ms:9.1f} {mb:9.1f} {statistics.median(times) * 1000:16.2f} {pct(times, 95) * 1000:7.2f}")


if __name__ == "__main__":
    main()
