"""plan.build_plan imports what a config needs while it plans, and nothing a plain config does
not need (docs/internals.md, "Memory: what the master holds when it forks").

Each case runs in a fresh interpreter: the master's modules (startup and what it imports) and
build_plan, then the list of the optional modules that this import added to sys.modules.  A
module the interpreter had loaded before (site, sitecustomize) counts as not added.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

OPTIONAL = ("subprocess", "hashlib", "json", "jailserve.lock_registry", "jailserve.jail.spec",
            "jailserve.jail.freebsd_params", "greenlet")

SCRIPT = """
import json, sys
before = set(sys.modules)
from jailserve import startup
from jailserve.config import load_config
from jailserve.plan import build_plan
build_plan(load_config(sys.argv[1:], {}))
print(json.dumps(sorted(m for m in set(sys.modules) - before if m in %r)))
""" % (OPTIONAL,)

BASE = ["--master", "--http-socket", "127.0.0.1:9090", "--wsgi-file", "app.py"]


def added(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, *BASE, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_plain_config_imports_none_of_them():
    assert added() == []


@pytest.mark.parametrize("args, wanted", [
    (["--exec-as-root", "true"], ["subprocess"]),
    (["--hook-pre-app", "safeexec:true"], ["subprocess"]),
    (["--lock-engine", "ipcsem"], ["hashlib", "jailserve.lock_registry"]),
    (["--jail-attach", "web"], ["jailserve.jail.freebsd_params", "jailserve.jail.spec"]),
    (["--async", "10"], ["greenlet"]),
])
def test_a_config_that_needs_one_imports_it_while_it_is_planned(args, wanted):
    got = added(*args)
    assert all(m in got for m in wanted), got


def test_malloc_trim_answers_whether_pages_went_back():
    from jailserve import _jail

    assert _jail.malloc_trim() in (True, False)
