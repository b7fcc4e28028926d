"""The FreeBSD backend: JailSpec -> jail(2) / jail_attach(2) / jail_set(2), through _jail.

Compile-checked on FreeBSD 14 (freebsd-check); run only in FreeBSD CI (.cirrus.yml).

One plan, two uses: plan(spec) lists the exact calls with their encoded arguments;
describe(spec) prints that list (what `--check --check-platform freebsd` shows) and
create()/attach() carry out the same list, so what is checked is what runs.

uWSGI's order (UWSGI_SEMANTICS §3): `jail`, then `jail-attach`, then `jail2`.  build_spec
already refused the combinations that cannot work (jail+jail-attach, jail+jail2), so a
plan is one of: jail(2); attach; jail_set; attach then jail_set (a child of the attached jail).

Choices documented in docs/jails.md:
  * jail-attach resolves a name with jail_get and calls jail_attach(2) (FREEBSD_JAILS §4.3),
    not uWSGI's jail_set(JAIL_UPDATE|JAIL_ATTACH), which needs PRIV_JAIL_SET too;
  * the jidfile is a host path: opened before jailing, written "%d\\n" after (§4.4, §11.22),
    also for jail-attach (uWSGI writes none there);
  * exactly one jailing per process (a module flag), none on a reload (spec.reload: the
    re-exec'd master is already inside, §7, §11.13).
"""
from __future__ import annotations

import errno
import functools
import os
import stat
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

from . import freebsd_params as fp
from .spec import JailSpec

JAIL_CREATE, JAIL_UPDATE, JAIL_ATTACH, JAIL_DYING = 0x01, 0x02, 0x04, 0x08   # §2.1, asserted in _jail
FLAG_NAMES = ((JAIL_CREATE, "JAIL_CREATE"), (JAIL_UPDATE, "JAIL_UPDATE"),
              (JAIL_ATTACH, "JAIL_ATTACH"), (JAIL_DYING, "JAIL_DYING"))
ERRMSG_LEN = 1024           # libjail's JAIL_ERRMSGLEN; _jail appends the pair last (§2.2)


@dataclass(frozen=True, slots=True)
class Call:
    """One system call of a plan.  kind: "jail", "getid", "attach" or "jail_set"."""

    kind: str
    args: dict[str, Any]


# ---------------------------------------------------------------------------------------
# the plan (pure)


def plan(spec: JailSpec) -> list[Call]:
    """The calls create()/attach() make for `spec`, in uWSGI's order."""
    if spec.reload:
        return []
    calls: list[Call] = []
    if spec.source == "jail":
        calls.append(_jail_call(spec))
    if spec.attach is not None:
        calls.extend(_attach_calls(spec.attach))
    if spec.source == "jail2":
        pairs, shown = jail2_pairs(spec)
        calls.append(Call("jail_set", {"pairs": pairs, "shown": shown, "flags": JAIL_CREATE | JAIL_ATTACH}))
    return calls


def _jail_call(spec: JailSpec) -> Call:
    # §1.2: hostname never NULL ("" when none, as uWSGI); both address arrays always passed
    return Call("jail", {
        "path": spec.root.encode(),
        "hostname": (spec.hostname or "").encode(),
        "jailname": None if spec.name is None else spec.name.encode(),
        "ip4": b"".join(a.packed for a in spec.ip4),
        "ip6": b"".join(a.packed for a in spec.ip6),
    })


def _attach_calls(target: str) -> list[Call]:
    # §4.3: all digits are a jid (numeric names must equal the jid), anything else a name
    if target.isdigit():
        return [Call("attach", {"jid": int(target)})]
    return [Call("getid", {"name": target}), Call("attach", {"jid": None})]


def jail2_pairs(spec: JailSpec) -> tuple[list[fp.Pair], list[str]]:
    """The jail_set pairs for the merged jail2 params, in their order (errmsg added by _jail),
    and each pair as readable text.

    ip4.addr / ip6.addr carry spec.ip4 / spec.ip6: the merged jail2 lists followed by any
    jail-ip4 / jail-ip6 addresses, so the first configured address stays primary (§1.2).
    """
    items = []
    for param in spec.params:
        value = param.value
        if param.key == "ip4.addr":
            value = spec.ip4
        elif param.key == "ip6.addr":
            value = spec.ip6
        items.append((param.key, value, spec.param_kinds[param.key]))
    for key, addrs, kind in (("ip4.addr", spec.ip4, fp.IP4), ("ip6.addr", spec.ip6, fp.IP6)):
        if addrs and spec.param(key) is None:
            items.append((key, addrs, kind))
    return [fp.encode(*item) for item in items], [fp.show(*item) for item in items]


def flag_names(flags: int) -> str:
    return "|".join(name for bit, name in FLAG_NAMES if flags & bit) or "0"


