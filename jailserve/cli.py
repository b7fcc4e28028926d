"""argv + config files -> Config -> the role to run (DESIGN §1).

Nothing here has side effects before build_plan() has validated the whole configuration.
"""
from __future__ import annotations

import os
import sys

from . import __version__
from .errors import ConfigError
from .options import REGISTRY, Option


def _print_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def option_usage(opt: Option) -> str:
    names = [f"--{n}" for n in opt.names] + ([f"-{opt.short}"] if opt.short else [])
    metavar = f" {opt.shape.metavar}" if opt.shape.takes_value and opt.shape.metavar else ""
    return ", ".join(names) + metavar


def help_text() -> str:
    """--help, grouped as the registry groups options."""
    lines = [f"usage: python -m jailserve [options] [config.ini ...]   (jailserve {__version__})", ""]
    for group, options in REGISTRY.groups():
        lines.append(f"{group}:")
        for opt in options:
            usage = option_usage(opt)
            extra = " (repeatable)" if opt.repeat else ""
            if opt.default not in (None, False, ""):
                extra += f" [default: {opt.default}]"
            lines.append(f"  {usage:<44} {opt.help}{extra}")
        lines.append("")
    return "\n".join(lines)


def show_config(config) -> str:
    """uWSGI's --show-config: every entry of the option list, in order, as an ini section."""
    out = [";uWSGI instance configuration", "[uwsgi]"]
    out.extend(f"{key} = {value}" for key, value in config.listing)
    out.append(";end of configuration")
    return "\n".join(out)


def check_report(config, plan) -> str:
    out = ["options (value  <- where it came from):"]
    for entry in config.entries:
        if entry.option.immediate or entry.option.group == "config language":
            continue
        spelled = f" (as '{entry.spelled}')" if entry.spelled and entry.spelled != entry.name else ""
        out.append(f"  {entry.name} = {entry.raw}  <- {entry.origin}{spelled}")
    for key, value in config.placeholders.items():
        out.append(f"  %({key}) = {value}  (placeholder)")
    out.append("")
    out.append(f"start-up plan ({config.platform}{', reload' if config.is_reload else ''}):")
    number = 0
    for step in plan.describe():
        if step.startswith(" "):       # a detail of the step above (the jail backend's calls)
            out.append(f"     {step}")
            continue
        number += 1
        out.append(f"  {number}. {step}")
    out.append("configuration OK")
    return "\n".join(out)


def list_jails_text() -> str:
    from .jail import backend_for

    rows = backend_for().list_jails()
    out = [f"{'JID':>7}  {'NAME':<16} {'HOSTNAME':<20} {'ROOT':<28} ADDRESSES / PROCESSES"]
    for row in rows:
        get = row.get if isinstance(row, dict) else (lambda k, d=None: getattr(row, k, d))
        addrs = ",".join(str(a) for a in (get("addresses") or [])) or "-"
        out.append(f"{get('jid')!s:>7}  {get('name') or '-':<16} {get('hostname') or '-':<20} "
                   f"{get('root') or '-':<28} {addrs} / {get('processes', '-')}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from .config import load_config
    from .plan import build_plan

    try:
        config = load_config(argv, os.environ)
        for warning in config.warnings:
            _print_err(f"jailserve: warning: {warning}" if warning.origin or warning.option else str(warning))
        if config.get("help"):
            print(help_text())
            return 0
        if config.get("version"):
            print(f"jailserve {__version__}")
            return 0
        if config.get("jls"):
            print(list_jails_text())
            return 0
        plan = build_plan(config)
    except ConfigError as e:
        _print_err(str(e))
        return 1
    if config.get("show-config"):
        print(show_config(config), flush=True)
    if config.get("check"):
        print(check_report(config, plan))
        return 0
    from .startup import run

    return run(plan)
