"""Dropping privileges: setgid, initgroups/setgroups, setuid (UWSGI_SEMANTICS §2 step 21 k-l).

`plan_drop(config)` is pure and checks the shape of uid/gid; names are resolved by `drop()`,
which runs inside the jail, where the jail's own /etc/passwd and /etc/group are the ones that
count (so a name that exists only inside the jail is right, and one only outside is wrong).
"""
from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from .errors import ConfigError, Origin


class DropError(Exception):
    """Privileges could not be dropped as configured; the instance must not go on."""


@dataclass(frozen=True, slots=True)
class DropSpec:
    uid: str | None            # a name or a number, as written
    gid: str | None
    initgroups: bool           # False with no-initgroups: supplementary groups cleared
    origin: Origin | None

    @property
    def wanted(self) -> bool:
        return bool(self.uid or self.gid)

    def describe(self) -> str:
        if not self.wanted:
            return "privileges: not dropped (no uid/gid)"
        parts = []
        if self.gid:
            parts.append(f"setgid({self.gid})")
        if self.uid:
            parts.append(f"initgroups({self.uid})" if self.initgroups else "setgroups([])")
            parts.append(f"setuid({self.uid})")
        return "privileges: " + ", ".join(parts)


def plan_drop(config) -> DropSpec:
    for option in ("uid", "gid"):
        value = config.get(option)
        if value is not None and not _valid_id(value):
            raise ConfigError(f"'{value}' is not a user/group name or number", config.origin(option), option)
    uid, gid = config.get("uid") or None, config.get("gid") or None
    return DropSpec(uid, gid, not config.get("no-initgroups"),
                    config.origin("uid") if uid else (config.origin("gid") if gid else None))


def _valid_id(text: str) -> bool:
    word = text.strip()
    return bool(word) and (word.isdigit() or all(c.isalnum() or c in "-_." for c in word)) and not word.startswith("-")


def resolve(spec: DropSpec) -> tuple[int | None, int | None, str | None]:
    """(uid, gid, user name for initgroups) from the names in force here (inside the jail).

    With uid and no gid, the user's primary group is used.  uWSGI would keep gid 0 (and
    initgroups would then add group 0 to the supplementary list): an unprivileged uid with
    root's group is not a drop, so jailserve does not copy that.
    """
    uid = gid = name = None
    if spec.uid:
        try:
            entry = pwd.getpwuid(int(spec.uid)) if spec.uid.isdigit() else pwd.getpwnam(spec.uid)
            uid, name, gid = entry.pw_uid, entry.pw_name, entry.pw_gid
        except KeyError:
            if not spec.uid.isdigit():
                raise DropError(f"uid: no user '{spec.uid}' in this jail's passwd") from None
            uid = int(spec.uid)        # a number with no passwd entry: setuid still works
    if spec.gid:
        if spec.gid.isdigit():
            gid = int(spec.gid)
        else:
            try:
                gid = grp.getgrnam(spec.gid).gr_gid
            except KeyError:
                raise DropError(f"gid: no group '{spec.gid}' in this jail's group file") from None
    return uid, gid, name


def drop(spec: DropSpec, log=print) -> None:
    """setgid, then initgroups(user, gid) or setgroups([]), then setuid; in that order because
    each needs the privilege the next one removes.  Verified afterwards: a drop that did not
    take (e.g. saved set-user-id left as root) is an error, not a warning."""
    if not spec.wanted:
        if os.geteuid() == 0:
            log("*** WARNING: you are running jailserve as root !!! (use the uid option) ***")
        return
    uid, gid, name = resolve(spec)
    if os.geteuid() != 0:
        _check_unprivileged(uid, gid if spec.gid else None)
        return
    if gid is None:
        raise DropError(f"uid {spec.uid} has no passwd entry here, so no primary group: set gid too")
    if gid is not None:
        os.setgid(gid)
        log(f"setgid() to {gid}")
    if uid is not None:
        _set_groups(spec, name, gid if gid is not None else os.getgid(), log)
        os.setuid(uid)
        log(f"setuid() to {uid}")
    _verify(uid, gid)


def _set_groups(spec: DropSpec, name: str | None, gid: int, log) -> None:
    if spec.initgroups and name is not None:
        os.initgroups(name, gid)
        log(f"set additional groups to {os.getgroups()} (initgroups {name})")
    else:
        os.setgroups([])


def _check_unprivileged(uid: int | None, gid: int | None) -> None:
    # As uWSGI: when not root, asking to become someone else cannot work; asking to be who we
    # already are is fine.
    if uid is not None and uid != os.getuid():
        raise DropError(f"cannot setuid({uid}) as non-root user {os.getuid()}")
    if gid is not None and gid != os.getgid():
        raise DropError(f"cannot setgid({gid}) as non-root user {os.getuid()}")


def _verify(uid: int | None, gid: int | None) -> None:
    if uid is not None and (os.getresuid() != (uid, uid, uid)):
        raise DropError(f"setuid({uid}) did not drop every user id: {os.getresuid()}")
    if gid is not None and (os.getresgid() != (gid, gid, gid)):
        raise DropError(f"setgid({gid}) did not drop every group id: {os.getresgid()}")
    if uid not in (None, 0):
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise DropError("privileges could be regained after setuid")
