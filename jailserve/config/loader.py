"""From environment, command line and files to a validated Config (UWSGI_SEMANTICS §1.1).

Order, as uWSGI: UWSGI_* environment options, then the command line (files named by
--ini/--include/positionals are read when they are reached; positionals after every dash
option), then the $(), @(), %() passes over values not applied yet, then every entry is
applied in list order; `inherit` appends its file's entries at the end.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from ..errors import CLI, ENV, ConfigError, Origin
from ..options import REGISTRY, Option, ValueProblem, current_platform, parse_keyval
from . import expand
from .argv import CommandLine, parse_argv
from .ini import IniReader
from .logic import ELSE_KEYWORD, END_KEYWORD, FOR_KEYWORDS, IF_KEYWORDS, Block, BlockStack, for_items, make_if_test
from .magic import MagicContext
from .model import Config, Entry, Warning_

# uWSGI's internal environment variables, never options (core/utils.c parse_sys_envs)
INTERNAL_ENV = {
    "UWSGI_RELOADS", "UWSGI_VASSALS_DIR", "UWSGI_EMPEROR_FD", "UWSGI_BROODLORD_NUM",
    "UWSGI_EMPEROR_FD_CONFIG", "UWSGI_EMPEROR_PROXY", "UWSGI_JAIL_PID", "UWSGI_ORIGINAL_PROC_NAME",
}
ENV_PREFIX = "UWSGI_"   # JAILSERVE_* variables are jailserve's own (reload state, build switches)
RELOAD_ENV = "UWSGI_RELOADS"

# uWSGI options jailserve does not have, whose silent loss would change what the config means.
NOT_SUPPORTED = {
    "http": "uWSGI's HTTP router process; jailserve workers serve HTTP themselves: use http-socket",
    "https": "uWSGI's HTTPS router; put a TLS front end (nginx) before http-socket",
    "xml": "only ini configuration files are supported", "yaml": "only ini configuration files are supported",
    "json": "only ini configuration files are supported", "emperor": "the Emperor is not implemented yet",
    "daemonize": "run jailserve under a supervisor (systemd) instead", "namespace": "use jail (Linux namespaces)",
    "unshare": "use jail (Linux namespaces)", "pivot-root": "use jail (pivot_root is done for you)",
    "chroot": "use jail (pivot_root; chroot is escapable)", "static-map": "serve static files from the front end",
    "route": "uWSGI's internal routing is not implemented", "spooler": "the spooler is not implemented",
    "mule": "mules are not implemented", "cron": "use the system's cron", "attach-daemon": "not implemented",
    "gevent": "use async = N with greenlet = true", "ugreen": "use async = N with greenlet = true",
    "cheaper": "adaptive process spawning is not implemented",
}
# uWSGI options that only tune what jailserve does differently anyway: accepted, with a warning.
IGNORED = {
    "memory-report", "post-buffering", "harakiri-verbose", "need-app", "thunder-lock-watchdog",
    "offload-threads", "no-orphans", "auto-procname", "procname-prefix", "procname-prefix-spaced",
    "procname", "procname-master", "max-vars", "log-date", "logdate", "log-5xx", "log-4xx", "log-slow",
    "log-big", "log-x-forwarded-for", "py-autoreload", "python-autoreload", "optimize", "cpu-affinity",
}
PLACEHOLDER_OPTIONS = {"set-placeholder"}


@dataclass
class Item:
    key: str              # as written (alias, placeholder name...)
    value: str
    origin: Origin
    option: Option | None
    applied: bool = False  # immediate options ran at add time


@dataclass
class Collector:
    environ: Mapping[str, str]
    is_reload: bool
    items: list[Item] = field(default_factory=list)
    warnings: list[Warning_] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    strict: bool = False
    placeholder_only: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.magic = MagicContext()
        self.reader = IniReader(self.magic, self.warn)
        self.blocks = BlockStack(self.warn)
        self.file_stack: list[str] = []
        self.next_file_id = 1

    def warn(self, message: str, origin: Origin | None = None, option: str | None = None) -> None:
        self.warnings.append(Warning_(message, origin, option))

    # --- adding -------------------------------------------------------------------------

    def add(self, key: str, value: str, origin: Origin, file_id: int = 0) -> None:
        """One (key, value) line from any source, through the open logic blocks."""
        opt = REGISTRY.get(key)
        name = opt.name if opt else None
        if name == END_KEYWORD:
            self.blocks.close(origin, file_id)
            self._record_keyword(key, value, origin, opt)
            return
        if name == ELSE_KEYWORD:
            self._record_keyword(key, value, origin, opt)
            self.blocks.flip_else(origin, file_id)
            return
        if name in IF_KEYWORDS or name in FOR_KEYWORDS:
            self._record_keyword(key, value, origin, opt)
            self._open_block(name, value, origin, file_id)
            return
        for each in self.blocks.expand(value, origin):
            self._take(key, each, origin, opt)

    def _record_keyword(self, key: str, value: str, origin: Origin, opt: Option) -> None:
        """Logic keywords appear in the entry list (and --show-config) where uWSGI shows them:
        when the lines around them are taken."""
        if self.blocks.active():
            self.items.append(Item(key, value, origin, opt, applied=True))

    def _open_block(self, keyword: str, arg: str, origin: Origin, file_id: int) -> None:
        if not self.blocks.active():
            # inside a false block: still track nesting so the right endif closes it
            self.blocks.open(Block(keyword, arg, origin, file_id, test=lambda: (False, "")))
            return
        if keyword in FOR_KEYWORDS:
            self.blocks.open(Block(keyword, arg, origin, file_id, items=for_items(keyword, arg, origin)))
            return
        if keyword in ("if-reload", "if-not-reload") and arg.strip():
            self.warn("takes no argument; the value is ignored", origin, keyword)
        if keyword in ("if-exists", "if-not-exists", "if-file", "if-not-file", "if-dir", "if-not-dir",
                       "if-env", "if-not-env", "if-opt", "if-not-opt") and not arg.strip():
            raise ConfigError("needs an argument", origin, keyword)
        test = make_if_test(keyword, arg, self.environ, self.first_value, self.is_reload)
        self.blocks.open(Block(keyword, arg, origin, file_id, test=test))

    def _take(self, key: str, value: str, origin: Origin, opt: Option | None) -> None:
        if opt is not None and opt.immediate:
            self._immediate(opt, key, value, origin)
            return
        self.items.append(Item(key, value, origin, opt))

    def _immediate(self, opt: Option, key: str, value: str, origin: Origin) -> None:
        """Options uWSGI runs the moment they are added (UWSGI_OPT_IMMEDIATE)."""
        self.items.append(Item(key, value, origin, opt, applied=True))
        if opt.name in ("ini", "include"):
            self.load_file(value, origin)
        elif opt.name in ("set", "set-placeholder"):
            try:
                k, v = parse_keyval(value)
            except ValueProblem as e:
                raise ConfigError(str(e), origin, opt.name) from None
            if opt.name == "set-placeholder":
                if k in REGISTRY:
                    raise ConfigError(f"'{k}' is an option name, not a placeholder (use set)", origin, opt.name)
                self.placeholder_only.add(k)
            self._take(k, v, origin, REGISTRY.get(k))
        elif opt.name == "strict":
            self.strict = True
        elif opt.name == "print":
            self.warnings.append(Warning_(value, None, None))  # shown with the warnings, in order

    # --- files --------------------------------------------------------------------------

    def load_file(self, given: str, origin: Origin | None) -> None:
        real = os.path.realpath(self.reader.resolve(given, origin)[0])
        if real in self.file_stack:
            chain = " -> ".join(self.file_stack + [real])
            raise ConfigError(f"include loop: {chain}", origin)
        ini = self.reader.read(given, origin)
        if not ini.found_section:
            self.warn(f"section [{ini.section}] not found in {ini.path}", origin)
        self.files.append(ini.path)
        file_id = self.next_file_id
        self.next_file_id += 1
        self.file_stack.append(real)
        try:
            for line in ini.lines:
                self.add(line.key, line.value, line.origin, file_id)
            still_open = self.blocks.open_in_file(file_id)
            if still_open is not None:
                raise ConfigError(f"block opened here is not closed by an endif before the end of {ini.path}",
                                  still_open.origin, still_open.keyword)
        finally:
            self.file_stack.pop()

    # --- lookups ------------------------------------------------------------------------

    def first_value(self, key: str) -> str | None:
        """The value of the first entry named `key`, as uWSGI's placeholder lookup."""
        for item in self.items:
            if item.key == key:
                return item.value
        return None


