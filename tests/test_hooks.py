"""Hooks: exec-* and hook-* actions run for real (UWSGI_SEMANTICS §2, §2.1)."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, run_jailserve
from jailserve.config import load_config
from jailserve.errors import ConfigError
from jailserve.hooks import HookFailed, plan_hooks, run_phase

APP = "def application(e, s):\n    s('200 OK', [])\n    return [b'ok']\n"


def plan_of(tmp_path, text):
    ini = tmp_path / "h.ini"
    ini.write_text("[uwsgi]\n" + textwrap.dedent(text))
    return plan_hooks(load_config([str(ini)], {})), ini


def test_file_actions_do_what_they_say(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan, _ = plan_of(tmp_path, f"""
        hook-as-root = mkdir:{tmp_path}/d/e
        hook-as-root = write:{tmp_path}/w one two
        hook-as-root = writen:{tmp_path}/wn line
        hook-as-root = append:{tmp_path}/wn more
        hook-as-root = appendn:{tmp_path}/wn !
        hook-as-root = create:{tmp_path}/empty
        hook-as-root = chmod:{tmp_path}/empty 600
        hook-as-root = create:{tmp_path}/gone
        hook-as-root = unlink:{tmp_path}/gone
        hook-as-root = putenv:JS_HOOK_TEST=yes
        hook-as-root = chdir:{tmp_path}/d
    """)
    monkeypatch.delenv("JS_HOOK_TEST", raising=False)
    run_phase(plan, "as-root")
    assert (tmp_path / "d" / "e").is_dir()
    assert (tmp_path / "w").read_text() == "one two"
    assert (tmp_path / "wn").read_text() == "line\nmore!\n"
    assert stat.S_IMODE((tmp_path / "empty").stat().st_mode) == 0o600
    assert not (tmp_path / "gone").exists()
    assert os.environ["JS_HOOK_TEST"] == "yes"
    assert os.getcwd() == str(tmp_path / "d")


def test_phases_are_kept_apart_and_in_order(tmp_path):
    plan, _ = plan_of(tmp_path, f"""
        hook-pre-jail = appendn:{tmp_path}/log pre 1
        exec-pre-jail = echo pre 2 >> {tmp_path}/log
        hook-as-user = appendn:{tmp_path}/log user
        hook-pre-jail = appendn:{tmp_path}/log pre 3
    """)
    run_phase(plan, "pre-jail")
    # uWSGI's order within a phase: hook-<phase> actions, then exec-<phase> commands
    assert (tmp_path / "log").read_text() == "pre 1\npre 3\npre 2\n"


def test_exec_failure_names_the_hook_and_safeexec_does_not_fail(tmp_path):
    plan, ini = plan_of(tmp_path, """
        hook-as-root = safeexec:exit 3
        exec-as-root = exit 4
    """)
    with pytest.raises(HookFailed) as info:
        run_phase(plan, "as-root")
    assert f"{ini}:4: option 'exec-as-root'" in str(info.value) and "status 4" in str(info.value)


def test_hidden_hook_keeps_its_arguments_out_of_the_log(tmp_path):
    plan, _ = plan_of(tmp_path, f"hook-asap = !writen:{tmp_path}/secret s3cret\n")
    lines = []
    run_phase(plan, "asap", lines.append)
    assert (tmp_path / "secret").read_text() == "s3cret\n"
    assert lines and all("s3cret" not in line for line in lines)


@pytest.mark.parametrize("text,problem", [
    ("hook-asap = frobnicate:x", "unknown hook action 'frobnicate'"),
    ("hook-asap = writen", "is not action:arguments"),
])
def test_bad_hooks_are_config_errors(tmp_path, text, problem):
    with pytest.raises(ConfigError) as info:
        plan_of(tmp_path, text + "\n")
    assert problem in str(info.value) and ":2: option 'hook-asap'" in str(info.value)


MOUNT_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from jailserve.config import load_config
from jailserve.hooks import plan_hooks, run_phase
plan = plan_hooks(load_config([sys.argv[2]], {}))
run_phase(plan, "as-root")
print(open("/proc/self/mountinfo").read())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="mount(2) in a private mount namespace needs Linux, root and unshare(1)")
def test_mount_and_umount_actions(tmp_path):
    """hook mount/umount through mount(2), in a throwaway mount namespace of its own."""
    target, other = tmp_path / "mnt", tmp_path / "gone"
    target.mkdir()
    other.mkdir()
    ini = tmp_path / "m.ini"
    ini.write_text(f"[uwsgi]\nhook-as-root = mount:tmpfs jstmpfs {target} nosuid,nodev size=1m\n"
                   f"hook-as-root = mount:tmpfs jsgone {other}\nhook-as-root = umount:{other} detach\n"
                   f"hook-as-root = writen:{target}/inside yes\n")
    out = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", MOUNT_SCRIPT,
                          str(ROOT), str(ini)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    mine = [line for line in out.stdout.splitlines() if f" {target} " in line]
    assert len(mine) == 1 and "tmpfs" in mine[0] and "nosuid" in mine[0] and "nodev" in mine[0], mine
    assert not any(f" {other} " in line for line in out.stdout.splitlines())
    # it lived only in that namespace: nothing on the host, and the file went with the tmpfs
    assert f" {target} " not in open("/proc/self/mountinfo").read()
    assert not (target / "inside").exists()


def test_unknown_mount_flag_fails_the_hook(tmp_path):
    plan, _ = plan_of(tmp_path, f"hook-as-root = mount:tmpfs none {tmp_path} bindd\n")
    with pytest.raises(HookFailed) as info:
        run_phase(plan, "as-root")
    assert "unknown flag 'bindd'" in str(info.value)


def test_if_not_exists_guard_runs_a_hook_once(tmp_path):
    """The devfs seed's pattern: a guarded hook runs on the first start only (the server is
    real; an as-user hook stops it after the hooks)."""
    (tmp_path / "app.py").write_text(APP)
    ini = tmp_path / "g.ini"
    ini.write_text(f"""[uwsgi]
http-socket = {tmp_path}/s.sock
wsgi-file = {tmp_path}/app.py
if-not-exists = {tmp_path}/done
  hook-pre-jail = appendn:{tmp_path}/log mounted
  hook-pre-jail = create:{tmp_path}/done
endif =
hook-pre-jail = appendn:{tmp_path}/log started
hook-as-user = exit:0
""")
    for _ in range(2):
        proc = run_jailserve(str(ini), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "log").read_text() == "mounted\nstarted\nstarted\n"
