"""Locks shared by the processes of one instance (UWSGI_SEMANTICS §5, FREEBSD_JAILS §5).

Two engines over `_jail`'s semaphores, both made by the master before it forks:

- `posixsem` (default): unnamed process-shared POSIX semaphores in anonymous shared
  mappings.  Nothing has a name, so nothing can be left behind: the kernel frees the
  mappings with the last process.  POSIX semaphores have no SEM_UNDO, so each one sits
  beside the pid of its holder and the master, told that a worker died, releases what that
  pid held (`release_dead`).
- `ipcsem` (`lock-engine = ipcsem`): one SysV set of one semaphore per lock, operated with
  SEM_UNDO so the kernel releases a dying holder's lock.  SysV sets outlive their creator,
  so their ids are written to a registry file (docs/locks.md; `lock_registry`): `cleanup()`
  removes them at every exit, and the next start removes what a killed master left.

Locks: `locks = N` gives user locks 0..N; `thunder-lock` adds one more, taken around
accept() (`accept_lock`/`accept_unlock`).  The module-level functions act on the lock set
`setup()` made; the master and the `uwsgi` module call them.
"""
from __future__ import annotations

import atexit
import errno
import os
from collections.abc import Callable

from . import _jail, log, privileges
from .errors import ConfigError
from .options import LOCK_ENGINES

DEFAULT_ENGINE = "posixsem"
SYSV_MODE = 0o600                     # uWSGI uses 0666; the sets are chowned to uid instead
FTOK_MAX = 255                        # ftok uses the low 8 bits of its project id


class LockError(Exception):
    """The locks could not be made or used as configured; the instance must not go on."""


# ---------------------------------------------------------------------------------------
# plan: everything checked before anything is made


class LockPlan:
    """What `setup` makes, read from the config once (pure: no side effect)."""

    def __init__(self, config):
        self.engine = (config.get("lock-engine") or DEFAULT_ENGINE).strip()
        self.user_locks = config.get("locks") + 1          # uWSGI: locks = N gives 0..N
        self.thunder = bool(config.get("thunder-lock"))
        self.ftok = config.get("ftok")
        self.persistent = bool(config.get("persistent-ipcsem"))
        self.drop = privileges.plan_drop(config)
        self.argv = config.argv             # ipcsem: names this instance's registry file
        if self.engine == "ipcsem":
            # The registry of SysV sets (hashlib, json, tempfile) is imported for ipcsem only.
            # plan.build_plan makes a LockPlan before the jail, while the stdlib is readable.
            from . import lock_registry  # noqa: F401
        self._origins = {name: config.origin(name) for name in ("lock-engine", "ftok", "locks")}
        self._check()

    @property
    def total(self) -> int:
        return self.user_locks + (1 if self.thunder else 0)

    def error(self, option: str, message: str) -> ConfigError:
        return ConfigError(message, self._origins.get(option), option)

    def _check(self) -> None:
        if self.engine not in LOCK_ENGINES:      # the option's own check already says this
            raise self.error("lock-engine", f"'{self.engine}' is not a lock engine (allowed: {', '.join(LOCK_ENGINES)})")
        if self.engine == "ipcsem" and self.ftok and self.total > FTOK_MAX:
            raise self.error("locks", f"{self.total} locks with ftok: at most {FTOK_MAX} (ftok keys use 8 bits of the lock number)")


# ---------------------------------------------------------------------------------------
# engines: index -> acquire/release; the lock set adds numbering, thunder and cleanup


class SplitEngine:
    """Lock i of the set, whatever the engine: user locks live in one array object and
    internal ones (the thunder lock) in another, so that the user array's own range check
    (an IndexError that is a ValueError) is uwsgi.lock(n)'s, and its C methods wait/post
    can be handed out as lock/unlock with no Python frame per call."""

    name = ""

    def _split(self, user, internal, n_user: int, n_internal: int) -> None:
        self.user, self.internal = user, internal
        self.arrays = [user] * n_user + [internal] * n_internal
        self.offsets = list(range(n_user)) + list(range(n_internal))

    def acquire(self, i: int, restart: bool = True) -> bool:
        return self.arrays[i].wait(self.offsets[i], restart=restart)   # False: a signal came

    def release(self, i: int) -> bool:
        return self.arrays[i].post(self.offsets[i])   # False when this process does not hold it

    def fast_ops(self) -> tuple[Callable, Callable]:
        return self.user.wait, self.user.post

    def is_locked(self, i: int) -> bool:
        return self.arrays[i].value(self.offsets[i]) == 0

    def release_dead(self, i: int, pid: int) -> bool:
        return self.arrays[i].release_dead(self.offsets[i], pid)


