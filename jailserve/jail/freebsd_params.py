"""FreeBSD jail parameters: the typed table and the pure `key[=value]` -> iovec-bytes encoding.

Pure Python, no system calls, so every byte jail_set(2) will receive is unit-tested on Linux.
The reference for every rule here is ../shared/FREEBSD_JAILS.md; section numbers are cited
where a rule comes from (§2.2 iovec protocol, §2.3 encodings, §2.4 parameters, §2.7 probing,
§3 key=value rules, §11 checklist).

Two steps, kept apart so that JailSpec holds typed values (for the Linux mapping and for
`--check`) and only the FreeBSD backend deals in bytes:
  parse(key, raw)    -> (canonical key, typed value)      raises ParamError
  encode(key, value) -> (name bytes with NUL, value bytes or None for a NULL/0 value)

Canonical form: a boolean is stored under its positive name with True/False; `allow.nomount`
becomes ("allow.mount", False).  The kernel treats `x` and `nox` as one option and keeps the
last (§2.2), so merging on the canonical name gives the same "last wins" the kernel would.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# parameter kinds (§2.3); the sysctl format letters they come from are in probe_kind()
BOOL = "bool"
INT = "int"
ULONG = "ulong"
STRING = "string"
JAILSYS = "jailsys"
IP4 = "ip4 array"
IP6 = "ip6 array"

# when a parameter may be set (§2.4): at creation only, at creation or later, never
CREATE = "C"
RW = "RW"
RO = "RO"

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
ULONG_SIZE = struct.calcsize("@L")      # 8 on LP64 (amd64, arm64), 4 on i386 (§2.3)
MAX_AF_IPS = 255                        # security.jail.jail_max_af_ips default (§1.2)

JAIL_SYS_DISABLE, JAIL_SYS_NEW, JAIL_SYS_INHERIT = 0, 1, 2   # <sys/jail.h> (§2.1)
JAILSYS_WORDS = {"disable": JAIL_SYS_DISABLE, "new": JAIL_SYS_NEW, "inherit": JAIL_SYS_INHERIT}
JAILSYS_NAMES = {v: k for k, v in JAILSYS_WORDS.items()}

# booleans with a value: libjail's true/false/integer plus uWSGI-style words (§3.4, documented)
BOOL_TRUE = frozenset({"true", "yes", "on"})
BOOL_FALSE = frozenset({"false", "no", "off"})


class ParamError(ValueError):
    """A jail2 key or value that cannot be sent; the message names what is allowed."""


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of §2.4: its type, when it may be set, and its limits."""

    name: str
    kind: str
    when: str = RW
    maxlen: int = 0            # strings: the kernel's limit including the NUL (§2.3)
    minimum: int = INT_MIN     # ints: the kernel's range check, repeated here for a clear message
    maximum: int = INT_MAX
    dynamic: bool = False      # exists only when a module/file system is in the kernel (§2.4, §11.24)
    refuse: str = ""           # why jailserve refuses it although the kernel knows it


def _table(*params: Param) -> dict[str, Param]:
    return {p.name: p for p in params}


P = Param
_MOUNT_FS = ("devfs", "fdescfs", "nullfs", "procfs", "tmpfs", "zfs", "linprocfs", "linsysfs",
             "fusefs", "lindebugfs", "mqueuefs")

# §2.4, one row per documented parameter.  Types are stable since 8.0 / 11.0; anything not
# here is asked of the kernel at run time on FreeBSD (§2.7) by probe().
TABLE: dict[str, Param] = _table(
    P("jid", INT, CREATE, minimum=1,
      refuse="let the kernel choose the jid: a fixed jid clashes with a dying jail (docs/jails.md)"),
    P("name", STRING, RW, maxlen=256),
    P("path", STRING, CREATE, maxlen=1024),
    P("host.hostname", STRING, RW, maxlen=256),
    P("host.domainname", STRING, RW, maxlen=256),
    P("host.hostuuid", STRING, RW, maxlen=64),
    P("host.hostid", ULONG, RW),
    P("host", JAILSYS, RW),
    P("ip4.addr", IP4, RW),
    P("ip4", JAILSYS, CREATE),
    P("ip4.saddrsel", BOOL, RW),
    P("ip6.addr", IP6, RW),
    P("ip6", JAILSYS, CREATE),
    P("ip6.saddrsel", BOOL, RW),
    P("vnet", JAILSYS, CREATE),
    P("persist", BOOL, RW),
    P("securelevel", INT, RW),
    P("children.max", INT, RW, minimum=0),
    P("children.cur", INT, RO),
    P("enforce_statfs", INT, RW, minimum=0, maximum=2),
    P("devfs_ruleset", INT, RW, minimum=0, maximum=65535),
    P("osrelease", STRING, CREATE, maxlen=32),
    P("osreldate", INT, CREATE, minimum=1),
    P("parent", INT, RO),
    P("cpuset.id", INT, RO),
    P("dying", BOOL, RO),
    P("allow.set_hostname", BOOL),
    P("allow.sysvipc", BOOL),
    P("allow.raw_sockets", BOOL),
    P("allow.chflags", BOOL),
    P("allow.mount", BOOL),
    *(P(f"allow.mount.{fs}", BOOL, dynamic=True) for fs in _MOUNT_FS),
    P("allow.quotas", BOOL),
    P("allow.socket_af", BOOL),
    P("allow.mlock", BOOL),
    P("allow.read_msgbuf", BOOL),
    P("allow.reserved_ports", BOOL),
    P("allow.unprivileged_proc_debug", BOOL),
    P("allow.suser", BOOL),
    P("allow.vmm", BOOL, dynamic=True),
    P("sysvmsg", JAILSYS, dynamic=True),
    P("sysvsem", JAILSYS, dynamic=True),
    P("sysvshm", JAILSYS, dynamic=True),
    P("linux", JAILSYS, dynamic=True),
)

