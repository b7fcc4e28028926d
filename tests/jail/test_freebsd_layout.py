"""struct jail layout and the FreeBSD half of _jail.pyx, compile-checked with freebsd-check.

freebsd_fixtures/struct_jail_layout.pyx holds FREEBSD_JAILS §1.1's offsets and sizes (and
the §2.1 constants) as C _Static_asserts; freebsd-check compiles it against FreeBSD's
headers for x86_64 and aarch64.  struct_jail_layout_wrong.pyx has one wrong offset and must
fail, so a pass of the first one means something.  Nothing here runs on FreeBSD; the ILP32
(i386) branch of the fixture is not checked (the tool has no i386 target).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "freebsd_fixtures"


def _checker() -> Path | None:
    candidate = Path(os.environ.get("FREEBSD_CHECK", ROOT.parent / "shared" / "tools" / "freebsd-check"))
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


CHECKER = _checker()
pytestmark = [
    pytest.mark.skipif(CHECKER is None, reason="freebsd-check not found (set FREEBSD_CHECK or keep "
                       "../shared/tools/freebsd-check next to the checkout)"),
    pytest.mark.skipif(shutil.which("python3") is None, reason="freebsd-check needs python3"),
]


def run_check(*paths: Path) -> subprocess.CompletedProcess:
    # first run installs zig and builds stubs (~80 s); later runs take seconds
    return subprocess.run([str(CHECKER), *map(str, paths)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)


def test_struct_jail_layout_matches_freebsd_jails_1_1():
    result = run_check(FIXTURES / "struct_jail_layout.pyx")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("OK ") for line in lines) == 2     # x86_64 and aarch64


def test_wrong_layout_is_caught():
    result = run_check(FIXTURES / "struct_jail_layout_wrong.pyx")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("path at 4 (deliberately wrong)") == 2


def test_jail_module_freebsd_section_compile_and_link_checked():
    result = run_check(ROOT / "jailserve" / "_jail.pyx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 2 checks OK" in result.stdout