class PosixSemEngine(SplitEngine):
    """_jail.SharedSemaphores: sem_init(pshared=1) slots, each beside its holder's pid."""

    name = "posixsem"

    def __init__(self, user: int, total: int):
        internal = _jail.SharedSemaphores(total - user) if total > user else None
        self._split(_jail.SharedSemaphores(user), internal, user, total - user)

    def release_dead(self, i: int, pid: int) -> bool:
        # No SEM_UNDO for POSIX semaphores: the master posts for the dead holder.  post()
        # clears the holder word by compare-and-swap first, so this never double-posts.
        return self.arrays[i].post(self.offsets[i], pid)

    def close(self, remove: bool) -> None:
        # anonymous memory: nothing to remove, nothing outlives the processes
        for sems in (self.user, self.internal):
            if sems is not None:
                sems.close()


class IpcSemEngine(SplitEngine):
    """One SysV set of one semaphore per lock, SEM_UNDO on every operation (uWSGI's ipcsem),
    driven by _jail.SysVLocks (holder words: unlock by a non-holder is refused, and a holder
    that died is reported exactly once, by whoever takes the lock first after it)."""

    name = "ipcsem"

    def __init__(self, plan: LockPlan, on_dead_holder: Callable[[int, int], None]):
        self.semids: list[int] = []
        self.keyed = bool(plan.ftok)
        self.user = self.internal = None
        try:
            for i in range(plan.total):
                self._make(plan, i)
            n_user = plan.user_locks
            user = _jail.SysVLocks(self.semids[:n_user], on_dead_holder)
            internal = None
            if plan.total > n_user:
                internal = _jail.SysVLocks(self.semids[n_user:], lambda i, pid: on_dead_holder(n_user + i, pid))
            self._split(user, internal, n_user, plan.total - n_user)
        except BaseException:
            self.close(remove=True)
            raise

    def _make(self, plan: LockPlan, i: int) -> None:
        if plan.ftok:
            # uWSGI: ftok(path, n) with n = 1, 2, ...; IPC_CREAT without EXCL reuses a set
            try:
                key = _jail.ftok(plan.ftok, i + 1)
            except OSError as e:
                raise plan.error("ftok", f"ftok({plan.ftok!r}): {e.strerror}") from None
            flags = _jail.IPC_CREAT | SYSV_MODE
        else:
            key, flags = _jail.IPC_PRIVATE, _jail.IPC_CREAT | _jail.IPC_EXCL | SYSV_MODE
        try:
            semid = _jail.semget(key, 1, flags)
        except OSError as e:
            raise sysv_error(e, plan) from None
        self.semids.append(semid)         # kept before SETVAL: a failure still removes it
        _jail.semctl(semid, 0, _jail.SETVAL, 1)

    def chown(self, uid: int | None, gid: int | None) -> None:
        for semid in self.semids:
            _jail.sem_set_owner(semid, -1 if uid is None else uid, -1 if gid is None else gid)

    def registry_sets(self) -> list[dict]:
        return [set_identity(semid) for semid in self.semids]

    def close(self, remove: bool) -> list[int]:
        """Remove the sets when `remove`; returns the ids left in place."""
        left = []
        if remove:
            for semid in self.semids:
                if not remove_set(semid, check_alive=self.keyed):
                    left.append(semid)
        self.semids = left
        for locks in (self.user, self.internal):
            if locks is not None:
                locks.close()
        return left