# ---------------------------------------------------------------------------------------
# describe (pure)


def describe(spec: JailSpec) -> list[str]:
    """The calls of plan(spec) as lines, every argument as the kernel will receive it."""
    if spec.reload:
        return ["reload: the process is already inside its jail; nothing is jailed again"]
    lines: list[str] = []
    for call in plan(spec):
        lines.extend(_DESCRIBERS[call.kind](call.args))
    if spec.jidfile:
        lines.append(f'jidfile: open("{spec.jidfile}", O_WRONLY|O_CREAT|O_TRUNC, 0644) on the host '
                     f'before jailing; write "<jid>\\n" after')
    lines.extend(f"warning: {w}" for w in warnings(spec))
    return lines


def _describe_jail(args: dict) -> list[str]:
    ip4 = [str(a) for a in _addrs(args["ip4"], 4)]
    ip6 = [str(a) for a in _addrs(args["ip6"], 16)]
    name = "NULL" if args["jailname"] is None else _c(args["jailname"])
    return [
        f"jail(&j) with struct jail {{version=2, path={_c(args['path'])}, "
        f"hostname={_c(args['hostname'])}, jailname={name}, "
        f"ip4s={len(ip4)}, ip4={_list(ip4)}, ip6s={len(ip6)}, ip6={_list(ip6)}}}",
        'chdir("/")',
    ]


def _describe_getid(args: dict) -> list[str]:
    return [f'jail_get(iov, 4, 0): name={_c(args["name"].encode())}, errmsg[{ERRMSG_LEN}] -> jid']


def _describe_attach(args: dict) -> list[str]:
    jid = "jid" if args["jid"] is None else str(args["jid"])
    return [f"jail_attach({jid})", 'chdir("/")']


def _describe_jail_set(args: dict) -> list[str]:
    pairs = args["pairs"]
    niov = 2 * len(pairs) + 2
    lines = [f"jail_set(iov, {niov}, {flag_names(args['flags'])})"]
    for (name, value), shown in zip(pairs, args["shown"]):
        lines.append(f"  {_pair_text(name, value):<60}  {shown}")
    lines.append(f'  "errmsg\\0" (7 B) = buffer[{ERRMSG_LEN}], first byte zeroed')
    if args["flags"] & JAIL_ATTACH:
        lines.append('chdir("/")')
    return lines


def _pair_text(name: bytes, value: bytes | None) -> str:
    shown = name[:-1].decode()
    if value is None:
        return f'"{shown}\\0" ({len(name)} B) = NULL (0 B)'
    return f'"{shown}\\0" ({len(name)} B) = {value.hex(" ")} ({len(value)} B)'


_DESCRIBERS = {"jail": _describe_jail, "getid": _describe_getid,
               "attach": _describe_attach, "jail_set": _describe_jail_set}


def _c(data: bytes) -> str:
    return '"' + data.decode("utf-8", "replace").replace('"', '\\"') + '"'


def _list(items: list[str]) -> str:
    return "[" + ", ".join(items) + "]" if items else "NULL"


def _addrs(data: bytes, size: int) -> list:
    import ipaddress
    cls = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    return [cls(data[i:i + size]) for i in range(0, len(data), size)]


def warnings(spec: JailSpec) -> list[str]:
    """Settings the kernel accepts but that do not do what the config most likely means."""
    out = []
    if "devfs" in spec.allow_mount_fs and not spec.devfs_ruleset:
        out.append("allow.mount.devfs with devfs_ruleset 0: a devfs mounted inside shows every device "
                   "(set devfs_ruleset=4; docs/jails.md)")
    if (spec.allow_mount or spec.allow_mount_fs) and spec.enforce_statfs >= 2:
        out.append("allow.mount* has no effect with enforce_statfs=2 (docs/jails.md)")
    if spec.source == "jail" and not spec.ip4 and not spec.ip6:
        out.append("no jail-ip4/jail-ip6: the jail can open no IPv4 or IPv6 sockets (docs/jails.md)")
    return out


# ---------------------------------------------------------------------------------------
# running it (FreeBSD only; every system call is in _jail)

_entered = False        # exactly one jailing per process (FREEBSD_JAILS §8, §11.13)


def create(spec: JailSpec) -> int | None:
    """Make the jail (after attaching, if jail-attach is set too) and enter it; the jid.

    Returns None on a reload: the process is already inside (nothing is done).
    """
    return _run(spec)


def attach(spec: JailSpec) -> int | None:
    """Enter the live jail named by spec.attach (jid or name); the jid."""
    if spec.attach is None:
        raise ValueError("attach(spec) needs spec.attach")
    return _run(spec)


