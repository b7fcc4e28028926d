"""Async mode (`async = N`, `greenlet`): validation and the plan the worker runs.

The hub itself is Cython (`_core.serve_async`, docs/internals.md "Greenlet hub"); this module
is its pure Python side:

* `plan_async(config) -> AsyncPlan` checks the async options before any side effect
  (DESIGN §1 "no side effect before validation"); `startup.build_plan` calls it.
* `AsyncPlan.describe()` is the line `--check` prints.

uWSGI (UWSGI_SEMANTICS §11): `async = N` gives each worker N cores; a suspend engine switches
between them.  The greenlet engine is selected with `greenlet` (the greenlet plugin's flag;
`ugreen` is taken as the same: jailserve has one engine) or by loading the plugin
(`plugin = greenlet`, `plugins = python,greenlet`); without `async` uWSGI refuses it: "the
greenlet suspend engine requires async mode".  `async = N` alone runs the greenlet hub too
(uWSGI would run its engine-less async loop, which only serves apps written for it).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

ENGINE = "greenlet"


@dataclass(frozen=True)
class AsyncPlan:
    cores: int                    # requests in the app at once per worker; 0 = sync mode
    engine: str | None            # "greenlet" in async mode, None in sync mode

    @property
    def enabled(self) -> bool:
        return self.cores > 0

    def describe(self) -> str:
        if not self.enabled:
            return "sync mode: one request at a time per worker"
        return f"async mode: {self.cores} cores per worker, {self.engine} suspend engine"


def _plugin_origin(config):
    """The origin of the first plugin entry naming greenlet, or None."""
    for entry in config.entries_for("plugin"):
        words = [w.strip().lower() for w in str(entry.value).replace(",", " ").split()]
        if ENGINE in words:
            return entry.origin
    return None


def plan_async(config) -> AsyncPlan:
    """Validate `async`, `greenlet` and a greenlet plugin; raise ConfigError on a bad mix."""
    cores = config.get("async")
    flag = config.get("greenlet")
    plugin_origin = _plugin_origin(config)
    if (flag or plugin_origin is not None) and cores < 1:
        origin, option = (config.origin("greenlet"), "greenlet") if flag else (plugin_origin, "plugin")
        raise ConfigError("the greenlet suspend engine requires async mode (set async = N, N >= 1)",
                          origin, option)
    if cores < 1:
        return AsyncPlan(0, None)
    try:
        import greenlet  # noqa: F401
    except ImportError:
        raise ConfigError("async mode needs the greenlet package (pip install greenlet)",
                          config.origin("async"), "async") from None
    return AsyncPlan(cores, ENGINE)