def sysv_error(e: OSError, plan: LockPlan) -> Exception:
    if e.errno == errno.ENOSYS:
        # FreeBSD: a jail without sysvsem=new/inherit (or allow.sysvipc) has no SysV IPC.
        return plan.error("lock-engine", "SysV semaphores are not available here (semget: ENOSYS): "
                          "in a FreeBSD jail allow them with jail2 = sysvsem=new (or allow.sysvipc), "
                          "or use lock-engine = posixsem")
    if e.errno == errno.ENOSPC:
        return plan.error("lock-engine", "the kernel's SysV semaphore limit is reached (semget: ENOSPC; "
                          "Linux kernel.sem, FreeBSD kern.ipc.semmni/semmns)")
    return LockError(f"semget: {e.strerror}")


def set_identity(semid: int) -> dict:
    """What the registry keeps of a set: the id, and key and ctime to be sure, later, that
    the id was not given to someone else's set in between (ids are recycled)."""
    st = _jail.sem_stat(semid)
    return {"semid": semid, "key": st["key"], "ctime": st["ctime"]}


def remove_set(semid: int, check_alive: bool) -> bool:
    """IPC_RMID one set; True when it is gone.  A keyed (ftok) set can be shared with another
    instance: as uWSGI, leave it if its last user is another live process."""
    try:
        if check_alive:
            pid = _jail.semctl(semid, 0, _jail.GETPID)
            if pid not in (0, os.getpid()) and pid_alive(pid):
                log.emit(f"found ipcsem {semid} mapped to alive pid {pid}: not removed")
                return False
        _jail.semctl(semid, 0, _jail.IPC_RMID)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EIDRM):
            return True                   # already gone
        log.emit(f"cannot remove SysV semaphore set {semid}: {e.strerror}")
        return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------
# the lock set


class LockSet:
    """User locks 0..N, the thunder lock after them, and what must be undone at exit."""

    def __init__(self, plan: LockPlan, run_dir: str | None = None):
        self.plan = plan
        self.owner_pid = os.getpid()
        self.registry = None
        if plan.engine == "ipcsem":
            from . import lock_registry  # imported by LockPlan already (see there)
            self.registry = lock_registry.Registry(lock_registry.registry_dir(run_dir),
                                                   lock_registry.instance_id(plan.argv))
            if self.registry.path is None:
                log.emit("no writable registry directory: SysV sets of a killed master will not be found")
            self.registry.sweep()
        self.thunder_index = plan.user_locks if plan.thunder else None
        self.engine = IpcSemEngine(plan, self._report_dead) if plan.engine == "ipcsem" else PosixSemEngine(plan.user_locks, plan.total)
        if self.registry is not None:
            self.registry.write(self.engine, plan.persistent)
        self._give_to_user()

    def _give_to_user(self) -> None:
        # As uWSGI before its privilege drop: the sets must stay usable (and removable) by
        # uid/gid.  Already unprivileged: they are ours.
        if not (isinstance(self.engine, IpcSemEngine) and self.plan.drop.wanted and os.geteuid() == 0):
            return
        uid, gid, _ = privileges.resolve(self.plan.drop)
        self.engine.chown(uid, gid)
        self.registry.write(self.engine, self.plan.persistent)    # ctime changed
        self.registry.chown(uid, gid)

    def _index(self, n: int) -> int:
        if not 0 <= n < self.plan.user_locks:
            raise ValueError(f"lock {n} does not exist (locks = {self.plan.user_locks - 1} gives 0..{self.plan.user_locks - 1})")
        return n

    def lock(self, n: int = 0) -> None:
        self.engine.acquire(self._index(n))

    def unlock(self, n: int = 0) -> None:
        # Unlocking a lock this process does not hold does nothing (as a robust mutex's EPERM).
        self.engine.release(self._index(n))

    def is_locked(self, n: int = 0) -> bool:
        return self.engine.is_locked(self._index(n))

    def accept_lock(self) -> bool:
        return self.thunder_index is None or self.engine.acquire(self.thunder_index, False)

    def accept_unlock(self) -> None:
        if self.thunder_index is not None:
            self.engine.release(self.thunder_index)

    def release_dead(self, pid: int) -> list[int]:
        """The master: worker `pid` died; release (posixsem) or report (ipcsem) its locks."""
        freed = [i for i in range(self.plan.total) if self.engine.release_dead(i, pid)]
        for i in freed:
            self._report_dead(i, pid)
        return freed

    def _report_dead(self, i: int, pid: int) -> None:
        how = "released by the kernel (SEM_UNDO)" if self.plan.engine == "ipcsem" else "released by the master"
        log.emit(f"{self._name(i)} was held by dead process {pid}: {how}")

    def _name(self, i: int) -> str:
        return "thunder lock" if i == self.thunder_index else f"lock {i}"

    def cleanup(self) -> None:
        """Remove every semaphore (only in the process that made them; idempotent)."""
        if os.getpid() != self.owner_pid or self.engine is None:
            return
        engine, self.engine = self.engine, None
        keep = engine.name == "ipcsem" and self.plan.persistent
        left = engine.close(remove=not keep)
        if self.registry is None:
            return
        if keep or left:
            return                        # the record stays: the next start deals with them
        self.registry.forget()


