"""Hook phases and actions (UWSGI_SEMANTICS §2, §2.1; core/hooks.c).

`exec-<phase> = CMD` runs CMD through /bin/sh -c and a non-zero exit is fatal.
`hook-<phase> = action:args` runs one action; `!action:...` keeps the arguments out of the log.
Every hook is parsed and its action checked by plan_hooks(), before anything runs.
"""
from __future__ import annotations

import os
import socket
import stat
import sys
import time
from dataclasses import dataclass
from typing import Callable

from .errors import ConfigError, Origin
from .options import HOOK_PHASES

class HookFailed(Exception):
    """A hook of a fatal phase failed: the instance must not go on."""


@dataclass(frozen=True, slots=True)
class Hook:
    phase: str
    action: str       # "exec" for exec-* options
    args: str
    origin: Origin
    option: str
    hidden: bool = False

    def describe(self) -> str:
        shown = "<hidden>" if self.hidden else self.args
        return f"{self.action}:{shown} ({self.option}, {self.origin})"


@dataclass(frozen=True, slots=True)
class HookPlan:
    phases: dict[str, tuple[Hook, ...]]

    def for_phase(self, phase: str) -> tuple[Hook, ...]:
        return self.phases.get(phase, ())


# --- actions ------------------------------------------------------------------------------


def _sh(cmd: str) -> int:
    import subprocess  # imported by plan_hooks already, for a plan that runs commands

    return subprocess.run(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL).returncode


def act_exec(args: str) -> None:
    status = _sh(args)
    if status != 0:
        raise HookFailed(f"command exited with status {status}")


def act_safeexec(args: str) -> None:
    _sh(args)


def _file_and_text(args: str) -> tuple[str, str]:
    path, _, text = args.partition(" ")
    if not path:
        raise HookFailed("needs 'file text'")
    return path, text


def _writer(mode: str, newline: bool) -> Callable[[str], None]:
    def act(args: str) -> None:
        path, text = _file_and_text(args)
        with open(path, mode, encoding="utf-8") as f:
            f.write(text + ("\n" if newline else ""))
    return act


def act_mkdir(args: str) -> None:
    os.makedirs(args, exist_ok=True)


def act_chdir(args: str) -> None:
    os.chdir(args)


def act_putenv(args: str) -> None:
    key, eq, value = args.partition("=")
    if not eq:
        raise HookFailed("needs KEY=VALUE")
    os.environ[key] = value


def act_unlink(args: str) -> None:
    try:
        os.unlink(args)
    except FileNotFoundError:
        pass


def act_create(args: str) -> None:
    with open(args, "a"):
        pass


def act_chmod(args: str) -> None:
    path, _, mode = args.partition(" ")
    os.chmod(path, int(mode, 8))


def act_sticky(args: str) -> None:
    os.chmod(args, os.stat(args).st_mode | stat.S_ISVTX)


def act_chown(args: str) -> None:
    import grp
    import pwd

    path, _, rest = args.partition(" ")
    user, _, group = rest.strip().partition(" ")
    uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    gid = -1 if not group else int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    os.chown(path, uid, gid)


def act_print(args: str) -> None:
    print(args, file=sys.stderr, flush=True)


def act_hostname(args: str) -> None:
    socket.sethostname(args)


def act_exit(args: str) -> None:
    raise SystemExit(int(args) if args.strip().isdigit() else 0)


def _wait_for(check: Callable[[str], bool]) -> Callable[[str], None]:
    def act(args: str) -> None:
        deadline = time.monotonic() + 60   # uWSGI's default wait-for timeout
        while not check(args):
            if time.monotonic() > deadline:
                raise HookFailed(f"'{args}' did not appear within 60 s")
            time.sleep(0.1)
    return act


MOUNT_FLAGS = {
    "bind": "MS_BIND", "rec": "MS_REC", "recursive": "MS_REC", "private": "MS_PRIVATE",
    "shared": "MS_SHARED", "slave": "MS_SLAVE", "ro": "MS_RDONLY", "rdonly": "MS_RDONLY",
    "readonly": "MS_RDONLY", "nosuid": "MS_NOSUID", "nodev": "MS_NODEV", "noexec": "MS_NOEXEC",
    "noatime": "MS_NOATIME", "remount": "MS_REMOUNT", "move": "MS_MOVE", "sync": "MS_SYNCHRONOUS",
    "dirsync": "MS_DIRSYNC", "mandlock": "MS_MANDLOCK", "defaults": None,
}
UMOUNT_FLAGS = {"force": "MNT_FORCE", "detach": "MNT_DETACH", "rec": None, "recursive": None}


