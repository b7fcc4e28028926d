"""Listening sockets: uWSGI's address syntax, planning (pure), binding, inheriting.

Address forms (uWSGI core/socket.c `uwsgi_bind_sockets` and friends):
  :8000              TCP on every IPv4 address (INADDR_ANY), as uWSGI
  127.0.0.1:8000     TCP IPv4;  host.name:8000 is resolved when bound (inside the jail)
  [::1]:8000         TCP IPv6
  /run/app.sock      a unix socket (any address without ':'; relative paths are relative to
                     `chdir`, which uWSGI applies before binding)
  @name              a Linux abstract unix socket
  =N                 the N-th `shared-socket` (0-based), bound before the jail and the drop

`plan_sockets(config)` turns the config into SocketSpecs and raises ConfigError for anything
that cannot work, before any side effect.  `bind_shared` runs at DESIGN §3 step 3 (before the
jail and the privilege drop); `bind_listeners` at step 8, after the drop, so a unix socket
belongs to `uid` as in uWSGI.  A re-exec (issue 7) hands its listening fds over: the new
image finds them with `find_inherited`, matching by bound address as uWSGI does (there is no
fd list in the environment).
"""
from __future__ import annotations

import errno
import grp
import ipaddress
import math
import os
import pwd
import socket
import stat
import sys
from dataclasses import dataclass

from . import _core
from .errors import ConfigError, Origin
from .options import LINUX, current_platform

# option name -> the kind _core.serve() understands
KINDS = {"http-socket": "http", "http11-socket": "http11", "socket": "uwsgi"}
SHARED = "shared"
UNDEFERRED = "undeferred-shared-socket"
SHARED_OPTIONS = ("shared-socket", UNDEFERRED)


@dataclass(frozen=True, slots=True)
class Address:
    """One parsed address.  family is AF_INET, AF_INET6 or AF_UNIX; shared is N for =N."""

    raw: str
    family: int
    host: str = ""        # TCP: address or name to resolve ("" for INADDR_ANY)
    port: int = 0
    path: str = ""        # AF_UNIX: file path, or "\0name" for an abstract socket
    shared: int | None = None

    def __str__(self) -> str:
        return self.raw


@dataclass(frozen=True, slots=True)
class SocketSpec:
    """One socket to bind (or take from a shared socket / an inherited fd)."""

    kind: str             # "http" | "http11" | "uwsgi" | "shared"
    address: Address
    index: int            # position in its own list: socket N / shared socket N
    option: str
    origin: Origin | None
    backlog: int
    reuse_port: bool = False
    chmod: int | None = None
    chown: str | None = None
    defer_accept: int = 0     # TCP: seconds for TCP_DEFER_ACCEPT (0 = accept at once)

    @property
    def shared(self) -> bool:
        """A shared-socket (bound before the jail), not one served by the workers."""
        return self.kind == SHARED

    @property
    def is_unix(self) -> bool:
        return self.address.family == socket.AF_UNIX and self.address.shared is None

    def describe(self) -> str:
        what = {"http": "HTTP (one request per connection)", "http11": "HTTP/1.1 keep-alive",
                "uwsgi": "uwsgi protocol", SHARED: "shared socket, bound before jail and drop"}[self.kind]
        where = self.address.raw
        if self.address.shared is not None:
            where = f"{where} (shared socket {self.address.shared})"
        extra = []
        if self.is_unix and self.chmod is not None:
            extra.append(f"mode {self.chmod:o}")
        if self.is_unix and self.chown:
            extra.append(f"owner {self.chown}")
        if self.reuse_port and self.address.family != socket.AF_UNIX:
            extra.append("SO_REUSEPORT")
        extra.append(f"backlog {self.backlog}")
        return f"{self.option} {where}: {what}, {', '.join(extra)}"


# ---------------------------------------------------------------------------------------
# parsing (pure)


def parse_address(text: str, allow_shared: bool = True) -> Address:
    """uWSGI's address syntax -> Address; raises ValueError with what is allowed."""
    raw = text.strip()
    if not raw:
        raise ValueError("an address is required (allowed: :PORT, HOST:PORT, [IPV6]:PORT, /path.sock, @abstract, =N)")
    if raw.startswith("="):
        return _parse_shared_ref(raw, allow_shared)
    if raw.startswith("@"):
        return _parse_abstract(raw)
    if ":" not in raw:
        return Address(raw, socket.AF_UNIX, path=raw)
    if raw.startswith("["):
        return _parse_ip6(raw)
    host, _, port = raw.rpartition(":")
    if ":" in host:
        raise ValueError(f"'{raw}': an IPv6 address must be written in brackets, as [::1]:8000")
    if host:
        _check_host(raw, host)
    return Address(raw, socket.AF_INET, host=host, port=_parse_port(raw, port))