# ---------------------------------------------------------------------------------------
# the module API (the master, the worker loop and the `uwsgi` module call these)
#
# lock()/unlock() are what an app's uwsgi.lock() costs, so setup() makes them the engine's
# C methods themselves (a fork inherits the module globals); nothing in Python runs per call.

_current: LockSet | None = None
_thunder: int | None = None


def setup(config, run_dir: str | None = None) -> LockSet:
    """In the master before forking: make the instance's locks (replacing any made before)."""
    plan = LockPlan(config)
    cleanup()
    if plan.ftok and plan.engine != "ipcsem":
        log.emit("ftok is used only by lock-engine = ipcsem: ignored")
    lockset = LockSet(plan, run_dir)
    _install(lockset)
    atexit.register(lockset.cleanup)      # a normal exit that skipped cleanup(); pid-guarded
    log.emit(f"lock engine: {plan.engine}, {plan.user_locks} user lock(s), thunder lock: "
             f"{'enabled' if plan.thunder else 'disabled'}")
    return lockset


def _install(lockset: LockSet | None) -> None:
    # After setup(), lock/unlock ARE the user locks' C methods (their range check raises an
    # IndexError that is a ValueError, as uwsgi.lock(n)); before it and after cleanup()
    # they raise LockError.  Callers look them up as locks.lock (or bind them after setup()).
    global _current, _thunder, lock, unlock
    _current = lockset
    lock, unlock = lockset.engine.fast_ops() if lockset else (_not_set_up, _not_set_up)
    _thunder = lockset.thunder_index if lockset else None


def current() -> LockSet:
    if _current is None:
        raise LockError("no locks: locks.setup(config) was not called in the master")
    return _current


def _not_set_up(n: int = 0) -> None:
    raise LockError("no locks: locks.setup(config) was not called in the master")


lock = _not_set_up      # lock(n=0): wait for user lock n (ValueError if there is none)
unlock = _not_set_up    # unlock(n=0): release it (nothing if this process does not hold it)


def is_locked(n: int = 0) -> bool:
    return current().is_locked(n)


def accept_lock() -> bool:
    """Before the worker's poll/accept: serialises it among the workers with `thunder-lock`.
    True when taken (always, without thunder-lock).  False when a signal interrupted the
    wait and its handler ran without raising: a worker's stop request sets a flag, so the
    serve loop checks that flag and calls again (a wait that restarted by itself would keep a
    stopping worker waiting for the lock)."""
    return _current is None or _current.accept_lock()


def accept_unlock() -> None:
    if _current is not None:
        _current.accept_unlock()


def release_dead(pid: int) -> list[int]:
    """The master, for each worker that died: release (posixsem) or report (ipcsem) what it
    held.  Returns the lock numbers (the thunder lock is numbered after the user locks)."""
    return _current.release_dead(pid) if _current is not None else []


def cleanup() -> None:
    """Every exit path of the master: remove the semaphores.  A no-op in a forked child."""
    if _current is not None and _current.owner_pid == os.getpid():
        _current.cleanup()
        _install(None)


def thunder_lock_enabled() -> bool:
    return _thunder is not None


__all__ = [
    "LockError",
    "LockPlan",
    "LockSet",
    "accept_lock",
    "accept_unlock",
    "cleanup",
    "current",
    "is_locked",
    "lock",
    "release_dead",
    "setup",
    "thunder_lock_enabled",
    "unlock",
]
