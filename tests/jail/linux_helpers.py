"""Helpers for the Linux jail tests: run a real jail whose master runs a small Python body,
talk to it over pipes, and look at it from outside (ip, ipcs, /proc, the registry).

Every jail is made in a forked child of pytest (that child becomes the keeper), so pytest
itself never enters a namespace.  Network jails are made inside a throwaway network
namespace (`ip netns add`) that stands in for the host.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import select
import signal
import struct
import subprocess
import traceback

from jailserve import _jail
from jailserve.jail import linux
from jailserve.jail.spec import JailSpec, JailParam

WAIT = 30.0          # liveness guard only: a read that gets nothing for this long fails the test


def make_spec(root=None, hostname="", name=None, ip4=(), ip6=(), params=(), **fields) -> JailSpec:
    """A JailSpec as build_spec would make it for `jail = ROOT HOSTNAME NAME` (+ jail-ip4/6),
    with jail2-style parameters given as {key: value}."""
    ip4 = tuple(ipaddress.IPv4Address(a) for a in ip4)
    ip6 = tuple(ipaddress.IPv6Address(a) for a in ip6)
    params = tuple(JailParam(k, v, None) for k, v in dict(params).items())
    fields.setdefault("ip4_mode", "new" if ip4 else "disable")
    fields.setdefault("ip6_mode", "new" if ip6 else "disable")
    return JailSpec(source="jail" if root is not None or fields.get("attach") is None else None,
                    root=str(root) if root is not None else None, hostname=hostname, name=name,
                    ip4=ip4, ip6=ip6, params=params, **fields)


def attach_spec(target: str, jidfile=None) -> JailSpec:
    return JailSpec(source=None, root=None, hostname=None, name=None, attach=target, jidfile=jidfile)


def send_msg(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    os.write(fd, struct.pack("=I", len(data)) + data)


def _read_exact(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], WAIT)
        assert ready, "the jail did not answer"
        chunk = os.read(fd, n - len(out))
        assert chunk, "the jail closed its pipe without answering"
        out += chunk
    return out


def recv_msg(fd: int):
    (n,) = struct.unpack("=I", _read_exact(fd, 4))
    return json.loads(_read_exact(fd, n))


class Inside:
    """What a body running as the jail's master gets: send facts out, wait for commands."""

    def __init__(self, out_fd: int, in_fd: int) -> None:
        self.out_fd, self.in_fd = out_fd, in_fd

    def send(self, obj) -> None:
        send_msg(self.out_fd, obj)

    def recv(self):
        return recv_msg(self.in_fd)


@dataclasses.dataclass
class Jail:
    """A jail made by a forked keeper; the test talks to the body in its master."""

    keeper: int
    out_r: int
    in_w: int
    status: int | None = None

    def recv(self):
        return recv_msg(self.out_r)

    def send(self, obj) -> None:
        send_msg(self.in_w, obj)

    def wait(self) -> int:
        """The keeper's exit code (it is the jail's status)."""
        if self.status is None:
            _, st = os.waitpid(self.keeper, 0)
            self.status = os.waitstatus_to_exitcode(st)
        return self.status

    def close(self) -> None:
        """Kill what is left (the keeper first: its pdeathsig takes a non-persistent jail
        with it) and reap; the caller then checks nothing stayed."""
        if self.status is None:
            try:
                os.kill(self.keeper, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()
        for fd in (self.out_r, self.in_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _child(enter, body) -> None:
    """Runs in the forked keeper-to-be: enter (create or attach), then the body as master."""
    code = 70
    try:
        enter()
        code = body() or 0
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        try:
            traceback.print_exc()
        finally:
            code = 71
    os._exit(code)


def start(spec, body, netns: str | None = None, attach: bool = False) -> Jail:
    """Fork a keeper that makes (or attaches to) the jail of `spec`; in the jail's master run
    body(inside) and exit with its return value."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_r), os.close(in_w)
        inside = Inside(out_w, in_r)

        def enter():
            if netns:
                fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
                _jail.setns(fd, _jail.NS_CONSTANTS["CLONE_NEWNET"])
                os.close(fd)
            (linux.attach if attach else linux.create)(spec)

        _child(enter, lambda: body(inside))
    os.close(out_w), os.close(in_r)
    return Jail(pid, out_r, in_w)


# ---------------------------------------------------------------------------------------
# the outside view


@contextlib.contextmanager
def throwaway_netns(ns: str):
    """A named network namespace standing in for the host (lo up), deleted afterwards."""
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)



def sh(cmd: str, netns: str | None = None) -> str:
    if netns:
        cmd = f"ip netns exec {netns} sh -c '{cmd}'"
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=True).stdout


def pidns_members(pidns: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/pid") == pidns:
                    out.append(int(d))
            except OSError:
                pass
    return out


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def ns_inodes(pid="self") -> dict[str, str]:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("mnt", "uts", "ipc", "pid", "net")}


def registry_names() -> list[str]:
    try:
        return sorted(n for n in os.listdir(linux.REGISTRY_DIR) if not n.startswith("."))
    except FileNotFoundError:
        return []


def host_mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def wait_until(predicate, what: str) -> None:
    """Poll for something the kernel does asynchronously (a netns freed after its last
    process); fails only if it never happens (a liveness guard, not a timing check)."""
    import time
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)
