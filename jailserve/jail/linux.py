"""The Linux jail: a JailSpec made from namespaces (LINUX_JAILS.md has the measured sequence).

Processes (DESIGN §2).  create() runs in the process P that called it:

  P  unshare(CLONE_NEWPID), fork, and P becomes the KEEPER: it stays in the host's
     namespaces, makes the host end of the network, writes the jidfile and the registry
     entry, relays signals to the jail, waits, cleans up and exits with the jail's status.
     It never returns from create().
  I  the child: PID 1 of the new pid namespace.  It unshares mount, UTS, IPC and network
     namespaces, builds the root and enters it with pivot_root, limits its capabilities,
     then forks the master and becomes the jail's init: a C loop (_jail.supervise) that
     reaps, relays signals to the master, and exits with the master's status when no
     process is left in the jail (the kernel kills every member when PID 1 exits, so "the
     jail dies with its last process" is init's job).  With `persist` it stays, reaping,
     until SIGTERM/SIGINT/SIGQUIT arrive while the master is gone.
  M  the master: pid 2 inside; create() returns here and the start-up goes on.

All three are forks of the process that was already initialised (no new interpreter), and
the keeper and init only run the C loop after the fork, so their pages stay shared.

The root (built in I, in its own mount namespace, after `/` is made MS_REC|MS_PRIVATE so
nothing propagates back to the host):
  * a tmpfs is mounted on ROOT and ROOT's own entries are bound back into it, so that the
    mount points below (and the directories for kept paths) never have to be made in the
    user's tree; the tmpfs is made read-only at the end;
  * KEPT PATHS, bound read-only (nosuid, nodev, recursively) at the same path inside: the
    interpreter (sys.base_prefix, sys.prefix = the venv), every directory on sys.path, the
    jailserve package, and - when ROOT has no /usr of its own - the host's /usr and its
    merged-/usr links (/bin /lib /lib64 /sbin), because the interpreter's shared libraries
    live there; and the app's chdir, pythonpath, wsgi-file directory and virtualenv when
    they exist on the host but not in ROOT.  `jail-keep-mount = PATH[:DEST]` adds paths;
    `jail-keep-mount = none` switches the automatic set off (then ROOT must hold an
    interpreter and jailserve at the same paths).  A kept path whose parent directory
    exists in ROOT gets its mount point created in ROOT itself (an empty directory that
    stays).  An interpreter that lives in /usr (sys.base_prefix = /usr) keeps the host's
    /usr even over ROOT's own.
  * /etc: ROOT's own if it has one, otherwise a synthesized one (passwd, group, hosts,
    nsswitch.conf, resolv.conf), never the host's;
  * /tmp: ROOT's own if it has one, otherwise a private tmpfs;
  * /dev: a tmpfs with null, zero, full, random, urandom, tty, a devpts `newinstance`
    (ptmx -> pts/ptmx) and a private /dev/shm (POSIX semaphores and shm live there);
  * /proc: fresh, for the new pid namespace; /proc/sys, sysrq-trigger, irq, bus and fs
    read-only (root keeps DAC_OVERRIDE, and those files change the whole machine);
  * pivot_root(".", ".") and umount2(".", MNT_DETACH): the host's tree is gone from the
    namespace, so the chroot escape does not apply.

Network: no addresses -> a new network namespace with loopback only (`ip4`/`ip6` =
inherit keeps the host's).  With jail-ip4/jail-ip6: a veth pair, the host end named
js-NAME (js-JID when the name does not fit in an interface name), holding 169.254.0.1/32
and fe80::1/64 as the jail's gateway (link-local, so they cannot clash with a real
network) and a /32 or /128 route to each jail address; the jail end, eth0, holds exactly
the jail's addresses (no kernel fe80::, IPv6 without DAD) and default routes via the
gateway.  rp_filter=1 on the host end drops packets from a source the jail does not own.

Root inside is a jail's root: before create() returns in the master the capability
bounding, permitted, effective and inheritable sets are cut to CHOWN, DAC_OVERRIDE,
DAC_READ_SEARCH, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE,
IPC_OWNER, SYS_CHROOT (+ SYS_ADMIN for allow.mount with enforce_statfs < 2 or an explicit
allow.set_hostname, + NET_RAW for allow.raw_sockets), and no_new_privs is set; with
children.max = 0 (the default) a seccomp filter refuses user namespaces, the one kind
still possible without CAP_SYS_ADMIN.  The init keeps CAP_KILL only.

Identity: the jid is the host pid of the jail's init (what /proc/JID/ns/* and kill need).
The jidfile holds it as decimal + newline, written by the keeper (a host path) and removed
when the jail ends (a pid, unlike a FreeBSD jid, is soon reused).  The registry is
/run/jailserve/NAME/jail.json (NAME = the jid for an unnamed jail), written by the keeper
and removed by it; an entry whose init is gone (the keeper was SIGKILLed) is removed by
the next create/attach/list_jails that meets it.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field

from .. import _jail
from .netlink import Netlink

REGISTRY_DIR = "/run/jailserve"
GATEWAY4 = ipaddress.IPv4Address("169.254.0.1")
GATEWAY6 = ipaddress.IPv6Address("fe80::1")
JAIL_IFNAME = "eth0"

NS = _jail.NS_CONSTANTS
MF = _jail.MOUNT_FLAGS
ALL_NS = NS["CLONE_NEWNS"] | NS["CLONE_NEWUTS"] | NS["CLONE_NEWIPC"] | NS["CLONE_NEWNET"] | NS["CLONE_NEWPID"]
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
BLOCKED = set(RELAYED) | {signal.SIGCHLD}

# linux/capability.h numbers of what a FreeBSD jail's root may still do
CAPS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
        "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13,
        "IPC_OWNER": 15, "SYS_CHROOT": 18, "SYS_ADMIN": 21}
JAIL_ROOT_CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
                  "SETUID", "SETPCAP", "NET_BIND_SERVICE", "IPC_OWNER", "SYS_CHROOT")

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
USR_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


# ---------------------------------------------------------------------------------------
# the plan: what create() will do, computed without side effects


@dataclass(frozen=True)
class Layout:
    root: str | None                 # None: no new root (jail2 without path), fresh /proc only
    hostname: str
    name: str | None
    ip4: tuple = ()
    ip6: tuple = ()
    new_net: bool = True
    new_ipc: bool = True
    persist: bool = False
    keep: tuple[tuple[str, str], ...] = ()     # (host path, path inside), read-only
    own_etc: bool = False
    own_tmp: bool = False
    caps: tuple[str, ...] = JAIL_ROOT_CAPS
    nested: bool = False             # children.max > 0: namespaces may be made inside
    jidfile: str | None = None

    @property
    def unshare_flags(self) -> int:
        flags = NS["CLONE_NEWNS"] | NS["CLONE_NEWUTS"]
        flags |= NS["CLONE_NEWIPC"] if self.new_ipc else 0
        return flags | (NS["CLONE_NEWNET"] if self.new_net else 0)

    @property
    def veth(self) -> bool:
        return bool(self.ip4 or self.ip6)

    @property
    def cap_mask(self) -> int:
        return sum(1 << CAPS[c] for c in self.caps)

    def host_ifname(self, jid: int | str) -> str:
        """The host end is named after the jail; IFNAMSIZ allows 15 bytes."""
        name = f"js-{self.name}"
        if self.name and len(name) <= 15 and self.name.isascii() and all(c.isalnum() or c in "_-" for c in self.name):
            return name
        return f"js-{jid}"


def layout(spec) -> Layout:
    persist = bool(spec.persist)
    return Layout(
        root=os.path.abspath(spec.root) if spec.root else None,
        hostname=spec.hostname or "",
        name=spec.name,
        ip4=tuple(spec.ip4),
        ip6=tuple(spec.ip6),
        new_net="inherit" not in (spec.ip4_mode, spec.ip6_mode) or bool(spec.ip4 or spec.ip6),
        new_ipc="inherit" not in (spec.sysvsem, spec.sysvshm, spec.sysvmsg),
        persist=persist,
        keep=keep_paths(spec),
        own_etc=bool(spec.root) and os.path.isdir(os.path.join(spec.root, "etc")),
        own_tmp=bool(spec.root) and os.path.isdir(os.path.join(spec.root, "tmp")),
        caps=_caps(spec),
        nested=spec.children_max > 0,
        jidfile=spec.jidfile,
    )


def _caps(spec) -> tuple[str, ...]:
    """The jail root's capabilities.  Mounting and sethostname both need CAP_SYS_ADMIN on
    Linux, which is far more than either; it is kept only when asked for: allow.mount* with
    enforce_statfs < 2 (FreeBSD needs both as well), or allow.set_hostname written out
    (FreeBSD's default-on for it is not copied: it would give every jail CAP_SYS_ADMIN)."""
    caps = list(JAIL_ROOT_CAPS)
    mount = spec.allow_mount and spec.enforce_statfs < 2       # allow.mount.<fs> needs both too
    if mount or spec.param("allow.set_hostname") is True:
        caps.append("SYS_ADMIN")
    if spec.allow_raw_sockets:
        caps.append("NET_RAW")
    return tuple(caps)


def keep_paths(spec) -> tuple[tuple[str, str], ...]:
    """(host path, path inside) pairs to bind read-only; see the module docstring."""
    words = spec.keep_mounts
    pairs: list[tuple[str, str]] = []
    if spec.root and "none" not in words:
        pairs = [(p, p) for p in auto_keep(spec.root, spec.app_paths)]
    for word in words:
        if word != "none":
            src, _, dst = word.partition(":")
            pairs.append((src, dst or src))
    return tuple(dict.fromkeys(pairs))


def auto_keep(root: str, extra=()) -> list[str]:
    import jailserve
    paths = [sys.base_prefix, sys.prefix, os.path.dirname(os.path.abspath(jailserve.__file__))]
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    # app paths (chdir, pythonpath, ...) name the jail's files first, as in uWSGI: the host's
    # directory is kept only where ROOT has nothing at that path
    paths += [p for p in extra if os.path.exists(p) and not os.path.lexists(root.rstrip("/") + p)]
    if not os.path.lexists(os.path.join(root, "usr")):
        paths += ["/usr"] + [f"/{d}" for d in USR_LINKS if os.path.lexists(f"/{d}")]
    root = os.path.realpath(root)
    paths = [os.path.realpath(p) if not os.path.islink(p) else p for p in paths]
    # a path holding ROOT (a script next to its jail root puts the parent on sys.path) or
    # inside it would show ROOT inside itself, or hide ROOT's own files: never kept
    return _outermost(p for p in paths if not _within(root, p) and not _within(p, root))


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _outermost(paths) -> list[str]:
    """Drop paths inside another one of the list (one recursive bind covers them)."""
    unique = sorted(set(os.path.normpath(p) for p in paths), key=lambda p: (len(p), p))   # parents first, stable
    out: list[str] = []
    for p in unique:
        if not any(_within(p, q) for q in out):
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------
# describe


def describe(spec) -> list[str]:
    if spec.attach is not None and not spec.creates:
        return [f"find jail {spec.attach!r} in {REGISTRY_DIR} (jid = host pid of its init)",
                "pidfd_open(jid); setns(pidfd, pid); fork; the child: setns(pidfd, mnt|uts|ipc|net); chdir /",
                "the child: capabilities, no_new_privs and children.max as recorded for that jail; continues inside",
                "this process stays outside, relays signals, waits and exits with the child's status"]
    lay = layout(spec)
    names = [n for n, bit in NS.items() if bit & lay.unshare_flags]
    lines = ["unshare(CLONE_NEWPID); fork: the child is the jail's PID 1, this process the keeper",
             f"init: unshare({'|'.join(names)}); sethostname({lay.hostname!r}); chdir /"]
    lines.append(f"keeper: register {REGISTRY_DIR}/{_quote(lay.name) if lay.name else 'JID'}/jail.json"
                 + (f"; jidfile {lay.jidfile} (host pid of the init)" if lay.jidfile else ""))
    if lay.veth:
        addrs = ", ".join(f"{a}/{a.max_prefixlen}" for a in lay.ip4 + lay.ip6)
        lines.append(f"keeper: veth {lay.host_ifname('JID')} (host: {GATEWAY4}/32, "
                     f"{GATEWAY6}/64, rp_filter) <-> {JAIL_IFNAME} in the jail: {addrs}, default via the host end")
    elif lay.new_net:
        lines.append("network: a new namespace with loopback only")
    else:
        lines.append("network: the host's (ip4/ip6 = inherit)")
    lines.append("init: fork the master (pid 2); close every inherited descriptor; keep CAP_KILL only; "
                 + ("persist: stays when no process is left" if lay.persist else "reap, relay signals, exit with the last process"))
    lines += [f"master: {line}" for line in _describe_root(lay)]
    lines.append(f"master: capabilities kept: {', '.join(lay.caps)}; no_new_privs"
                 + ("" if lay.nested else "; seccomp: no user namespaces (children.max = 0)"))
    if lay.veth:
        lines.append("keeper: a /32 or /128 route to each jail address, once the jail is up")
    lines.append("the master continues the start-up inside")
    return lines


def _describe_root(lay: Layout) -> list[str]:
    if lay.root is None:
        return ["mount / private; fresh /proc; the host's filesystem otherwise (no path given)"]
    lines = [f"mount / MS_REC|MS_PRIVATE; tmpfs on {lay.root}, its entries bound back"]
    lines += [f"keep read-only: {src}" + (f" at {dst}" if dst != src else "") for src, dst in lay.keep]
    lines.append("/etc: ROOT's own" if lay.own_etc else "/etc synthesized: passwd group hosts nsswitch.conf resolv.conf")
    lines.append("/tmp: ROOT's own" if lay.own_tmp else "/tmp: private tmpfs")
    lines.append("/dev: tmpfs with null zero full random urandom tty, devpts newinstance (ptmx), tmpfs shm")
    lines.append(f"/proc fresh ({', '.join(PROC_READONLY)} read-only)")
    lines.append(f"pivot_root {lay.root}; old root detached (umount2 MNT_DETACH); / read-only")
    return lines


# ---------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class JailInfo:
    jid: int
    name: str
    hostname: str
    root: str
    addresses: tuple[str, ...]
    processes: int                  # the jail's processes, not counting its init
    persist: bool = False
    keeper: int | None = None
    caps: int = 0
    nested: bool = False
    pidns: str = field(default="", repr=False)


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _entry_dir(name: str) -> str:
    return os.path.join(REGISTRY_DIR, _quote(name))


def _pidns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _read_entry(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "jail.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _alive(entry: dict | None) -> bool:
    """Its init still runs (same pid namespace inode: the pid was not reused), or - for an
    entry still being set up - its keeper does."""
    if not entry:
        return False
    if entry.get("jid"):
        return _pidns(entry["jid"]) == entry["pidns"]
    try:
        os.kill(entry["keeper"], 0)
        return True
    except (OSError, KeyError, TypeError):
        return False


def _reserve(name: str, entry: dict) -> str:
    """Claim a name: a complete entry is made under a dot-name and renamed into place, which
    fails while a non-empty entry of that name exists.  A dead jail's entry is removed."""
    os.makedirs(REGISTRY_DIR, mode=0o755, exist_ok=True)
    path = _entry_dir(name)
    tmp = os.path.join(REGISTRY_DIR, f".new-{os.getpid()}")
    for _ in range(2):
        os.makedirs(tmp, 0o755, exist_ok=True)
        _write_entry(tmp, entry)
        try:
            os.rename(tmp, path)
            return path
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        old = _read_entry(path)
        if _alive(old):
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(errno.EEXIST, f"jail name '{name}' is in use (jid {old.get('jid')})")
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    raise OSError(errno.EEXIST, f"jail name '{name}': could not claim {path}")


def _write_entry(path: str, entry: dict) -> None:
    tmp = os.path.join(path, ".jail.json")
    with open(tmp, "w") as f:
        json.dump(entry, f)
    os.replace(tmp, os.path.join(path, "jail.json"))


def _count_members(pidns: str) -> int:
    count = 0
    for d in os.listdir("/proc"):
        if d.isdigit() and _pidns(int(d)) == pidns:
            count += 1
    return count


def _entries():
    try:
        names = sorted(os.listdir(REGISTRY_DIR))
    except FileNotFoundError:
        return
    for quoted in names:
        if quoted.startswith("."):
            continue                                    # an entry being made (see _reserve)
        path = os.path.join(REGISTRY_DIR, quoted)
        entry = _read_entry(path)
        if entry is None:
            continue                                    # not a jail entry: never ours to remove
        if not _alive(entry):
            shutil.rmtree(path, ignore_errors=True)     # its jail died without its keeper
            continue
        if entry.get("jid"):
            yield path, entry


def list_jails() -> list[JailInfo]:
    out = []
    for _path, e in _entries():
        out.append(JailInfo(jid=e["jid"], name=e["name"], hostname=e["hostname"], root=e["root"] or "/",
                            addresses=tuple(e["ip4"] + e["ip6"]),
                            processes=max(0, _count_members(e["pidns"]) - 1),
                            persist=e["persist"], keeper=e["keeper"], caps=e["caps"], nested=e.get("nested", False),
                            pidns=e["pidns"]))
    return out


def find_jail(target: str) -> JailInfo:
    """A live jail by jid (digits) or by name."""
    for info in list_jails():
        if (target.isdigit() and info.jid == int(target)) or info.name == target:
            return info
    raise OSError(errno.ENOENT, f"no live jail '{target}' in {REGISTRY_DIR}")


def remove(target: str) -> None:
    """Remove a jail (FreeBSD's jail -r): SIGKILL to its init; the kernel kills every member
    and the keeper cleans up."""
    os.kill(find_jail(target).jid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------
# create


class _Channel:
    """Two CLOEXEC pipes between the keeper and the jail.  Messages are one byte: u (the
    init has unshared), g (the keeper's go), r (the master is ready); E, from either,
    is followed by 'errno message' and EOF."""

    def __init__(self) -> None:
        self.up_r, self.up_w = os.pipe2(os.O_CLOEXEC)        # init -> keeper
        self.down_r, self.down_w = os.pipe2(os.O_CLOEXEC)    # keeper -> init

    def as_keeper(self) -> None:
        os.close(self.up_w), os.close(self.down_r)

    def send(self, fd: int, data: bytes) -> None:
        os.write(fd, data)

    def expect(self, fd: int, byte: bytes, what: str) -> None:
        got = os.read(fd, 1)
        if got == byte:
            return
        if got == b"E":
            text = b""
            while chunk := os.read(fd, 4096):
                text += chunk
            code, _, message = text.decode(errors="replace").partition(" ")
            raise OSError(int(code or 0) or errno.EIO, message or what)
        raise OSError(errno.EIO, f"{what}: the jail's init exited")

    def close(self, *fds: int) -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _check_single_threaded() -> None:
    # unshare(CLONE_NEWNS) and setns into a mount namespace fail with EINVAL in a threaded process
    if threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1:
        raise OSError(errno.EINVAL, "a jail must be made before any thread is started")


def create(spec) -> None:
    """Make the jail; returns in the master inside it.  The keeper never returns."""
    _check_single_threaded()
    lay = layout(spec)
    reserved = _reserve(lay.name, {"keeper": os.getpid(), "jid": None}) if lay.name else None
    chan = _Channel()
    host_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)  # nothing is lost before the loops run
    sys.stdout.flush(), sys.stderr.flush()
    try:
        # init keeps CAP_KILL only: all it does is reap and kill(2)
        pid = _jail.spawn_jail(lay.unshare_flags, lay.hostname, 2 if lay.persist else 1, 1 << CAPS["KILL"],
                               host_pidns, chan.up_w, chan.down_r, chan.up_r, chan.down_w)
    except BaseException:
        os.close(host_pidns)
        chan.close(chan.up_r, chan.up_w, chan.down_r, chan.down_w)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if reserved:
            shutil.rmtree(reserved, ignore_errors=True)
        raise
    if pid == 0:
        _master_side(lay, chan, old_mask)   # the init closed the other fds before forking us
        return
    os.close(host_pidns)
    _keeper_side(lay, chan, pid, reserved, old_mask)


def _keeper_side(lay: Layout, chan: _Channel, init: int, reserved: str | None, old_mask) -> None:
    chan.as_keeper()
    state = _KeeperState(lay, init, reserved)
    try:
        chan.expect(chan.up_r, b"u", "jail set-up")
        state.register()
        if lay.veth:
            state.host_network()
        chan.send(chan.down_w, b"g")
        chan.expect(chan.up_r, b"r", "jail set-up")
        if lay.veth:
            state.host_routes()
    except BaseException:
        _kill_and_reap(init)
        state.cleanup()
        chan.close(chan.up_r, chan.down_w)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    chan.close(chan.up_r, chan.down_w)
    try:
        status = _jail.supervise(init, 0)
    except BaseException:
        _kill_and_reap(init)               # no keeper loop, no jail
        raise
    finally:
        state.cleanup()
    _exit(status)


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass


def _exit(status: int) -> None:
    """Leave without unwinding the caller's stack: the start-up code after create() belongs
    to the master, not to the keeper."""
    try:
        sys.stdout.flush(), sys.stderr.flush()
    finally:
        os._exit(status)


class _KeeperState:
    """What the keeper made on the host, so that every stop path undoes exactly that."""

    def __init__(self, lay: Layout, init: int, reserved: str | None) -> None:
        self.lay, self.init = lay, init
        self.entry_dir = reserved
        self.ifname: str | None = None
        self.jidfile: str | None = None

    def register(self) -> None:
        lay, jid = self.lay, self.init
        entry = {"jid": jid, "name": lay.name or str(jid), "hostname": lay.hostname, "root": lay.root,
                 "ip4": [str(a) for a in lay.ip4], "ip6": [str(a) for a in lay.ip6], "persist": lay.persist,
                 "keeper": os.getpid(), "caps": lay.cap_mask, "nested": lay.nested, "pidns": _pidns(jid)}
        if self.entry_dir is None:
            self.entry_dir = _reserve(entry["name"], entry)
        else:
            _write_entry(self.entry_dir, entry)
        if lay.jidfile:
            self.jidfile = lay.jidfile
            _write_jidfile(lay.jidfile, jid)

    def host_network(self) -> None:
        lay = self.lay
        name = lay.host_ifname(self.init)
        with Netlink() as nl:
            nl.add_veth(name, JAIL_IFNAME, self.init)
            self.ifname = name
            index = socket.if_nametoindex(name)
            if lay.ip4:
                nl.add_address(index, GATEWAY4)
            if lay.ip6:
                nl.add_address(index, GATEWAY6, 64, 253)
            _set_rp_filter(name)
            nl.link_up(index)

    def host_routes(self) -> None:
        """The routes to the jail's addresses, once its end is configured: a packet sent to
        it earlier would leave an unanswered ARP/NDP entry that the kernel retries only
        after a second, and every connection waits for that."""
        index = socket.if_nametoindex(self.ifname)
        with Netlink() as nl:
            for addr in self.lay.ip4:
                nl.add_route(index, addr, prefsrc=GATEWAY4)
            for addr in self.lay.ip6:
                nl.add_route(index, addr)

    def cleanup(self) -> None:
        # The veth would go with the jail's netns, but some ms later and asynchronously;
        # deleting the host end now makes "nothing left" true when the keeper exits.
        if self.ifname:
            with Netlink() as nl:
                nl.delete_link(self.ifname)
        if self.jidfile:
            _unlink(self.jidfile)
        if self.entry_dir:
            shutil.rmtree(self.entry_dir, ignore_errors=True)


def _set_rp_filter(ifname: str) -> None:
    with open(f"/proc/sys/net/ipv4/conf/{ifname}/rp_filter", "w") as f:
        f.write("1\n")


def _write_jidfile(path: str, jid: int) -> None:
    try:
        with open(path, "w") as f:
            f.write(f"{jid}\n")
    except OSError as exc:
        raise OSError(exc.errno, f"jidfile {path}: {exc.strerror}") from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------
# inside: the jail's PID 1, then the master


def _master_side(lay: Layout, chan: _Channel, old_mask) -> None:
    """pid 2, in the new namespaces: the jail's network and root (pivot_root moves the
    init's root with it), then the jail root's limits; create() returns here."""
    try:
        if lay.new_net:
            _jail_network(lay)
        _enter_root(lay)
        _limit(lay.cap_mask, lay.nested)
        chan.send(chan.up_w, b"r")
    except BaseException as exc:
        _report(chan, exc)
        os._exit(1)
    chan.close(chan.up_w, chan.down_r)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _limit(cap_mask: int, nested: bool) -> None:
    """What makes root inside a jail's root: capabilities, no_new_privs, and - unless
    children.max > 0 - no user namespace (the one namespace left to make without
    CAP_SYS_ADMIN, and a way to get every capability back inside it)."""
    _jail.limit_caps(cap_mask)
    _jail.set_no_new_privs()
    if not nested:
        _jail.forbid_user_namespaces()


def _report(chan: _Channel, exc: BaseException) -> None:
    """Hand a set-up failure to the keeper, which raises it as OSError in create()."""
    code = getattr(exc, "errno", None) or errno.EIO
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    try:
        os.write(chan.up_w, f"E{code} jail set-up: {text}".encode())
    except OSError:
        pass


def _jail_network(lay: Layout) -> None:
    with Netlink() as nl:
        nl.link_up(socket.if_nametoindex("lo"))
        if not lay.veth:
            return
        index = socket.if_nametoindex(JAIL_IFNAME)
        nl.link_up(index, no_ipv6_autoconf=True)
        for addr in lay.ip4 + lay.ip6:
            nl.add_address(index, addr)
        if lay.ip4:
            nl.add_route(index, GATEWAY4)
            nl.add_route(index, None, GATEWAY4)
        if lay.ip6:
            nl.add_route(index, None, GATEWAY6, family=socket.AF_INET6)


# ---------------------------------------------------------------------------------------
# the root


def _enter_root(lay: Layout) -> None:
    _jail.mount(None, "/", None, MF["MS_REC"] | MF["MS_PRIVATE"])   # no mount event reaches the host
    if lay.root is None:
        _mount_proc("/proc")
        return
    old_umask = os.umask(0)
    try:
        _build_root(lay)
    finally:
        os.umask(old_umask)
    os.chdir(lay.root)
    _jail.pivot_root(".", ".")              # the old root is stacked under the new one ...
    _jail.umount2(".", MF["MNT_DETACH"])    # ... and detached: the host tree leaves the namespace
    os.chdir("/")
    _remount_ro("/")
    _close_directory_fds()


def _build_root(lay: Layout) -> None:
    root = lay.root
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        entries = [(e.name, e.is_symlink(), e.is_dir(follow_symlinks=False)) for e in os.scandir(root)]
        # ROOT becomes a mount point (pivot_root needs one) holding only what we put there
        _jail.mount("jailroot", root, "tmpfs", MF["MS_NOSUID"] | MF["MS_NODEV"], "mode=0755")
        for name, is_link, is_dir in entries:
            if name in ("dev", "proc"):
                continue
            src, dst = f"/proc/self/fd/{rootfd}/{name}", os.path.join(root, name)
            if is_link:
                os.symlink(os.readlink(src), dst)
            else:
                _mount_point(dst, is_dir)
                _jail.mount(src, dst, None, MF["MS_BIND"] | MF["MS_REC"])
    finally:
        os.close(rootfd)
    if not lay.own_etc:
        _write_etc(os.path.join(root, "etc"), lay)
    if not lay.own_tmp:
        os.makedirs(os.path.join(root, "tmp"), 0o1777, exist_ok=True)
        _jail.mount("tmpfs", os.path.join(root, "tmp"), "tmpfs", MF["MS_NOSUID"] | MF["MS_NODEV"], "mode=1777")
    for src, dst in sorted(lay.keep, key=lambda p: p[1].count("/")):   # parents before children
        _keep(src, root + dst)
    _make_dev(os.path.join(root, "dev"))
    _mount_proc(os.path.join(root, "proc"))


def _mount_point(path: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(path, 0o755, exist_ok=True)
    elif not os.path.lexists(path):
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _keep(src: str, dst: str) -> None:
    """src from the host at dst, read-only; a symlink is copied as a symlink."""
    if os.path.islink(src):
        if not os.path.lexists(dst):
            os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
            os.symlink(os.readlink(src), dst)
        return
    if not os.path.exists(src):
        raise OSError(errno.ENOENT, f"kept path {src} does not exist")
    _mount_point(dst, os.path.isdir(src))
    _jail.mount(src, dst, None, MF["MS_BIND"] | MF["MS_REC"])
    _remount_ro(dst, recursive=True)


def _remount_ro(path: str, recursive: bool = False) -> None:
    """A bind ignores MS_RDONLY on its first call; and a plain remount makes only the top
    mount read-only, so recursive binds use mount_setattr(AT_RECURSIVE) (Linux >= 5.12)."""
    if recursive:
        attrs = _jail.MOUNT_ATTR_RDONLY | _jail.MOUNT_ATTR_NOSUID | _jail.MOUNT_ATTR_NODEV
        try:
            _jail.mount_setattr(path, MF["AT_RECURSIVE"], attrs)
            return
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
    _jail.mount(None, path, None, MF["MS_REMOUNT"] | MF["MS_BIND"] | MF["MS_RDONLY"] | MF["MS_NOSUID"] | MF["MS_NODEV"])


def _make_dev(dev: str) -> None:
    os.makedirs(dev, 0o755, exist_ok=True)
    _jail.mount("tmpfs", dev, "tmpfs", MF["MS_NOSUID"] | MF["MS_NOEXEC"], "mode=0755")
    for name, major, minor in DEVICES:
        os.mknod(os.path.join(dev, name), stat.S_IFCHR | 0o666, os.makedev(major, minor))
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    for sub in ("pts", "shm"):
        os.mkdir(os.path.join(dev, sub), 0o755)
    # newinstance: the jail's own pty numbering, not the host's ptys
    _jail.mount("devpts", os.path.join(dev, "pts"), "devpts", MF["MS_NOSUID"] | MF["MS_NOEXEC"],
                "newinstance,ptmxmode=0666,mode=0620")
    _jail.mount("shm", os.path.join(dev, "shm"), "tmpfs", MF["MS_NOSUID"] | MF["MS_NODEV"], "mode=1777")


def _mount_proc(proc: str) -> None:
    # a proc mount shows the pid namespace of its mounter: we are PID 1 of the jail's
    os.makedirs(proc, 0o555, exist_ok=True)
    _jail.mount("proc", proc, "proc", MF["MS_NOSUID"] | MF["MS_NODEV"] | MF["MS_NOEXEC"])
    for sub in PROC_READONLY:
        path = os.path.join(proc, sub)
        if os.path.exists(path):
            _jail.mount(path, path, None, MF["MS_BIND"] | MF["MS_REC"])
            _remount_ro(path)


def _write_etc(etc: str, lay: Layout) -> None:
    # written into the root's tmpfs, which becomes read-only with the rest of it
    os.makedirs(etc, 0o755, exist_ok=True)
    for name, text in etc_files(lay).items():
        with open(os.path.join(etc, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(etc, name), 0o644)


def etc_files(lay: Layout) -> dict[str, str]:
    """The synthesized /etc: enough for getpwnam/getgrnam of root and nobody, localhost and
    the jail's own name; nothing copied from the host but its non-loopback nameservers."""
    names = " ".join(n for n in (lay.hostname, lay.hostname.split(".")[0]) if n)
    mine = [str(a) for a in lay.ip4 + lay.ip6] or ["127.0.1.1"]
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if names:
        hosts += "".join(f"{a}\t{names}\n" for a in mine)
    return {
        "passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": "root:x:0:\nnogroup:x:65534:\n",
        "hosts": hosts,
        "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
                         "protocols: files\nservices: files\n",
        "resolv.conf": _resolv_conf(),
    }


def _resolv_conf() -> str:
    lines = ["# written by jailserve for the jail"]
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver" and not _is_loopback(words[1]):
                    lines.append(f"nameserver {words[1]}")
    except OSError:
        pass
    return "\n".join(lines) + "\n"


def _is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.split("%")[0]).is_loopback
    except ValueError:
        return True


def _close_directory_fds() -> None:
    """An open directory from before the pivot is a way back to the host's tree (fchdir);
    none may cross into the jail."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# attach


def attach(spec) -> None:
    """Enter the live jail spec.attach (jid or name); returns in a child inside it.  This
    process stays in the host's namespaces, relays signals, waits and exits with the
    child's status."""
    _check_single_threaded()
    info = find_jail(spec.attach)
    pidfd = os.pidfd_open(info.jid)
    if _pidns(info.jid) != info.pidns:      # the pidfd pins the process: no reuse race after this
        os.close(pidfd)
        raise OSError(errno.ESRCH, f"jail '{spec.attach}' ended")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
    host_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    sys.stdout.flush(), sys.stderr.flush()
    try:
        _jail.setns(pidfd, NS["CLONE_NEWPID"])      # only the children are born in it
        try:
            pid = os.fork()
        except BaseException:
            _jail.setns(host_pidns, NS["CLONE_NEWPID"])
            raise
        if pid:
            _jail.setns(host_pidns, NS["CLONE_NEWPID"])
    except BaseException:
        os.close(pidfd), os.close(host_pidns)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    os.close(host_pidns)
    if pid == 0:
        _enter_attached(pidfd, info, old_mask)
        return
    os.close(pidfd)
    if spec.jidfile:
        _write_jidfile(spec.jidfile, info.jid)
    status = _jail.supervise(pid, 0)
    if spec.jidfile:
        _unlink(spec.jidfile)
    _exit(status)


def _enter_attached(pidfd: int, info: JailInfo, old_mask) -> None:
    try:
        # setns with a pidfd joins all of them at once, as of the same instant (Linux >= 5.8);
        # joining the mount namespace also moves root and cwd to the jail's root
        _jail.setns(pidfd, ALL_NS & ~NS["CLONE_NEWPID"])
        os.close(pidfd)
        os.chdir("/")
        _close_directory_fds()
        _limit(info.caps, info.nested)
    except BaseException as exc:
        print(f"jail-attach {info.name}: {exc}", file=sys.stderr)
        _exit(1)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