def _flag_bits(words: str, table: dict[str, str | None]) -> int:
    from . import _jail

    bits = 0
    for word in filter(None, words.split(",")):
        if word not in table:
            raise HookFailed(f"unknown flag '{word}' (allowed: {', '.join(sorted(table))})")
        if table[word]:
            bits |= _jail.MOUNT_FLAGS[table[word]]
    return bits


def act_mount(args: str) -> None:
    """mount:FSTYPE SOURCE TARGET [FLAGS [DATA]] through mount(2) (Linux; on FreeBSD the call
    fails with ENOSYS: use exec:mount -t ... there)."""
    from . import _jail

    words = args.split(None, 4)
    if len(words) < 3:
        raise HookFailed("needs 'fstype source target [flags [data]]'")
    fstype, source, target = words[:3]
    flags = _flag_bits(words[3], MOUNT_FLAGS) if len(words) > 3 else 0
    data = words[4] if len(words) > 4 else None
    _jail.mount(source, target, None if fstype in ("none", "") else fstype, flags, data)


def act_umount(args: str) -> None:
    from . import _jail

    target, _, flags = args.partition(" ")
    _jail.umount2(target, _flag_bits(flags.strip(), UMOUNT_FLAGS))


SHELL_ACTIONS = ("exec", "safeexec")          # the actions that run /bin/sh (subprocess)
ACTIONS: dict[str, Callable[[str], None]] = {
    "exec": act_exec, "safeexec": act_safeexec, "cd": act_chdir, "chdir": act_chdir,
    "mkdir": act_mkdir, "putenv": act_putenv, "unlink": act_unlink, "create": act_create,
    "creat": act_create, "write": _writer("w", False), "writen": _writer("w", True),
    "append": _writer("a", False), "appendn": _writer("a", True), "writefifo": _writer("w", False),
    "chmod": act_chmod, "sticky": act_sticky, "chown": act_chown, "print": act_print, "log": act_print,
    "hostname": act_hostname, "exit": act_exit, "mount": act_mount, "umount": act_umount,
    "wait_for_file": _wait_for(os.path.isfile), "wait_for_dir": _wait_for(os.path.isdir),
    "wait_for_fs": _wait_for(os.path.exists),
}


# --- planning and running -----------------------------------------------------------------


def _parse_hook(phase: str, option: str, raw: str, origin: Origin) -> Hook:
    text = raw
    hidden = text.startswith("!")
    if hidden:
        text = text[1:]
    action, colon, args = text.partition(":")
    action = action.strip()
    if not colon:
        raise ConfigError(f"'{raw}' is not action:arguments (actions: {', '.join(sorted(ACTIONS))})", origin, option)
    if action not in ACTIONS:
        raise ConfigError(f"unknown hook action '{action}' (allowed: {', '.join(sorted(ACTIONS))})", origin, option)
    return Hook(phase, action, args, origin, option, hidden)


def plan_hooks(config) -> HookPlan:
    """Every hook of every phase, checked before anything runs.  Within a phase uWSGI runs
    the hook-<phase> actions first, then the exec-<phase> commands, each in config order."""
    phases: dict[str, list[Hook]] = {}
    for phase in HOOK_PHASES:
        hooks = [_parse_hook(phase, e.name, e.value, e.origin) for e in config.entries_for(f"hook-{phase}")]
        hooks += [Hook(phase, "exec", e.value, e.origin, e.name) for e in config.entries_for(f"exec-{phase}")]
        phases[phase] = hooks
    if any(hook.action in SHELL_ACTIONS for hooks in phases.values() for hook in hooks):
        # subprocess (and the threading and locale modules it imports) only for a plan that
        # runs commands: every process of the instance would carry it.  Imported now, before
        # the jail and the privilege drop, after which the stdlib may not be readable.
        import subprocess  # noqa: F401
    return HookPlan({phase: tuple(hooks) for phase, hooks in phases.items()})


def run_phase(plan: HookPlan, phase: str, log: Callable[[str], None] | None = None) -> None:
    """Run a phase's hooks in order; the first failure raises HookFailed naming the hook."""
    for hook in plan.for_phase(phase):
        if log is not None:
            log(f"running hook {hook.describe()} [{phase}]")
        try:
            ACTIONS[hook.action](hook.args)
        except HookFailed as e:
            raise HookFailed(f"{hook.origin}: option '{hook.option}': {hook.action}:"
                             f"{'<hidden>' if hook.hidden else hook.args}: {e}") from None
        except OSError as e:
            raise HookFailed(f"{hook.origin}: option '{hook.option}': {hook.action}: {e}") from None