def _parse_shared_ref(raw: str, allow_shared: bool) -> Address:
    if not allow_shared:
        raise ValueError(f"'{raw}': a shared socket cannot refer to another shared socket")
    number = raw[1:]
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"'{raw}' is not =N (N: the 0-based number of a shared-socket)")
    return Address(raw, socket.AF_UNSPEC, shared=int(number))


def _parse_abstract(raw: str) -> Address:
    if current_platform() != LINUX:
        raise ValueError(f"'{raw}': abstract unix sockets are not supported on {current_platform()}")
    if len(raw) < 2:
        raise ValueError(f"'{raw}': an abstract socket needs a name after @")
    return Address(raw, socket.AF_UNIX, path="\0" + raw[1:])


def _parse_ip6(raw: str) -> Address:
    close = raw.find("]")
    if close < 0 or raw[close + 1:close + 2] != ":":
        raise ValueError(f"'{raw}' is not [IPV6]:PORT")
    host = raw[1:close]
    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"'{raw}': '{host}' is not an IPv6 address") from None
    return Address(raw, socket.AF_INET6, host=host, port=_parse_port(raw, raw[close + 2:]))


def _check_host(raw: str, host: str) -> None:
    # A dotted quad must be a valid one; anything else is a name resolved at bind time.
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"'{raw}': '{host}' is not an IPv4 address") from None
    elif not all(c.isalnum() or c in "-._" for c in host):
        raise ValueError(f"'{raw}': '{host}' is not a host name or address")


def _parse_port(raw: str, port: str) -> int:
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"'{raw}': the port '{port}' is not a number (allowed: 1 to 65535)")
    value = int(port)
    if not 1 <= value <= 65535:
        raise ValueError(f"'{raw}': port {value} is out of range (allowed: 1 to 65535)")
    return value


# ---------------------------------------------------------------------------------------
# planning (pure): config -> [SocketSpec]


def plan_sockets(config) -> list[SocketSpec]:
    """Every socket of the config: shared sockets first, then http/http11/uwsgi in config order.

    Raises ConfigError for an address that does not parse, a bad port, or =N out of range.
    """
    common = dict(backlog=config.get("listen"), reuse_port=config.get("reuse-port"),
                  chmod=config.get("chmod-socket"), chown=_plan_chown(config),
                  defer_accept=_defer_accept(config))
    # shared-socket and undeferred-shared-socket share one numbering, in config order
    shared = [_spec(config, entry, SHARED, i, False,
                    {**common, "defer_accept": 0} if entry.name == UNDEFERRED else common)
              for i, entry in enumerate(e for e in config.entries if e.name in SHARED_OPTIONS)]
    served = []
    for entry in config.entries:        # config order, as uWSGI numbers "uwsgi socket N"
        kind = KINDS.get(entry.name)
        if kind is not None:
            spec = _spec(config, entry, kind, len(served), True, common)
            n = spec.address.shared
            if n is not None and n >= len(shared):
                raise ConfigError(f"'={n}' refers to shared socket {n}, but "
                                  f"{len(shared)} shared-socket{'s are' if len(shared) != 1 else ' is'} configured",
                                  entry.origin, entry.name)
            served.append(spec)
    _check_duplicates(shared + served)
    return shared + served


def _spec(config, entry, kind: str, index: int, allow_shared: bool, common: dict) -> SocketSpec:
    try:
        address = parse_address(entry.value if isinstance(entry.value, str) else entry.raw, allow_shared)
    except ValueError as problem:
        raise ConfigError(str(problem), entry.origin, entry.name) from None
    return SocketSpec(kind, address, index, entry.name, entry.origin, **common)


def _defer_accept(config) -> int:
    # uWSGI (core/socket.c bind_to_tcp) defers accept() on every TCP socket by socket-timeout
    # seconds unless no-defer-accept: a connection reaches a worker only once its request
    # has started to arrive, so no worker waits for (or wakes up for) a silent client.
    if config.get("no-defer-accept"):
        return 0
    return max(0, math.ceil(config.get("socket-timeout")))