def collect(argv: list[str], environ: Mapping[str, str]) -> tuple[Collector, CommandLine]:
    is_reload = RELOAD_ENV in environ
    col = Collector(environ, is_reload)
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var in INTERNAL_ENV:
            continue
        col.add(var[len(ENV_PREFIX):].lower().replace("_", "-"), value, ENV)
    cmdline = parse_argv(argv)
    for note in cmdline.notes:
        col.warn(note, CLI)
    for key, value in cmdline.options:
        col.add(key, value, CLI)
    for path in cmdline.positionals:
        if path.endswith((".py", ".wsgi")):
            col.add("wsgi-file", path, CLI)   # the python plugin's magic argument
        elif path.rsplit(":", 1)[0].endswith(".ini") or path == "-":
            col.load_file(path, CLI)
        else:
            raise ConfigError(f"'{path}': only .ini configuration files are supported (or a .py/.wsgi app file)", CLI)
    if col.blocks.blocks:
        block = col.blocks.blocks[-1]
        raise ConfigError("block is not closed by an endif", block.origin, block.keyword)
    return col, cmdline


def run_passes(col: Collector) -> None:
    """$() then @() then %(), over every value not applied yet, in list order."""
    pending = [item for item in col.items if not item.applied]
    for item in pending:
        unresolved: list[str] = []
        item.value = expand.expand_env(item.value, col.environ, unresolved)
        for ref in unresolved:
            col.warn(f"environment reference {ref} is not set; kept as text", item.origin, item.key)
    for item in pending:
        item.value = expand.expand_files(item.value, item.origin, item.key)
    for item in pending:
        unresolved = []
        item.value = expand.expand_placeholders(item.value, col.first_value, unresolved)
        for ref in unresolved:
            col.warn(f"placeholder {ref} is not defined; kept as text", item.origin, item.key)


