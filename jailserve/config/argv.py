"""The command line, as uWSGI's getopt_long table built from every option (UWSGI_SEMANTICS §1.4).

`--name value`, `--name=value`, flags without a value, unambiguous prefixes of long names
(getopt_long accepts them), short options (`-p 4`, `-p4`, `-M`, clustered `-MT`) and `--`.
Positional arguments are config files, read after every dash option whatever their place.

One deliberate difference: `-jail-ip4 1.2.3.4` (a single dash before a long name, as in
uWSGI's FreeBSD jails guide) is the long option here; uWSGI's getopt reads it as `-j ail-ip4`.
A warning says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CLI, ConfigError
from ..options import REGISTRY, Option


@dataclass
class CommandLine:
    options: list[tuple[str, str]] = field(default_factory=list)   # (name as written, value)
    positionals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)                 # warnings about the spelling


def _unknown(name: str) -> ConfigError:
    from .loader import NOT_SUPPORTED

    if name in NOT_SUPPORTED:
        return ConfigError(f"not supported by jailserve: {NOT_SUPPORTED[name]}", CLI, name)
    hint = REGISTRY.suggest(name)
    more = f" (did you mean '--{hint}'?)" if hint else ""
    return ConfigError(f"unknown option{more}", CLI, name)


def _long_lookup(name: str) -> tuple[str, Option]:
    opt = REGISTRY.get(name)
    if opt is not None:
        return name, opt
    matches = sorted({n for n in REGISTRY.by_name if n.startswith(name)})
    owners = {REGISTRY[n].name for n in matches}
    if len(owners) == 1 and name:
        return matches[0], REGISTRY[matches[0]]
    if len(owners) > 1:
        raise ConfigError(f"ambiguous abbreviation (could be: {', '.join('--' + m for m in matches[:6])})", CLI, name)
    raise _unknown(name)


def _value_for(opt: Option, spelled: str, inline: str | None, rest: list[str]) -> str:
    """The argument of a long option; consumes from `rest` when it takes a separate one."""
    if not opt.shape.takes_value:
        return "" if inline is None else inline
    if inline is not None:
        return inline
    if opt.shape.optional_value:
        return ""
    if not rest:
        raise ConfigError("requires a value on the command line", CLI, spelled)
    return rest.pop(0)


def parse_argv(argv: list[str]) -> CommandLine:
    result = CommandLine()
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            result.positionals.extend(rest)
            break
        if arg.startswith("--"):
            name, eq, inline = arg[2:].partition("=")
            spelled, opt = _long_lookup(name)
            result.options.append((spelled, _value_for(opt, spelled, inline if eq else None, rest)))
        elif arg.startswith("-") and len(arg) > 1:
            _parse_single_dash(arg, rest, result)
        else:
            result.positionals.append(arg)
    return result


def _parse_single_dash(arg: str, rest: list[str], result: CommandLine) -> None:
    body = arg[1:]
    name, eq, inline = body.partition("=")
    if len(name) > 1 and name in REGISTRY:
        opt = REGISTRY[name]
        result.notes.append(f"'-{name}' read as '--{name}' (uWSGI's getopt would read it as short options)")
        result.options.append((name, _value_for(opt, name, inline if eq else None, rest)))
        return
    i = 0
    while i < len(body):
        letter = body[i]
        opt = REGISTRY.by_short.get(letter)
        if opt is None:
            raise ConfigError(f"unknown short option -{letter}", CLI, f"-{letter}")
        i += 1
        if not opt.shape.takes_value:
            result.options.append((opt.name, ""))
            continue
        if i < len(body):
            result.options.append((opt.name, body[i:]))
        elif opt.shape.optional_value:
            result.options.append((opt.name, ""))
        elif rest:
            result.options.append((opt.name, rest.pop(0)))
        else:
            raise ConfigError("requires a value on the command line", CLI, f"-{letter}")
        return