def _plan_chown(config) -> str | None:
    value = config.get("chown-socket")
    if not value:
        return None
    user, _, group = value.partition(":")
    if not user.strip() or (":" in value and not group.strip()):
        raise ConfigError(f"'{value}' is not owner[:group]", config.origin("chown-socket"), "chown-socket")
    return value


def _check_duplicates(specs: list[SocketSpec]) -> None:
    seen: dict[str, SocketSpec] = {}
    for spec in specs:
        if spec.address.shared is not None:
            continue
        key = spec.address.raw
        if key in seen:
            raise ConfigError(f"'{key}' is already bound by {seen[key].option} at {seen[key].origin}",
                              spec.origin, spec.option)
        seen[key] = spec


# ---------------------------------------------------------------------------------------
# binding (side effects)


def bind_shared(specs: list[SocketSpec], log=print) -> list[socket.socket]:
    """DESIGN §3 step 3: bind every shared-socket now, as the starting user, outside the jail."""
    return [bind_one(spec, log) for spec in specs if spec.kind == SHARED]


def bind_listeners(specs: list[SocketSpec], shared: list[socket.socket],
                   inherited: dict[str, socket.socket] | None = None,
                   log=print) -> list[tuple[socket.socket, str]]:
    """DESIGN §3 step 8: (socket, kind) for _core.serve, in config order.

    `=N` takes shared socket N; an address found in `inherited` (a re-exec) is adopted
    instead of bound again, so its backlog survives the reload.
    """
    inherited = inherited or {}
    listeners = []
    for spec in specs:
        if spec.kind == SHARED:
            continue
        if spec.address.shared is not None:
            sock = shared[spec.address.shared]
            log(f"{spec.option} {spec.index} uses shared socket {spec.address.shared} fd {sock.fileno()}")
        elif spec.address.raw in inherited:
            sock = inherited.pop(spec.address.raw)
            log(f"{spec.option} {spec.index} inherited {_family_name(spec)} address {spec.address.raw} fd {sock.fileno()}")
        else:
            sock = bind_one(spec, log)
        listeners.append((sock, spec.kind))
    return listeners


SOMAXCONN = "/proc/sys/net/core/somaxconn"


def check_backlog(backlog: int, limit_file: str = SOMAXCONN) -> None:
    """uWSGI refuses a `listen` above the kernel's limit (it would be cut silently, and the
    backlog that carries connections across a reload would be smaller than asked).  Where
    the limit is not readable (no such file) there is nothing to compare with."""
    try:
        with open(limit_file) as f:
            limit = int(f.read())
    except (OSError, ValueError):
        return
    if backlog > limit:
        raise OSError(errno.EINVAL, f"Listen queue size {backlog} is greater than the system max "
                                    f"net.core.somaxconn ({limit})")


def bind_one(spec: SocketSpec, log=print) -> socket.socket:
    """Bind and listen one socket; OSError says which address failed."""
    check_backlog(spec.backlog)
    address = spec.address
    try:
        sock = _bind_unix(spec) if address.family == socket.AF_UNIX else _bind_tcp(spec)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot bind {spec.option} {address.raw}: {exc.strerror}") from None
    log(f"{spec.option} {spec.index} bound to {_family_name(spec)} address {address.raw} fd {sock.fileno()}")
    return sock


def _family_name(spec: SocketSpec) -> str:
    return {socket.AF_UNIX: "UNIX", socket.AF_INET: "TCP", socket.AF_INET6: "TCP6"}.get(spec.address.family, "?")


def _bind_tcp(spec: SocketSpec) -> socket.socket:
    address = spec.address
    host = address.host
    if host and address.family == socket.AF_INET and not host.replace(".", "").isdigit():
        host = socket.gethostbyname(host)     # resolved here, inside the jail, as uWSGI does
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        # uWSGI sets SO_REUSEADDR on every TCP socket so a restart does not wait for TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sockaddr = (host, address.port, 0, 0) if address.family == socket.AF_INET6 else (host, address.port)
        sock.bind(sockaddr)
        sock.listen(spec.backlog)
        if spec.defer_accept:
            _defer(sock, spec.defer_accept)
    except BaseException:
        sock.close()
        raise
    return sock


