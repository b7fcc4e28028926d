"""The same ini through real uWSGI 2.0.31 and through jailserve, compared on --show-config.

uWSGI's --show-config prints its whole option list after every expansion pass, in list
order: keys as written, values as applied.  jailserve's --show-config prints the same list.
Skipped when uWSGI 2.0.31 is not installed (tools/install.sh --test installs it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_jailserve

VERSION = "2.0.31"


def find_uwsgi() -> str | None:
    for candidate in (ROOT / ".venv" / "bin" / "uwsgi", shutil.which("uwsgi")):
        if candidate and os.access(candidate, os.X_OK):
            out = subprocess.run([str(candidate), "--version"], capture_output=True, text=True).stdout.strip()
            if out == VERSION:
                return str(candidate)
    return None


UWSGI = find_uwsgi()
pytestmark = pytest.mark.skipif(UWSGI is None, reason=f"uWSGI {VERSION} not installed")

# Options both sides add for the run itself, not part of the compared config.
RUN_KEYS = {"show-config", "chdir", "check", "strict"}

FILES = {
    "basic": "[uwsgi]\n; comment\n# other\nsocket = :8000\nnote = a ; b\nmaster\nprocesses = 4\nprocesses = 2\n"
             "pythonpath = /a\npythonpath = /b\nenv = A=B=C\nquoted = \"x y\"\n  spaced\t=\t v \n",
    "placeholders": "[uwsgi]\nbase = 8000\nhttp-socket = :%(base + 1)\nname = app\ncallable = %(name)_%(name)\n"
                    "set = extra=1\nworkers = %(extra)\nlater = %(defined_after)\ndefined_after = yes\n",
    "magic": "[uwsgi]\nd = %d\nn = %n\ne = %e\nc = %c\np = %p\ns = %s\nx = [%x]\npct = 100%%\nz = a%Zb\nj = 50%\nnext = 1\ntail = 5%\n",
    "logic": "[uwsgi]\nif-exists = /\nhttp-socket = :9001\nunder = %(_)\nendif =\nif-exists = /nonexistent\nprocesses = 9\n"
             "endif =\nif-not-exists = /nonexistent\nmaster = true\nendif =\nif-env = CMP_ENV\nenvval = %(_)\nendif =\n"
             "if-opt = master\nvacuum = true\nendif =\nif-not-opt = nothing-like-this\nlisten = 50\nendif =\n",
    "for": "[uwsgi]\nfor = a b c\npythonpath = /1/%(_)\npythonpath = /2/%(_)\nendfor =\nfor-times = 2\nenv = N%(_)=x\nendfor =\n",
    "include": "[uwsgi]\nprocesses = 2\ninclude = inc.ini\nmaster = true\ninherit = tmpl.ini\nlisten = 10\n",
    "envref": "[uwsgi]\ndirx = $(CMP_ENV)/x\nkeep = $(NOT_SET_CMP)\nfile = @(content.txt)\n",
    "sections": "[uwsgi]\nprocesses = 2\n[other]\nprocesses = 9\nmaster = true\n",
}
EXTRA = {
    "inc.ini": "[uwsgi]\nprocesses = 3\nbuffer-size = 8192\n",
    "tmpl.ini": "[uwsgi]\nprocesses = 7\npythonpath = /tmpl\n",
    "content.txt": "from-file\n",
}


def listing(output: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index("[uwsgi]") + 1
    end = lines.index(";end of configuration")
    return [line.rstrip() for line in lines[start:end] if line.split(" = ", 1)[0].strip() not in RUN_KEYS]


@pytest.mark.parametrize("name", sorted(FILES) + ["sections:other"])
def test_show_config_matches_uwsgi(name, tmp_path):
    for fname, text in {**EXTRA, **{f"{k}.ini": v for k, v in FILES.items()}}.items():
        (tmp_path / fname).write_text(text)
    target = f"{name.split(':')[0]}.ini" + (":" + name.split(":")[1] if ":" in name else "")
    env = {**os.environ, "CMP_ENV": "/from-env"}
    theirs = subprocess.run([UWSGI, "--show-config", "--chdir", "/nonexistent-cmp", "--ini", target],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=30)
    ours = run_jailserve("--show-config", "--check", "--chdir", "/nonexistent-cmp", "--ini", target,
                         "--http-socket", "127.0.0.1:9", cwd=tmp_path, env={"CMP_ENV": "/from-env"})
    theirs_out = theirs.stdout + theirs.stderr   # uWSGI logs to stderr
    assert ";end of configuration" in theirs_out, theirs_out
    assert ours.returncode == 0, ours.stderr
    expected = [l for l in listing(theirs_out) if l != "ini = " + target]
    got = [l for l in listing(ours.stdout) if l not in ("ini = " + target, "http-socket = 127.0.0.1:9")]
    assert got == expected


def test_env_and_cli_order_matches_uwsgi(tmp_path):
    (tmp_path / "m.ini").write_text("[uwsgi]\nhttp-socket = :9\n")
    env = {**os.environ, "UWSGI_PROCESSES": "5"}
    theirs = subprocess.run([UWSGI, "--show-config", "--master", "-p", "3", "--chdir", "/nonexistent-cmp", "m.ini"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=30)
    ours = run_jailserve("--show-config", "--check", "--master", "-p", "3", "--chdir", "/nonexistent-cmp", "m.ini",
                         cwd=tmp_path, env={"UWSGI_PROCESSES": "5"})
    assert listing(ours.stdout) == listing(theirs.stdout + theirs.stderr)