def _run(spec: JailSpec) -> int | None:
    global _entered
    calls = plan(spec)
    if not calls:
        return None
    if _entered:
        raise RuntimeError("this process has already been jailed once (one jail per start)")
    _check_safe_to_jail()
    for w in warnings(spec):
        print(f"jailserve: warning: {w}", file=sys.stderr)
    jidfile = _open_jidfile(spec.jidfile)
    # set before the first call: after a partial success (attached, then jail_set failed)
    # a second attempt would start from inside a jail (FREEBSD_JAILS §8)
    _entered = True
    try:
        jid = _execute(calls)
    except BaseException:
        if jidfile is not None:
            os.close(jidfile)
        raise
    if jidfile is not None:
        _write_jidfile(jidfile, jid)
    print(f"--- running in FreeBSD jail {jid} ---", file=sys.stderr)
    return jid


def _execute(calls: list[Call]) -> int:
    from .. import _jail
    jid = 0
    for call in calls:
        args = call.args
        if call.kind == "jail":
            jid = _jail.jail(args["path"], args["hostname"], args["jailname"], args["ip4"], args["ip6"])
        elif call.kind == "getid":
            jid = _jail.jail_getid(args["name"])
        elif call.kind == "attach":
            jid = args["jid"] if args["jid"] is not None else jid
            _jail.jail_attach(jid)
        else:
            jid = _jail.jail_set(args["pairs"], args["flags"])
    return jid


def _check_safe_to_jail() -> None:
    """§4.1, §11.12: single-threaded, and no directory descriptor that would lead outside."""
    if threading.active_count() != 1:
        raise RuntimeError(f"{threading.active_count()} threads running; jail before starting threads")
    for fd in range(3, _fd_limit()):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            raise RuntimeError(f"file descriptor {fd} is an open directory, an escape from the jail; close it first")


def _fd_limit() -> int:
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(soft, 4096) if soft > 0 else 4096


def _open_jidfile(path: str | None) -> int | None:
    # §4.4, §11.22: opened on the host, before jailing, so the path is the host's
    if path is None:
        return None
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def _write_jidfile(fd: int, jid: int) -> None:
    try:
        os.write(fd, f"{jid}\n".encode())
    finally:
        os.close(fd)


def remove(target: str | int) -> None:
    """jail_remove(2) of a jail by jid or name: ends a persist jail and its processes (§4.2)."""
    from .. import _jail
    jid = target if isinstance(target, int) else _jail.jail_getid(target)
    _jail.jail_remove(jid)


def list_jails() -> list[dict[str, Any]]:
    """Live jails below ours, by jail_get iteration on lastjid (§2.6), for --jls.

    Each is a dict: jid, name, hostname, root, ip4, ip6, addresses (both), persist.  The
    process count is not a jail parameter, so there is no "processes" key (--jls prints -).
    """
    from .. import _jail
    jails, last = [], 0
    while True:
        try:
            jid, values = _jail.jail_get(_list_pairs(last), 0)
        except OSError as exc:
            if exc.errno == errno.ENOENT:     # past the last jail
                return jails
            raise
        jails.append(_jail_info(jid, values))
        last = jid


_LIST_FIELDS = (("jid", 4), ("name", 256), ("host.hostname", 256), ("path", 1024),
                ("ip4.addr", 4 * fp.MAX_AF_IPS), ("ip6.addr", 16 * fp.MAX_AF_IPS),
                ("persist", 4))      # §2.6: booleans come back as a 4-byte int


def _list_pairs(lastjid: int) -> list:
    # lastjid chooses "the first jail with a greater jid"; the rest are output buffers (§2.6)
    return [(b"lastjid\0", struct.pack("=i", lastjid))] + [(fp.cname(k), size) for k, size in _LIST_FIELDS]


def _jail_info(jid: int, values: list[bytes]) -> dict[str, Any]:
    _, _jid, name, host, path, ip4, ip6, persist = values
    ip4s = [str(a) for a in _addrs(ip4, 4)]
    ip6s = [str(a) for a in _addrs(ip6, 16)]
    return {"jid": jid, "name": _cstr(name), "hostname": _cstr(host), "root": _cstr(path),
            "ip4": ip4s, "ip6": ip6s, "addresses": ip4s + ip6s,
            "persist": struct.unpack("=i", persist)[0] != 0}


def _cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------
# jail2 key types the table lacks, from the kernel (§2.7); used by build_spec on FreeBSD


@functools.lru_cache(maxsize=None)
def kernel_probe(key: str) -> fp.Param | None:
    from .. import _jail
    return fp.make_probe(_jail.sysctl_oidfmt, _string_size)(key)


def _string_size(full_name: str) -> int:
    from .. import _jail
    raw = _jail.sysctl_read(full_name, 64) or b"0"
    digits = raw.split(b"\0", 1)[0].strip()
    return int(digits) if digits.isdigit() else 0