# jailsys parameters for which `disable` is refused by the kernel (§2.3)
NO_DISABLE = frozenset({"host", "vnet"})


# ---------------------------------------------------------------------------------------
# names


def noname(key: str) -> str:
    """The clearing spelling of a boolean: `no` after the last dot (§2.3, §11.3)."""
    head, dot, last = key.rpartition(".")
    return f"{head}{dot}no{last}"


def stem_of_noname(key: str) -> str | None:
    """`allow.nomount` -> `allow.mount`; None when the last component does not start with no."""
    head, dot, last = key.rpartition(".")
    if not last.startswith("no") or len(last) == 2:
        return None
    return f"{head}{dot}{last[2:]}"


Probe = Callable[[str], "Param | None"]


def lookup(key: str, probe: Probe | None = None) -> tuple[Param, bool]:
    """The parameter for `key` and whether `key` is its no-form (§3.2).

    The table first; a no-form counts only if its stem is a boolean (§2.7 step 5); then the
    kernel via `probe` (FreeBSD only).  Unknown -> ParamError naming the key.
    """
    param = TABLE.get(key) or (probe(key) if probe else None)
    if param is not None:
        _check_present(param, probe)
        return param, False
    stem = stem_of_noname(key)
    if stem is not None:
        param = TABLE.get(stem) or (probe(stem) if probe else None)
        if param is not None and param.kind == BOOL:
            _check_present(param, probe)
            return param, True
    where = "FreeBSD's security.jail.param sysctls" if probe else "jailserve's parameter table"
    raise ParamError(f"unknown jail parameter '{key}' (not in {where}; docs/jails.md)")


def _check_present(param: Param, probe: Probe | None) -> None:
    """§2.4, §11.24: allow.mount.<fs>, sysv*, linux exist only while their module is loaded."""
    if param.dynamic and probe is not None and param.name in TABLE and probe(param.name) is None:
        raise ParamError(f"jail parameter '{param.name}' is not in this kernel (its file system or "
                         f"module is not loaded; docs/jails.md)")


def check_settable(param: Param) -> None:
    if param.when == RO:
        raise ParamError(f"'{param.name}' is read-only (jail_get only; docs/jails.md)")
    if param.refuse:
        raise ParamError(f"'{param.name}' is refused: {param.refuse}")


# ---------------------------------------------------------------------------------------
# key[=value] -> typed value (§3)


def parse(key: str, raw: str | None, probe: Probe | None = None) -> tuple[str, Any]:
    """One jail2 entry -> (canonical key, typed value); raw None means a bare key (§3.1)."""
    param, negated = lookup(key, probe)
    check_settable(param)
    value = _PARSERS[param.kind](param, raw)
    if negated:
        value = not value
    return param.name, value


def _parse_bool(param: Param, raw: str | None) -> bool:
    # §3.3: a bare key sets a boolean (and, for a no-form, clears it; parse() inverts)
    if raw is None:
        return True
    word = raw.lower()
    if word in BOOL_TRUE:
        return True
    if word in BOOL_FALSE:
        return False
    if _is_decimal(raw):
        return int(raw) != 0          # §3.4: libjail's integer rule, 0 false, else true
    raise ParamError(f"'{param.name}={raw}': not a boolean (allowed: true/false, yes/no, on/off, "
                     f"an integer, or the bare key for true; uWSGI would send it as true; docs/jails.md)")


