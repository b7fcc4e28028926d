"""In-process lock/unlock round trips per second, per engine and per layer.

    python bench/locks/bench_locks.py [--n 200000] [--json]

Layers: the raw _jail binding (SharedSemaphores.wait/post; semop -1/+1 with SEM_UNDO), the
jailserve.locks API (locks.lock/unlock, what `uwsgi.lock()` calls), and the same API with two
processes contending for one lock (each counts its own round trips; the sum is reported).
Benchmarks are not tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jailserve import _jail, locks
from jailserve.config.loader import load_config


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def raw_posix(n: int) -> None:
    sems = _jail.SharedSemaphores(1)
    wait, post = sems.wait, sems.post
    for _ in range(n):
        wait(0)
        post(0)
    sems.close()


def raw_sysv(n: int) -> None:
    semid = _jail.semget(_jail.IPC_PRIVATE, 1, _jail.IPC_CREAT | _jail.IPC_EXCL | 0o600)
    try:
        _jail.semctl(semid, 0, _jail.SETVAL, 1)
        semop, undo = _jail.semop, _jail.SEM_UNDO
        for _ in range(n):
            semop(semid, 0, -1, undo)
            semop(semid, 0, 1, undo)
    finally:
        _jail.semctl(semid, 0, _jail.IPC_RMID)


def api(n: int) -> None:
    lock, unlock = locks.lock, locks.unlock
    for _ in range(n):
        lock(0)
        unlock(0)


def contended(n: int, procs: int = 2) -> float:
    """`procs` processes each doing n round trips on lock 0; total round trips per second."""
    start = time.perf_counter()
    pids = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                api(n)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return procs * n / (time.perf_counter() - start)


def measure(n: int) -> dict:
    results = {"raw posixsem (SharedSemaphores.wait/post)": rate(raw_posix, n),
               "raw ipcsem (semop -1/+1 SEM_UNDO)": rate(raw_sysv, n)}
    with tempfile.TemporaryDirectory() as run_dir:
        for engine in ("posixsem", "ipcsem"):
            locks.setup(load_config(["--lock-engine", engine], {}), run_dir=run_dir)
            try:
                results[f"locks.lock/unlock {engine}"] = rate(api, n)
                results[f"locks.lock/unlock {engine}, 2 processes contending"] = contended(n // 2)
            finally:
                locks.cleanup()
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = measure(args.n)
    if args.json:
        print(json.dumps(results))
        return
    for name, per_second in results.items():
        print(f"{name:55s} {per_second:12,.0f} round trips/s")


if __name__ == "__main__":
    main()
