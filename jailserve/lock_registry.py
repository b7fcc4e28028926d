"""The ipcsem engine's registry of SysV sets (docs/locks.md, "Nothing left behind").

SysV sets outlive their creator, so `locks.LockSet` writes their ids to
REGISTRY_DIR/<instance>.json, and every start sweeps the records whose master is dead.
Only the ipcsem engine needs this, and so only it imports this module (with hashlib,
json and tempfile: OpenSSL's libcrypto comes with hashlib): `locks.LockPlan`.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

from . import _jail, log
from .locks import IpcSemEngine, pid_alive, remove_set

# Not under /run/jailserve, whose entries are the Linux jail registry's (each a jail name; it
# removes what it cannot read).
REGISTRY_DIR = "/var/run/jailserve-locks"   # /var/run: FreeBSD has no /run; Linux links it to /run


def instance_id(argv: list[str]) -> str:
    """Names this instance's registry file: the same argv (what a reload re-executes) gives
    the same file, so a restarted or reloaded instance finds its own sets."""
    text = "\0".join([os.getcwd(), *argv])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def registry_dir(run_dir: str | None = None) -> str | None:
    """REGISTRY_DIR when we can write there (root), else a per-user directory under the
    temporary directory (`run_dir`/locks when given); None when none can be made (then
    only cleanup() protects us)."""
    if run_dir:
        candidates = [os.path.join(run_dir, "locks")]
    else:
        candidates = [REGISTRY_DIR, os.path.join(tempfile.gettempdir(), f"jailserve-locks-{os.geteuid()}")]
    for path in candidates:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK | os.X_OK):
            return path
    return None


class Registry:
    """One JSON file per instance: the master's pid and its SysV sets."""

    def __init__(self, directory: str | None, instance: str):
        self.directory = directory
        self.path = os.path.join(directory, instance + ".json") if directory else None

    def write(self, engine: IpcSemEngine, persistent: bool) -> None:
        if self.path is None:
            return
        record = {"pid": os.getpid(), "ipc_space": _jail.ipc_space(), "persistent": persistent,
                  "keyed": engine.keyed, "sets": engine.registry_sets()}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self.path)        # never a half-written record

    def chown(self, uid: int | None, gid: int | None) -> None:
        # cleanup() runs after the privilege drop and must still empty the file
        if self.path and os.path.exists(self.path):
            os.chown(self.path, -1 if uid is None else uid, -1 if gid is None else gid)

    def forget(self) -> None:
        if self.path is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except PermissionError:
            # after the drop the directory may not be ours; an empty record says the same
            with open(self.path, "w") as f:
                json.dump({"pid": 0, "ipc_space": _jail.ipc_space(), "sets": []}, f)

    def sweep(self) -> list[int]:
        """Remove the sets of every record whose master is dead, or is this process (the
        image before a re-exec): what a killed master left.  Returns the ids removed."""
        if self.directory is None:
            return []
        removed: list[int] = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".json"):
                removed += sweep_record(os.path.join(self.directory, name))
        return removed


def sweep_record(path: str) -> list[int]:
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return []
    pid = record.get("pid", 0)
    if record.get("ipc_space", 0) != _jail.ipc_space():
        return []                         # made in another IPC namespace: not ours to judge
    if pid and pid != os.getpid() and pid_alive(pid):
        return []                         # a live instance: its sets are in use
    if record.get("persistent") and record.get("keyed"):
        return []                         # kept on purpose, found again by their ftok keys
    removed, kept = [], []
    for entry in record.get("sets", []):
        if not _same_set(entry):
            continue                      # gone, or its id now belongs to another set
        (removed if remove_set(entry["semid"], False) else kept).append(entry["semid"])
    if removed:
        log.emit(f"removed {len(removed)} SysV semaphore set(s) left by master {pid}: {removed}")
    if not kept:                          # a set we could not remove keeps its record
        try:
            os.unlink(path)
        except OSError:
            pass
    return removed


def _same_set(entry: dict) -> bool:
    try:
        st = _jail.sem_stat(entry["semid"])
    except OSError:
        return False                      # gone already
    return st["key"] == entry["key"] and st["ctime"] == entry["ctime"]