def _defer(sock: socket.socket, seconds: int) -> None:
    """Deferred accept as uWSGI sets it (_core picks TCP_DEFER_ACCEPT or FreeBSD's accf_data).
    Where the system refuses (FreeBSD without accf_data loaded) uWSGI logs and goes on, and
    so does this."""
    try:
        _core.defer_accept(sock.fileno(), seconds)
    except OSError as exc:
        print(f"deferred accept on {sock.getsockname()}: {exc.strerror}"
              f"{' (kldload accf_data)' if exc.errno == errno.ENOENT else ''}", file=sys.stderr)


def _bind_unix(spec: SocketSpec) -> socket.socket:
    path = spec.address.path
    if not path.startswith("\0"):
        _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if not path.startswith("\0"):
            _set_owner_and_mode(spec, path)
        sock.listen(spec.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    # uWSGI unlinks the path before binding; we only remove a socket, never a regular file
    # that a typo in the config would otherwise destroy.
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _set_owner_and_mode(spec: SocketSpec, path: str) -> None:
    if spec.chown:
        uid, gid = resolve_owner(spec.chown)
        os.chown(path, uid, gid)
    if spec.chmod is not None:
        os.chmod(path, spec.chmod)


def resolve_owner(text: str) -> tuple[int, int]:
    """owner[:group] -> (uid, gid); -1 leaves a part unchanged.  Names resolve in the jail."""
    user, _, group = text.partition(":")
    uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    gid = -1
    if group:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


# ---------------------------------------------------------------------------------------
# re-exec: inherited fds (issue 7 uses these; uWSGI core/socket.c `uwsgi_check_scheme`...)


def keep_across_exec(socks) -> None:
    """Mark listening sockets inheritable so an exec of binary-path keeps them open."""
    for sock in socks:
        os.set_inheritable(sock.fileno(), True)


def find_inherited(specs: list[SocketSpec], max_fd: int = 1024) -> dict[str, socket.socket]:
    """Scan fds 3..max_fd for listening sockets whose address matches a planned one.

    Returns raw address -> socket; other sockets found are left alone (uWSGI closes them;
    the re-exec code decides).  Matching is by bound address, as uWSGI does after a reload.
    """
    wanted = [spec.address for spec in specs if spec.address.shared is None]
    found: dict[str, socket.socket] = {}
    for fd in range(3, max_fd):
        name = _fd_sockname(fd)
        if name is None:
            continue
        for address in wanted:
            if address.raw not in found and _matches(address, name):
                found[address.raw] = socket.socket(fileno=fd)
                break
    return found


def _matches(address: Address, name: tuple) -> bool:
    family, where = name
    if family != address.family:
        return False
    if family == socket.AF_UNIX:
        return where == address.path
    host, port = where
    if port != address.port:
        return False
    try:
        wanted_ip = ipaddress.ip_address(address.host.split("%", 1)[0] or ("0.0.0.0" if family == socket.AF_INET else "::"))
    except ValueError:
        return True          # a host name: the port is all we can compare without resolving
    return wanted_ip == ipaddress.ip_address(host.split("%", 1)[0])


def _fd_sockname(fd: int):
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            return None
        raise
    try:
        if sock.type != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0:
            return None
        name = sock.getsockname()
        if sock.family == socket.AF_UNIX:
            return (socket.AF_UNIX, name if isinstance(name, str) else name.decode("latin-1"))
        return (sock.family, (name[0], name[1]))
    finally:
        sock.detach()


def close_stray(log=print, max_fd: int = 1024) -> list[int]:
    """After a re-exec adopted its sockets (now non-inheritable): a listening socket still
    inheritable was the previous image's and is no longer in the config (uWSGI closes those)."""
    closed = []
    for fd in range(3, max_fd):
        name = _fd_sockname(fd)
        if name is None or not os.get_inheritable(fd):
            continue
        log(f"closing inherited socket fd {fd} ({_describe_name(name)}): not in the config any more")
        os.close(fd)
        closed.append(fd)
    return closed


def _describe_name(name) -> str:
    family, where = name
    if family == socket.AF_UNIX:
        return where.replace("\0", "@", 1) if where.startswith("\0") else where
    host, port = where
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def unix_paths(specs: list[SocketSpec]) -> list[str]:
    """Filesystem paths of the unix sockets we bind (for vacuum)."""
    return [spec.address.path for spec in specs if spec.is_unix and not spec.address.path.startswith("\0")]
