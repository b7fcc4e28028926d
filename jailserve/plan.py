"""Validation of a whole Config, and the start-up plan that --check prints (DESIGN §3 step 2).

build_plan() is the last step before any side effect: every area's pure planner runs here
and raises ConfigError for bad input, so a wrong config exits 1 with nothing done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import apps, greenlet_hub, hooks, locks, privileges, sockets
from .config import Config
from .errors import ConfigError
from .jail import backend_for
from .jail import configured as jail_configured

if TYPE_CHECKING:
    from .jail.spec import JailSpec


@dataclass(frozen=True)
class Plan:
    config: Config
    jail: JailSpec | None
    sockets: list[Any]
    hooks: hooks.HookPlan
    app: Any
    concurrency: greenlet_hub.AsyncPlan

    def describe(self) -> list[str]:
        """The start-up steps in the order startup.run carries them out."""
        cfg = self.config
        steps: list[str] = []
        first = "" if not cfg.is_reload else " (skipped: this is a reload)"

        def hook_steps(phase: str, note: str = "") -> None:
            for hook in self.hooks.for_phase(phase):
                steps.append(f"hook {phase}: {hook.describe()}{note}")

        hook_steps("asap")
        if cfg.get("pidfile"):
            steps.append(f"write pidfile {cfg.get('pidfile')}{first}")
        for spec in self.sockets:
            if getattr(spec, "shared", False):
                steps.append(f"bind shared socket {spec.describe()}{first}")
        hook_steps("pre-jail", first)
        if self.jail is not None:
            steps.append(f"jail ({cfg.platform}){first}:")
            steps.extend(f"    {line}" for line in backend_for(cfg.platform).describe(self.jail))
        hook_steps("in-jail")
        if self.jail is not None or cfg.get("jailed"):
            hook_steps("post-jail", first)   # uWSGI: in-jail at uwsgi_start, post-jail in uwsgi_as_root
        hook_steps("as-root")
        uid, gid = cfg.get("uid"), cfg.get("gid")
        if uid or gid:
            steps.append(f"drop privileges: gid={gid or '-'} uid={uid or '-'}"
                         f"{'' if cfg.get('no-initgroups') else ' (with initgroups)'}")
        hook_steps("as-user")
        for spec in self.sockets:
            if not getattr(spec, "shared", False):
                steps.append(f"bind {spec.describe()}")
        hook_steps("pre-app")
        steps.append(f"load {self.app.describe()}")
        hook_steps("post-app")
        workers = cfg.get("processes")
        steps.append(f"fork {workers} worker{'s' if workers != 1 else ''}"
                     f"{' supervised by the master' if cfg.get('master') else ' (no master)'}"
                     f"; {self.concurrency.describe()}")
        return steps


def build_plan(config: Config) -> Plan:
    jail_spec = _jail_spec(config)
    socket_specs = sockets.plan_sockets(config)
    hook_plan = hooks.plan_hooks(config)
    app = apps.plan_app(config)
    privileges.plan_drop(config)          # uid/gid words checked now; names resolve inside the jail
    concurrency = greenlet_hub.plan_async(config)
    if not socket_specs:
        raise ConfigError("no socket to serve on (allowed: http-socket, http11-socket or socket)",
                          None, "http-socket")
    locks.LockPlan(config)                # the lock options; imports what the lock engine needs
    return Plan(config, jail_spec, socket_specs, hook_plan, app, concurrency)


def _jail_spec(config: Config) -> JailSpec | None:
    if not jail_configured(config):
        return None
    # The jail planner and FreeBSD's parameter table only for a config with a jail option;
    # imported here, before any jail exists: inside one the stdlib may not be readable.
    from .jail.spec import build_spec

    return build_spec(config)