def apply_inherits(col: Collector) -> None:
    """inherit = file: its entries go at the end, unexpanded (uWSGI's passes already ran)."""
    done = 0
    while True:
        pending = [i for i in col.items[done:] if i.option is not None and i.option.name == "inherit" and not i.applied]
        if not pending:
            return
        for item in pending:
            item.applied = True
            start = len(col.items)
            col.load_file(item.value, item.origin)
            for added in col.items[start:]:
                if "%(" in added.value and not added.applied:
                    col.warn("an inherited file's %(...) placeholders are not expanded (as in uWSGI); kept as text",
                             added.origin, added.key)
        done = 0


def build_entries(col: Collector, platform: str) -> tuple[list[Entry], dict[str, str]]:
    referenced: set[str] = set()
    for item in col.items:
        referenced |= expand.referenced_names(item.value)
        if item.option is not None and item.option.name in ("if-opt", "if-not-opt"):
            referenced.add(item.value.partition("=")[0])
    entries: list[Entry] = []
    placeholders: dict[str, str] = {}
    from_cli: dict[str, Item] = {}
    for item in col.items:
        if item.option is None:
            _unknown_key(col, item, referenced)
            placeholders.setdefault(item.key, item.value)
            continue
        opt = item.option
        if platform not in opt.platforms:
            raise ConfigError(f"not supported on {platform} (only on {', '.join(sorted(opt.platforms))})", item.origin, opt.name)
        try:
            value = opt.parse(item.value)
        except ValueProblem as e:
            raise ConfigError(str(e), item.origin, opt.name) from None
        if opt.name == "plugin":
            _check_plugins(col, item)
        entries.append(Entry(opt.name, item.value, value, item.origin, item.key))
        _warn_cli_overridden(col, item, from_cli)
    return entries, placeholders


BUILT_IN_PLUGINS = {"python", "python3", "greenlet"}   # python3X too (python311, python312...)
PLUGIN_INSTEAD = {"gevent": "async = N with greenlet = true", "ugreen": "async = N with greenlet = true",
                  "asyncio": "async = N with greenlet = true", "http": "http-socket (no router process)"}


def _check_plugins(col: Collector, item: Item) -> None:
    """uWSGI loads plugins by name; jailserve has python and greenlet built in."""
    for name in filter(None, (w.strip() for w in item.value.split(","))):
        if name in BUILT_IN_PLUGINS or (name.startswith("python3") and name[7:].isdigit()):
            continue
        if name in PLUGIN_INSTEAD:
            raise ConfigError(f"plugin '{name}' is not available (use {PLUGIN_INSTEAD[name]})", item.origin, "plugin")
        col.warn(f"plugin '{name}' is not part of jailserve; its options are unknown here", item.origin, "plugin")


def _warn_cli_overridden(col: Collector, item: Item, from_cli: dict[str, Item]) -> None:
    """uWSGI reads positional config files after every dash option, so their scalars win."""
    opt = item.option
    if opt.repeat or opt.immediate:
        return
    if item.origin == CLI:
        from_cli[opt.name] = item
    elif opt.name in from_cli and item.origin.is_file:
        col.warn(f"overrides '{from_cli.pop(opt.name).value}' from the command line: uWSGI applies "
                 "config files named as arguments after every dash option, and so does jailserve",
                 item.origin, opt.name)


def _unknown_key(col: Collector, item: Item, referenced: set[str]) -> None:
    key = item.key
    if key in NOT_SUPPORTED:
        raise ConfigError(f"not supported by jailserve: {NOT_SUPPORTED[key]}", item.origin, key)
    if key in IGNORED:
        col.warn("uWSGI tuning option without an effect in jailserve; ignored", item.origin, key)
        return
    if key in referenced or key in col.placeholder_only:
        return
    if col.strict:
        raise ConfigError("unknown option (strict mode)", item.origin, key)
    suggestion = REGISTRY.suggest(key)
    if suggestion:
        raise ConfigError(f"unknown option (did you mean '{suggestion}'?)", item.origin, key)
    col.warn("unknown key kept as a placeholder (uWSGI does the same); it is never used", item.origin, key)


def load_config(argv: list[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate every source; raises ConfigError with file, line and option."""
    environ = dict(os.environ if environ is None else environ)
    col, cmdline = collect(argv, environ)
    run_passes(col)
    apply_inherits(col)
    platform = current_platform()
    for item in col.items:
        if item.option is not None and item.option.name == "check-platform":
            platform = item.value.strip()
            if platform not in ("linux", "freebsd"):
                raise ConfigError(f"'{platform}' is not a platform (allowed: linux, freebsd)", item.origin, "check-platform")
    entries, placeholders = build_entries(col, platform)
    listing = [(i.key, "true" if i.origin == CLI and i.option is not None and not i.option.shape.takes_value
                else i.value) for i in col.items]
    return Config(entries, placeholders, col.warnings, list(argv), col.is_reload, col.files, platform, listing)
