"""Nothing left behind: `ipcs -s` and /dev/shm before and after every way an instance stops.

Each scenario runs in its own IPC and mount namespace (unshare(1)) with a fresh tmpfs on
/dev/shm, so the before/after comparison is exact even while other test runs on the machine
make semaphores of their own.  The namespace is only a clean room: SysV sets and named
semaphores behave in it as on the host, and every check is made while it is alive.

The "owner" below plays the master's part as locks.py expects it (setup before forking the
workers, release_dead on a death, cleanup on every exit path it sees); the end-to-end tests
do the same with the real server.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()
LOCK_ARGS = ["--locks", "1", "--thunder-lock"]    # 2 user locks + the thunder lock = 3 sets


# --- the owner: a stand-in master --------------------------------------------------------

def owner(run_dir: str, args: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from jailserve import locks
    from jailserve.config.loader import load_config

    # SIGTERM would kill without running anything: make it an exit, as the master does
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))
    lockset = locks.setup(load_config(args), run_dir=run_dir)
    workers = [spawn_worker() for _ in range(2)]
    try:
        ids = getattr(lockset.engine, "semids", [])
        print("READY " + json.dumps({"pid": os.getpid(), "workers": workers, "semids": ids}), flush=True)
        command = sys.stdin.readline().strip()
        if command == "reexec":
            env = dict(os.environ, UWSGI_RELOADS=str(int(os.environ.get("UWSGI_RELOADS", "0")) + 1))
            stop_workers(workers)
            # exec skips atexit and finally: the new image must deal with the old sets
            os.execve(sys.executable, [sys.executable, str(SELF), "owner", run_dir, *args], env)
    finally:
        stop_workers(workers)
        locks.cleanup()


def spawn_worker() -> int:
    from jailserve import locks

    pid = os.fork()
    if pid == 0:
        try:
            while True:                   # keep the locks busy (SEM_UNDO entries, holders)
                locks.lock(1)
                locks.unlock(1)
                locks.accept_lock()
                time.sleep(0.001)
                locks.accept_unlock()
        finally:
            os._exit(0)
    return pid


def stop_workers(workers: list[int]) -> None:
    from jailserve import locks

    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except ChildProcessError:
            continue
        except ProcessLookupError:
            continue
        locks.release_dead(pid)
    workers.clear()


# --- the driver: one scenario inside its clean room -------------------------------------

def snapshot() -> dict:
    out = subprocess.run(["ipcs", "-s"], capture_output=True, text=True, check=True).stdout
    sets = sorted(f"{f[0]}/{f[1]}" for f in (line.split() for line in out.splitlines())
                  if len(f) >= 5 and f[1].isdigit())
    return {"ipcs": sets, "shm": sorted(os.listdir("/dev/shm"))}


class Owner:
    def __init__(self, run_dir: str, args: list[str], env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, str(SELF), "owner", run_dir, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **(env or {})))
        self.ready = self.read_ready()

    def read_ready(self) -> dict:
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"owner did not start: {line!r}")
        return json.loads(line[6:])

    def say(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait(self) -> int:
        return self.proc.wait(60)


def drive(mode: str, engine: str, run_dir: str, extra: list[str]) -> dict:
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/dev/shm"], check=True)
    args = ["--lock-engine", engine, *LOCK_ARGS, *extra]
    result = {"before": snapshot()}
    first = Owner(run_dir, args)
    result["during"] = snapshot()
    result["semids"] = first.ready["semids"]
    if mode == "normal":
        first.say("exit")
    elif mode == "sigint":
        first.proc.send_signal(signal.SIGINT)
    elif mode == "sigterm":
        first.proc.send_signal(signal.SIGTERM)
    elif mode in ("sigkill", "persistent"):
        if mode == "sigkill":
            first.proc.kill()
        else:
            first.say("exit")
        result["status"] = first.wait()
        for pid in first.ready["workers"]:    # a killed master's orphans (PDEATHSIG's job)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        result["after_stop"] = snapshot()
        second = Owner(run_dir, args)      # the next start
        result["next_semids"] = second.ready["semids"]
        result["next_during"] = snapshot()
        second.say("exit")
        second.wait()
    elif mode == "reload":
        first.say("reexec")
        second = first.read_ready()        # the same process, re-executed
        result["next_semids"] = second["semids"]
        result["same_pid"] = second["pid"] == first.ready["pid"]
        result["next_during"] = snapshot()
        first.say("exit")
    result.setdefault("status", first.wait())
    result["after"] = snapshot()
    return result


def main() -> None:
    role = sys.argv[1]
    if role == "owner":
        owner(sys.argv[2], sys.argv[3:])
    elif role == "driver":
        mode, engine, run_dir, *extra = sys.argv[2:]
        print(json.dumps(drive(mode, engine, run_dir, extra)))


if __name__ == "__main__":
    main()


# --- the tests -------------------------------------------------------------------------------

import pytest

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="clean room made with Linux namespaces"),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"),
]


def run_scenario(mode: str, engine: str, tmp_path, *extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("UWSGI_RELOADS", None)
    proc = subprocess.run(["unshare", "--ipc", "--mount", "--propagation", "private",
                           sys.executable, str(SELF), "driver", mode, engine, str(tmp_path / "run"), *extra],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


ENGINES = ["posixsem", "ipcsem"]
EXPECTED_SETS = {"posixsem": 0, "ipcsem": 3}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode,status", [("normal", 0), ("sigint", -signal.SIGINT), ("sigterm", 143)])
def test_a_stop_leaves_what_was_there_before(mode, status, engine, tmp_path):
    r = run_scenario(mode, engine, tmp_path)
    assert len(r["during"]["ipcs"]) - len(r["before"]["ipcs"]) == EXPECTED_SETS[engine]
    assert r["status"] == status
    assert r["after"] == r["before"]


def test_posixsem_makes_no_named_semaphore_even_while_running(tmp_path):
    r = run_scenario("normal", "posixsem", tmp_path)
    assert r["during"]["shm"] == r["before"]["shm"] == []


def test_ipcsem_sets_of_a_killed_master_are_removed_by_the_next_start(tmp_path):
    r = run_scenario("sigkill", "ipcsem", tmp_path)
    assert r["status"] == -signal.SIGKILL
    # SIGKILL runs nothing: the sets are really left behind ...
    assert len(r["after_stop"]["ipcs"]) == len(r["before"]["ipcs"]) + 3
    # ... and the next start removes them before making its own: never more than 3
    assert len(r["next_during"]["ipcs"]) == len(r["before"]["ipcs"]) + 3
    assert not set(r["semids"]) & set(r["next_semids"])
    assert r["after"] == r["before"]


def test_posixsem_killed_master_leaves_nothing(tmp_path):
    r = run_scenario("sigkill", "posixsem", tmp_path)
    assert r["after_stop"] == r["before"]
    assert r["after"] == r["before"]


@pytest.mark.parametrize("engine", ENGINES)
def test_reload_by_reexec_replaces_the_sets_without_a_leak(engine, tmp_path):
    r = run_scenario("reload", engine, tmp_path)
    assert r["same_pid"]
    assert len(r["next_during"]["ipcs"]) == len(r["before"]["ipcs"]) + EXPECTED_SETS[engine]
    assert r["after"] == r["before"]


def test_reload_with_ftok_reuses_the_same_keys(tmp_path):
    keyfile = tmp_path / "ftok"
    keyfile.write_text("")
    r = run_scenario("reload", "ipcsem", tmp_path, "--ftok", str(keyfile))
    keys = lambda snap: sorted(entry.split("/")[0] for entry in snap["ipcs"])
    assert all(k != "0x00000000" for k in keys(r["during"])[-3:])
    assert keys(r["next_during"]) == keys(r["during"])
    assert r["after"] == r["before"]


def test_persistent_ipcsem_with_ftok_keeps_the_sets_for_the_next_start(tmp_path):
    keyfile = tmp_path / "ftok"
    keyfile.write_text("")
    r = run_scenario("persistent", "ipcsem", tmp_path, "--ftok", str(keyfile), "--persistent-ipcsem")
    assert len(r["after_stop"]["ipcs"]) == len(r["before"]["ipcs"]) + 3     # kept on purpose
    assert r["next_semids"] == r["semids"]                                  # found again by key
    assert len(r["after"]["ipcs"]) == len(r["before"]["ipcs"]) + 3           # kept again
