"""THE option registry: one frozen record per option.

ini, the command line, UWSGI_* environment options, --help and docs/options.md are all
generated from the records below; no other module spells an option's name except to read
its value from a Config.  A new option is one `Option(...)` line in its group's table.

Value shapes follow uWSGI's handlers (UWSGI_SEMANTICS.md §1.3) with one difference that
the compatibility rule asks for: where uWSGI silently misreads a value (`harakiri = soon`
is 0, `processes = 4x` is 4), jailserve refuses it with a message naming what is allowed.
"""
from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from .errors import ConfigError

# ---------------------------------------------------------------------------------------
# value shapes


class ValueProblem(ValueError):
    """A value does not have its option's shape; the message says what is allowed."""


TRUE_WORDS = frozenset({"", "1", "true", "yes", "on", "y", "enable", "enabled"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", "disable", "disabled"})


def parse_bool(text: str) -> bool:
    """uWSGI's uwsgi_opt_true: empty is true; false/off/no/0 are false (§1.3).

    uWSGI takes any other word as true; a word that is neither is refused here, since a
    config that says `master = maybe` was not written with uWSGI's reading in mind.
    A plain integer keeps uWSGI's meaning (0 false, anything else true).
    """
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    if word.isdigit():
        return int(word) != 0
    raise ValueProblem(f"'{text}' is not a boolean (allowed: true/false, yes/no, on/off, 1/0, or empty for true)")


def parse_int(text: str, minimum: int = 0, maximum: int = 2**31 - 1) -> int:
    """Base-10 integer, the whole string.  No value means 1, as uWSGI's uwsgi_opt_set_int."""
    word = text.strip()
    if word == "":
        return 1
    if not (word.isascii() and word.isdigit()):
        if word.startswith("-") and word[1:].isdigit():
            raise ValueProblem(f"'{text}' is negative (allowed: an integer from {minimum} to {maximum})")
        raise ValueProblem(f"'{text}' is not an integer (allowed: decimal digits only, {minimum} to {maximum})")
    value = int(word)
    if not minimum <= value <= maximum:
        raise ValueProblem(f"{value} is out of range (allowed: {minimum} to {maximum})")
    return value


def parse_port(text: str) -> int:
    return parse_int(text, 1, 65535)


def parse_ip4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ValueProblem(f"'{text}' is not an IPv4 address (allowed: dotted quad such as 198.18.0.2, no prefix)") from None


def parse_ip6(text: str) -> ipaddress.IPv6Address:
    word = text.strip()
    if "%" in word:
        raise ValueProblem(f"'{text}': a scope id is not allowed in a jail address")
    try:
        return ipaddress.IPv6Address(word)
    except ValueError:
        raise ValueProblem(f"'{text}' is not an IPv6 address (allowed: such as fd00::2, no prefix)") from None


def parse_keyval(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueProblem(f"'{text}' is not key=value")
    return key.strip(), value


def parse_keyval_optional(text: str) -> tuple[str, str | None]:
    """key[=value]: a bare key gives (key, None)."""
    key, sep, value = text.partition("=")
    if not key.strip():
        raise ValueProblem(f"'{text}' has no key (allowed: key or key=value)")
    return key.strip(), (value if sep else None)


def parse_string(text: str) -> str:
    return text


def parse_nonempty(text: str) -> str:
    if text.strip() == "":
        raise ValueProblem("a value is required")
    return text


def parse_octal_mode(text: str) -> int | None:
    """chmod-socket: uWSGI takes an octal mode, or no value for 666 (world read/write)."""
    word = text.strip()
    if word in ("", "1"):
        return 0o666
    if len(word) == 3 and all(c in "01234567" for c in word):
        return int(word, 8)
    raise ValueProblem(f"'{text}' is not a 3-digit octal mode (allowed: such as 660, or empty for 666)")


@dataclass(frozen=True, slots=True)
class Shape:
    """How a value is written and read.  `takes_value` False: a CLI flag with no argument."""

    name: str
    metavar: str
    parse: Callable[[str], Any]
    takes_value: bool = True
    optional_value: bool = False   # CLI: the argument may be omitted (uWSGI optional_argument)


FLAG = Shape("flag", "", parse_bool, takes_value=False)
BOOL = Shape("bool", "BOOL", parse_bool, optional_value=True)
INT = Shape("int", "N", parse_int)
OPT_INT = Shape("optional int", "[N]", parse_int, optional_value=True)
SECONDS = Shape("seconds", "SECONDS", parse_int)
SIZE = Shape("size", "BYTES", lambda t: parse_int(t, 1, 2**31 - 1))
PORT = Shape("port", "PORT", parse_port)
STRING = Shape("string", "VALUE", parse_string)
PATH = Shape("path", "PATH", parse_nonempty)
COMMAND = Shape("command", "CMD", parse_nonempty)
ADDRESS = Shape("address", "ADDR", parse_nonempty)   # checked further by sockets.parse_address
IP4 = Shape("ipv4", "IPV4", parse_ip4)
IP6 = Shape("ipv6", "IPV6", parse_ip6)
KEYVAL = Shape("key=value", "KEY=VALUE", parse_keyval)
KEY_OPT_VAL = Shape("key[=value]", "KEY[=VALUE]", parse_keyval_optional)
WORDS = Shape("words", "WORDS", parse_nonempty)
MODE = Shape("octal mode", "[MODE]", parse_octal_mode, optional_value=True)
NONE = Shape("none", "", lambda t: True, takes_value=False)   # logic keywords without argument

LINUX = "linux"
FREEBSD = "freebsd"
ALL_PLATFORMS = frozenset({LINUX, FREEBSD})


# ---------------------------------------------------------------------------------------
# the record


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    shape: Shape
    help: str
    group: str = ""
    aliases: tuple[str, ...] = ()
    short: str | None = None          # one-letter CLI form, e.g. "p" for -p
    repeat: bool = False              # list option: every occurrence counts, in order
    default: Any = None
    platforms: frozenset[str] = ALL_PLATFORMS
    immediate: bool = False           # handled while the config is read (ini, include, if-*...)
    check: Callable[[Any], None] | None = field(default=None, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def parse(self, text: str) -> Any:
        """The typed value of one occurrence (raises ValueProblem)."""
        if "\0" in text:
            raise ValueProblem("the value contains a NUL byte")
        value = self.shape.parse(text)
        if self.check is not None:
            self.check(value)
        return value


def _opts(group: str, *records: Option) -> list[Option]:
    return [replace(r, group=group) for r in records]


O = Option

# ---------------------------------------------------------------------------------------
# the tables, one per group (names and aliases as uWSGI spells them; UWSGI_SEMANTICS §13)

CONFIG = _opts(
    "config language",
    O("ini", PATH, "load an ini file (file[:section]) now", repeat=True, immediate=True),
    O("include", PATH, "parse a config file now, in place", repeat=True, immediate=True),
    O("inherit", PATH, "parse a config file after the rest (a template)", repeat=True),
    O("set", KEYVAL, "add an option or placeholder", short="S", repeat=True, immediate=True),
    O("set-placeholder", KEYVAL, "add a placeholder that is not an option", aliases=("set-ph",), repeat=True, immediate=True),
    O("strict", FLAG, "unknown keys are fatal", immediate=True),
    O("if-exists", PATH, "lines until endif if the path exists", aliases=("ifexists",), immediate=True),
    O("if-not-exists", PATH, "lines until endif if the path does not exist", immediate=True),
    O("if-file", PATH, "lines until endif if the path is a regular file", immediate=True),
    O("if-not-file", PATH, "lines until endif if the path is not a regular file", immediate=True),
    O("if-dir", PATH, "lines until endif if the path is a directory", aliases=("ifdir", "if-directory"), immediate=True),
    O("if-not-dir", PATH, "lines until endif if the path is not a directory", immediate=True),
    O("if-env", STRING, "lines until endif if VAR is set (or VAR=value matches)", aliases=("ifenv",), immediate=True),
    O("if-not-env", STRING, "lines until endif unless VAR is set (or VAR=value matches)", immediate=True),
    O("if-opt", STRING, "lines until endif if an option was seen (or opt=value matches)", immediate=True),
    O("if-not-opt", STRING, "lines until endif unless an option was seen (or opt=value matches)", immediate=True),
    O("if-reload", NONE, "lines until endif on a reload (re-exec)", immediate=True),
    O("if-not-reload", NONE, "lines until endif on the first start", immediate=True),
    O("for", STRING, "repeat the lines until endfor for each space-separated item, as %(_)", immediate=True),
    O("for-glob", STRING, "repeat the lines until endfor for each path matching the glob", immediate=True),
    O("for-times", STRING, "repeat the lines until endfor for 1..N", immediate=True),
    O("for-readline", PATH, "repeat the lines until endfor for each line of a file", immediate=True),
    O("else", STRING, "lines until endif if the last test failed", immediate=True),
    O("endif", STRING, "end a logic block", aliases=("end-if", "end", "endfor", "end-for"), immediate=True),
    O("print", STRING, "print a line while the config is read", repeat=True, immediate=True),
    O("show-config", FLAG, "print the resolved configuration and go on"),
    O("check", FLAG, "validate, print the options with their origin and the start-up plan, exit"),
    O("check-platform", STRING, "with --check: validate and plan for this platform (linux or freebsd)"),
    O("help", FLAG, "show this help and exit", short="h"),
    O("version", FLAG, "print the version and exit"),
    O("jls", FLAG, "list live jails (jid, name, hostname, root, addresses, processes) and exit"),
)

PROCESS = _opts(
    "processes",
    O("master", FLAG, "run a master process that supervises the workers", short="M"),
    O("processes", INT, "number of workers", aliases=("workers",), short="p", default=1),
    O("harakiri", SECONDS, "kill and replace a worker whose request runs longer than this", short="t", default=0),
    O("max-requests", INT, "recycle a worker after this many requests", short="R", default=0),
    O("max-requests-delta", INT, "add worker id x this to max-requests, so workers are not recycled together", default=0),
    O("reload-mercy", SECONDS, "longest wait for workers to end on reload or shutdown", default=0),
    O("worker-reload-mercy", SECONDS, "longest wait for one worker to finish on a graceful reload", default=60),
    O("die-on-term", FLAG, "SIGTERM shuts down instead of reloading (uWSGI 2.0)"),
    O("lazy-apps", FLAG, "load the app in each worker instead of the master"),
    O("lazy", FLAG, "lazy-apps, and SIGHUP only recycles the workers"),
    O("pidfile", PATH, "write the master pid here (before privileges are dropped, first start only)"),
    O("pidfile2", PATH, "write the master pid here after privileges are dropped"),
    O("vacuum", FLAG, "remove unix sockets and pidfiles at exit"),
    O("binary-path", PATH, "the program re-executed on a graceful reload"),
    O("exit-on-reload", FLAG, "exit instead of re-executing on reload"),
    O("master-fifo", PATH, "read one-letter commands from this fifo", repeat=True),
    O("touch-reload", PATH, "gracefully reload when this file is touched", repeat=True),
    O("touch-chain-reload", PATH, "chain-reload the workers when this file is touched", repeat=True),
)

SOCKETS = _opts(
    "sockets",
    O("http-socket", ADDRESS, "serve HTTP from the workers on this address (one request per connection)", repeat=True),
    O("http11-socket", ADDRESS, "serve HTTP/1.1 with keep-alive on this address", repeat=True),
    O("socket", ADDRESS, "serve the uwsgi protocol on this address", aliases=("uwsgi-socket",), short="s", repeat=True),
    O("shared-socket", ADDRESS, "bind this address before the jail and the privilege drop; use it as =N", repeat=True),
    O("undeferred-shared-socket", ADDRESS, "a shared-socket without deferred accept (numbered with the shared-sockets)", repeat=True),
    O("listen", INT, "listen backlog", short="l", default=100, immediate=True),
    O("buffer-size", SIZE, "largest request head (HTTP) or vars block (uwsgi)", short="b", default=4096),
    O("socket-timeout", SECONDS, "timeout for socket I/O and keep-alive idle connections", short="z", default=4),
    O("chmod-socket", MODE, "mode of unix sockets", short="C"),
    O("chown-socket", STRING, "owner[:group] of unix sockets"),
    O("reuse-port", FLAG, "set SO_REUSEPORT on TCP sockets"),
    O("no-defer-accept", FLAG, "do not defer accept() until the client has sent data (TCP_DEFER_ACCEPT, accf_data)"),
)

APP = _opts(
    "application",
    O("wsgi-file", PATH, "load the WSGI app from this file", aliases=("file",)),
    O("module", STRING, "load the WSGI app from this module (pkg.mod[:callable])", aliases=("wsgi",), short="w"),
    O("callable", STRING, "the name of the app callable", default="application"),
    O("chdir", PATH, "change to this directory before loading the app"),
    O("pythonpath", PATH, "add a directory to sys.path", aliases=("python-path", "pp"), repeat=True),
    O("virtualenv", PATH, "use this virtualenv", aliases=("venv", "home"), short="H"),
    O("env", KEYVAL, "set an environment variable", repeat=True),
    O("enable-threads", FLAG, "allow the app to start threads (always possible in jailserve)", short="T"),
    O("single-interpreter", FLAG, "one interpreter per worker (always the case in jailserve)", short="i"),
    O("plugin", STRING, "uWSGI plugin list (python, greenlet: built in; others refused)", aliases=("plugins",), repeat=True, immediate=True),
)

PRIVILEGES = _opts(
    "privileges",
    O("uid", STRING, "drop privileges to this user (name or number)"),
    O("gid", STRING, "drop privileges to this group (name or number)"),
    O("no-initgroups", FLAG, "do not set the supplementary groups of uid"),
)

LOGGING = _opts(
    "logging",
    O("disable-logging", FLAG, "no request log lines", short="L"),
    O("logto", PATH, "log to this file instead of stderr"),
    O("log-format", STRING, "request log line format (%(method) %(uri) %(status) ...)"),
    O("log-micros", FLAG, "request times in microseconds"),
)

JAIL = _opts(
    "jail",
    O("jail", WORDS, "jail the instance: ROOTFS [HOSTNAME [NAME]]"),
    O("jail-ip4", IP4, "an IPv4 address of the jail", repeat=True),
    O("jail-ip6", IP6, "an IPv6 address of the jail", repeat=True),
    O("jail2", KEY_OPT_VAL, "a jail parameter key[=value] (FreeBSD jail_set names)", aliases=("libjail",), repeat=True),
    O("jail-attach", STRING, "run inside an existing jail, by jid or name"),
    O("jidfile", PATH, "write the jail id here", aliases=("jid-file",)),
    O("jailed", FLAG, "run the post-jail phase as if a jail had been made"),
    O("jail-keep-mount", STRING, "Linux: bind a host path read-only into the jail, PATH[:DEST] (like uWSGI's namespace-keep-mount); the interpreter, venv, sys.path and jailserve are kept by default, 'none' turns that off", repeat=True, platforms=frozenset({LINUX})),
)

HOOK_PHASES = ("asap", "pre-jail", "post-jail", "in-jail", "as-root", "as-user", "pre-app", "post-app")
HOOKS = _opts(
    "hooks",
    *[O(f"exec-{phase}", COMMAND, f"run a shell command in the {phase} phase", repeat=True) for phase in HOOK_PHASES],
    *[O(f"hook-{phase}", STRING, f"run a hook action (action:args) in the {phase} phase", repeat=True) for phase in HOOK_PHASES],
)

LOCK_ENGINES = ("posixsem", "ipcsem")


def _check_lock_engine(value: str) -> None:
    # uWSGI knows only ipcsem at run time ("unable to find lock engine" otherwise); posixsem,
    # our default, is accepted by name too so a config can say what it relies on.
    if value.strip() not in LOCK_ENGINES:
        raise ValueProblem(f"'{value}' is not a lock engine (allowed: {', '.join(LOCK_ENGINES)})")


LOCKS = _opts(
    "locks",
    O("locks", INT, "create N+1 user locks (0..N) for uwsgi.lock(n)", default=0),
    O("lock-engine", STRING, "lock engine: posixsem (default) or ipcsem (SysV)", default="posixsem", check=_check_lock_engine),
    O("ftok", PATH, "ipcsem: SysV keys are ftok(PATH, n) for lock n (reused, not private)"),
    O("persistent-ipcsem", FLAG, "ipcsem: do not remove the SysV sets at exit (use with ftok)"),
    O("thunder-lock", FLAG, "serialise accept() among the workers with a shared lock"),
)

ASYNC_MAX_CORES = 65536


def _check_async(value: int) -> None:
    if value > ASYNC_MAX_CORES:
        raise ValueProblem(f"{value} cores is too many (allowed: 0 for sync mode, 1 to {ASYNC_MAX_CORES})")


ASYNC = _opts(
    "async",
    O("async", INT, "async mode: each worker serves up to N requests at once (cores) on one event loop; 0 = sync", default=0, check=_check_async),
    O("greenlet", FLAG, "the greenlet suspend engine for async mode (built in; needs async = N); ugreen is taken as the same", aliases=("ugreen",)),
)

REGISTRY_TABLES = (CONFIG, PROCESS, SOCKETS, APP, PRIVILEGES, LOGGING, JAIL, HOOKS, LOCKS, ASYNC)
GROUP_ORDER = tuple(table[0].group for table in REGISTRY_TABLES)


# ---------------------------------------------------------------------------------------
# lookups


class Registry:
    """All options, by every name; built once at import."""

    def __init__(self, options: Iterable[Option]):
        self.options: tuple[Option, ...] = tuple(options)
        self.by_name: dict[str, Option] = {}
        self.by_short: dict[str, Option] = {}
        for opt in self.options:
            for name in opt.names:
                if name in self.by_name:
                    raise RuntimeError(f"option name {name!r} registered twice")
                self.by_name[name] = opt
            if opt.short:
                if opt.short in self.by_short:
                    raise RuntimeError(f"short option -{opt.short} registered twice")
                self.by_short[opt.short] = opt

    def get(self, name: str) -> Option | None:
        return self.by_name.get(name)

    def __getitem__(self, name: str) -> Option:
        return self.by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def suggest(self, name: str) -> str | None:
        """The registered name closest to a misspelled one, if any is close."""
        import difflib

        close = difflib.get_close_matches(name, self.by_name.keys(), n=1, cutoff=0.8)
        return close[0] if close else None

    def groups(self) -> list[tuple[str, list[Option]]]:
        grouped: dict[str, list[Option]] = {}
        for opt in self.options:
            grouped.setdefault(opt.group, []).append(opt)
        return [(g, grouped[g]) for g in GROUP_ORDER if g in grouped]


REGISTRY = Registry(opt for table in REGISTRY_TABLES for opt in table)


def current_platform() -> str:
    return FREEBSD if sys.platform.startswith("freebsd") else LINUX


def value_error(opt: Option, problem: Exception, origin) -> ConfigError:
    return ConfigError(str(problem), origin, opt.name)