def _is_decimal(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdigit()


def _needs_value(param: Param, raw: str | None) -> str:
    # §3.3: libjail and uWSGI disagree on a bare int/string/array key; both surprise -> error
    if raw is None:
        raise ParamError(f"'{param.name}' needs a value ({param.kind}; only booleans and jailsys "
                         f"parameters may be given as a bare key; docs/jails.md)")
    return raw


def _parse_int(param: Param, raw: str | None) -> int:
    text = _needs_value(param, raw)
    # §3.6: the whole string, base 10; strtol would take leading spaces, we do not
    if not _is_decimal(text):
        raise ParamError(f"'{param.name}={text}': not an integer (allowed: decimal digits; "
                         f"uWSGI would send 0; docs/jails.md)")
    value = int(text)
    if not param.minimum <= value <= param.maximum:
        raise ParamError(f"'{param.name}={text}': out of range (allowed: {param.minimum} to {param.maximum})")
    return value


def _parse_ulong(param: Param, raw: str | None) -> int:
    text = _needs_value(param, raw)
    limit = 2 ** (8 * ULONG_SIZE) - 1
    if not (text.isascii() and text.isdigit()) or int(text) > limit:
        raise ParamError(f"'{param.name}={text}': not an unsigned long (allowed: 0 to {limit})")
    return int(text)


def _parse_string(param: Param, raw: str | None) -> str:
    text = _needs_value(param, raw)
    size = len(text.encode()) + 1
    if "\0" in text:
        raise ParamError(f"'{param.name}': the value contains a NUL byte")
    if param.maxlen and size > param.maxlen:
        raise ParamError(f"'{param.name}': {size - 1} bytes is too long (allowed: at most "
                         f"{param.maxlen - 1}; the kernel says ENAMETOOLONG; docs/jails.md)")
    if param.name == "osrelease" and not text:
        raise ParamError("'osrelease' must be 1 to 31 characters (docs/jails.md)")
    if param.name == "path" and not text:
        raise ParamError("'path' is empty (the kernel says ENOENT; omit it for the current root)")
    if param.name == "name":
        check_jail_name(text)
    return text


def check_jail_name(name: str) -> None:
    """§2.4 and §11.14: a dot means "child of jail X"; a numeric name must be the jid."""
    if "." in name:
        raise ParamError(f"jail name '{name}' contains '.', which FreeBSD reads as a child of jail "
                         f"'{name.split('.')[0]}' (docs/jails.md)")
    if name.isdigit() and (name.startswith("0") or len(name) > 6):
        raise ParamError(f"jail name '{name}' is numeric but cannot be a jid (no leading zeros, "
                         f"at most 999999; docs/jails.md)")
    if len(name.encode()) > 255:
        raise ParamError(f"jail name is {len(name.encode())} bytes (allowed: at most 255)")


def _parse_jailsys(param: Param, raw: str | None) -> int:
    # §3.5: disable/new/inherit in any case, or 0/1/2; bare or empty -> new (§3.3)
    word = (raw or "new").lower()
    if word in JAILSYS_WORDS:
        value = JAILSYS_WORDS[word]
    elif word in ("0", "1", "2"):
        value = int(word)
    else:
        raise ParamError(f"'{param.name}={raw}': not a jailsys value (allowed: disable, new, inherit or 0, 1, 2)")
    if value == JAIL_SYS_DISABLE and param.name in NO_DISABLE:
        raise ParamError(f"'{param.name}=disable' is refused by the kernel (allowed: new, inherit; docs/jails.md)")
    return value


def parse_addresses(kind: str, items: Iterable[str]) -> tuple:
    """Each element exactly as inet_pton reads it: no spaces, no /prefix, no iface| (§3.8)."""
    cls = ipaddress.IPv4Address if kind == IP4 else ipaddress.IPv6Address
    out = []
    for item in items:
        if "%" in item or item != item.strip():
            raise ParamError(f"'{item}' is not an {_family(kind)} address (no spaces, no scope id)")
        try:
            out.append(cls(item))
        except ValueError:
            raise ParamError(f"'{item}' is not an {_family(kind)} address (allowed: such as "
                             f"{'198.18.0.2' if kind == IP4 else 'fd00::2'}; no /prefix, no iface|)") from None
    return tuple(out)


def _family(kind: str) -> str:
    return "IPv4" if kind == IP4 else "IPv6"


def _parse_array(param: Param, raw: str | None) -> tuple:
    text = _needs_value(param, raw)
    if text in ("", "-"):
        return ()                         # §3.8: an empty list = no addresses of that family
    return parse_addresses(param.kind, text.split(","))


def check_addresses(kind: str, addrs: tuple) -> None:
    """The kernel's checks (§1.2): no unspecified/broadcast, no duplicates, at most 255."""
    family = _family(kind)
    for addr in addrs:
        if addr.is_unspecified or str(addr) == "255.255.255.255":
            raise ParamError(f"{family} address {addr} is refused by the kernel (EINVAL; docs/jails.md)")
    if len(set(addrs)) != len(addrs):
        dup = next(a for a in addrs if addrs.count(a) > 1)
        raise ParamError(f"{family} address {dup} is given twice (the kernel says EINVAL; docs/jails.md)")
    if len(addrs) > MAX_AF_IPS:
        raise ParamError(f"{len(addrs)} {family} addresses (allowed: at most {MAX_AF_IPS}, "
                         f"security.jail.jail_max_af_ips)")


_PARSERS: dict[str, Callable[[Param, str | None], Any]] = {
    BOOL: _parse_bool, INT: _parse_int, ULONG: _parse_ulong, STRING: _parse_string,
    JAILSYS: _parse_jailsys, IP4: _parse_array, IP6: _parse_array,
}


def kind_of(key: str, probe: Probe | None = None) -> str:
    return lookup(key, probe)[0].kind


# ---------------------------------------------------------------------------------------
# typed value -> iovec bytes (§2.2, §2.3)

Pair = tuple[bytes, "bytes | None"]


def cname(name: str) -> bytes:
    """A parameter name as the kernel wants it: NUL-terminated, iov_len counts the NUL (§2.2)."""
    return name.encode() + b"\0"


def encode(key: str, value: Any, kind: str) -> Pair:
    """(name + NUL, value bytes) for jail_set; None stands for iov_base NULL, iov_len 0."""
    if kind == BOOL:
        # §2.3, §11.3: presence is all that counts; false is the no-form, never an int 0
        return cname(key if value else noname(key)), None
    return cname(key), _ENCODERS[kind](value)


def _int_bytes(value: int) -> bytes:
    return struct.pack("=i", value)     # §2.3, §11.5: exactly 4 bytes, native order (C int)


def _ulong_bytes(value: int) -> bytes:
    return struct.pack("@L", value)     # §2.3: unsigned long of the running process


def _string_bytes(value: str) -> bytes:
    return value.encode() + b"\0"       # §2.3, §11.2: the trailing NUL is counted


def _array_bytes(value: tuple) -> bytes:
    # §2.3, §11.6: in_addr / in6_addr in network order, contiguous; the first is the primary
    return b"".join(addr.packed for addr in value)


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    INT: _int_bytes, JAILSYS: _int_bytes, ULONG: _ulong_bytes, STRING: _string_bytes,
    IP4: _array_bytes, IP6: _array_bytes,
}


