"""The jail backend interface: one picker, nothing else (STYLE.md: psutil, selectors).

Every backend module (jail/freebsd.py, jail/linux.py) provides the same functions:
  create(spec)        make the jail and enter it; returns in the process that goes on with
                      the start-up, inside the jail (Linux: the keeper stays outside and
                      never returns from create)
  attach(spec)        enter the live jail named by spec.attach (jid or name)
  describe(spec)      the system calls / steps create or attach would make, as lines (pure)
  list_jails()        live jails, for --jls

`configured(config)` says whether a config asks for a jail at all: without a jail option no
jail code is needed, and plan.build_plan imports jail.spec (with FreeBSD's parameter table)
only when one is set.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..options import FREEBSD, LINUX, current_platform

JAIL_OPTIONS = ("jail", "jail-ip4", "jail-ip6", "jail2", "jail-attach", "jidfile")

_MODULES = {FREEBSD: "jailserve.jail.freebsd", LINUX: "jailserve.jail.linux"}


def backend_for(platform: str | None = None) -> ModuleType:
    """The backend module for a platform (default: the one we run on)."""
    return importlib.import_module(_MODULES[platform or current_platform()])


def configured(config) -> bool:
    """Whether any jail option is set (jail.spec.build_spec returns None otherwise)."""
    return any(config.has(name) for name in JAIL_OPTIONS)
