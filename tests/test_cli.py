"""python -m jailserve as a real process: --version, --help, --check, --show-config, errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT, run_jailserve
from jailserve import __version__

EXAMPLES = ROOT / "examples"


def test_version():
    proc = run_jailserve("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"jailserve {__version__}"


def test_check_prints_origins_and_the_plan_in_order(tmp_path):
    (tmp_path / "app.py").write_text("def application(e, s):\n    s('200 OK', [])\n    return [b'']\n")
    ini = tmp_path / "a.ini"
    ini.write_text("[uwsgi]\nhttp-socket = 127.0.0.1:9099\nprocesses = 3\nwsgi-file = app.py\n"
                   "exec-pre-jail = true\nexec-as-root = true\nexec-as-user = true\nmaster = true\n")
    proc = run_jailserve(str(ini), "--check", "--harakiri", "20", cwd=tmp_path, env={"UWSGI_MAX_REQUESTS": "50"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"processes = 3  <- {ini}:3" in out
    assert "harakiri = 20  <- command line" in out
    assert "max-requests = 50  <- environment" in out
    plan = out.split("start-up plan", 1)[1]
    order = [plan.index(word) for word in ("pre-jail", "as-root", "as-user", "bind http-socket", "load", "fork 3 workers")]
    assert order == sorted(order), plan
    assert out.rstrip().endswith("configuration OK")


def test_check_does_nothing(tmp_path):
    ini = tmp_path / "a.ini"
    ini.write_text(f"[uwsgi]\nhttp-socket = {tmp_path}/s.sock\nwsgi-file = app.py\npidfile = {tmp_path}/pid\n"
                   f"exec-pre-jail = touch {tmp_path}/MARK\n")
    proc = run_jailserve("--check", str(ini), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ini"]


def test_show_config_lists_resolved_options(tmp_path):
    ini = tmp_path / "a.ini"
    ini.write_text("[uwsgi]\nbase = /srv\nchdir = %(base)/app\nmaster\nhttp-socket = :9\nwsgi-file = x.py\n"
                   "exec-asap = false\n")
    proc = run_jailserve("--show-config", str(ini), cwd=tmp_path)
    # exec-asap = false stops the server right after the config is shown
    lines = proc.stdout.splitlines()
    assert lines[0] == ";uWSGI instance configuration" and "[uwsgi]" in lines
    # values as uWSGI shows them: expanded, bare keys with their empty value
    assert "chdir = /srv/app" in lines and "master = " in lines and "base = /srv" in lines
    assert ";end of configuration" in lines


def test_error_has_no_traceback_and_suggests(tmp_path):
    proc = run_jailserve("--proceses", "3")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "command line: option 'proceses': unknown option (did you mean '--processes'?)"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.ini")))
@pytest.mark.parametrize("platform", ["linux", "freebsd"])
def test_examples_check(example, platform):
    """Each seed config validates and prints its plan, for Linux and for FreeBSD."""
    proc = run_jailserve("--check", "--check-platform", platform, str(EXAMPLES / example), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "configuration OK" in proc.stdout
    plan = proc.stdout.split("start-up plan", 1)[1]
    assert re.search(r"fork \d+ workers?", plan)
    if example != "app.ini":
        assert f"jail ({platform})" in plan
    if platform == "freebsd" and "jail2" in Path(EXAMPLES / example).read_text():
        assert "jail_set(" in plan and "JAIL_CREATE|JAIL_ATTACH" in plan
    if platform == "freebsd" and example == "jail.ini":
        assert "jail(&j)" in plan and "192.168.0.40" in plan