def show(key: str, value: Any, kind: str) -> str:
    """How one pair is printed by describe(): name=value as the kernel receives it."""
    if kind == BOOL:
        return key if value else noname(key)
    if kind == JAILSYS:
        return f"{key}={JAILSYS_NAMES.get(value, value)}"
    if kind in (IP4, IP6):
        return f"{key}={','.join(str(a) for a in value)}"
    if kind == STRING:
        return f"{key}={value!r}"
    return f"{key}={value}"


# ---------------------------------------------------------------------------------------
# run-time type discovery (§2.7), over sysctl calls supplied by _jail on FreeBSD

CTLTYPE = 0xF
CTLTYPE_NODE = 1
CTLFLAG_RD, CTLFLAG_WR, CTLFLAG_TUN = 0x80000000, 0x40000000, 0x00080000
SYSCTL_PREFIX = "security.jail.param."


def probe_kind(fmt: str) -> str | None:
    """A sysctl format string -> our kind (§2.7 step 2); None for a format we cannot send."""
    if fmt.startswith("B"):
        return BOOL
    if fmt == "E,jailsys":
        return JAILSYS
    if fmt.startswith("I"):
        return INT
    if fmt == "LU":
        return ULONG
    if fmt.startswith("A"):
        return STRING
    if fmt == "S,in_addr,a":
        return IP4
    if fmt == "S,in6_addr,a":
        return IP6
    return None


def probe_when(kind_word: int) -> str:
    """CTLFLAG bits -> C / RW / RO (§2.7 step 2)."""
    if not kind_word & CTLFLAG_WR:
        return CREATE if kind_word & CTLFLAG_TUN else RO
    return RW


def make_probe(oidfmt: Callable[[str], "tuple[int, str] | None"],
               strsize: Callable[[str], int]) -> Probe:
    """A probe over two sysctl reads: oidfmt(full name) -> (kind word, format) or None when
    the name is unknown, and strsize(full name) -> a string parameter's maximum length."""

    def probe(key: str) -> Param | None:
        full = SYSCTL_PREFIX + key
        found = oidfmt(full)
        if found is not None and found[0] & CTLTYPE == CTLTYPE_NODE:
            # §2.7 step 4: a node with an empty-named child is the parameter itself
            full += "."
            found = oidfmt(full)
        if found is None:
            return None
        kind = probe_kind(found[1])
        if kind is None:
            raise ParamError(f"jail parameter '{key}' has sysctl format '{found[1]}', which jailserve cannot encode")
        maxlen = strsize(full) if kind == STRING else 0
        return Param(key, kind, probe_when(found[0]), maxlen=maxlen)

    return probe
