"""privileges: plan_drop validation, and real drops in forked children (needs root)."""
from __future__ import annotations

import json
import os
import pwd

import pytest

from jailserve import privileges
from jailserve.config import load_config
from jailserve.errors import ConfigError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


def plan(*argv):
    return privileges.plan_drop(load_config(["--http-socket", ":8000", *argv], {}))


def test_plan_shapes():
    assert not plan().wanted
    spec = plan("--uid", "nobody", "--gid", "65534", "--no-initgroups")
    assert (spec.uid, spec.gid, spec.initgroups) == ("nobody", "65534", False)
    assert "setgroups([])" in spec.describe() and "setuid(nobody)" in spec.describe()
    with pytest.raises(ConfigError) as e:
        plan("--uid", "no body")
    assert e.value.option == "uid"
    with pytest.raises(ConfigError):
        plan("--gid", "-5")


def in_child(fn):
    """Run fn in a forked child; return what it printed as JSON (or the error text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = {"ok": fn()}
        except Exception as exc:               # reported to the parent, which asserts on it
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def ids():
    return [os.getresuid(), os.getresgid(), sorted(os.getgroups())]


@root_only
def test_drop_to_nobody_with_initgroups():
    nobody = pwd.getpwnam("nobody")
    lines = []
    out = in_child(lambda: (privileges.drop(plan("--uid", "nobody", "--gid", str(nobody.pw_gid)), lines.append), ids())[1])
    assert out == {"ok": [[nobody.pw_uid] * 3, [nobody.pw_gid] * 3,
                          sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))]}


@root_only
def test_drop_numeric_uid_without_passwd_entry_and_no_initgroups():
    out = in_child(lambda: (privileges.drop(plan("--uid", "54321", "--gid", "54322", "--no-initgroups"),
                                            lambda line: None), ids())[1])
    assert out == {"ok": [[54321] * 3, [54322] * 3, []]}


@root_only
def test_uid_alone_takes_the_users_primary_group_never_root():
    nobody = pwd.getpwnam("nobody")
    out = in_child(lambda: (privileges.drop(plan("--uid", "nobody"), lambda line: None), ids())[1])
    assert out["ok"][1] == [nobody.pw_gid] * 3 and 0 not in out["ok"][2]
    out = in_child(lambda: privileges.drop(plan("--uid", "54321"), lambda line: None))
    assert "set gid too" in out["error"]


@root_only
def test_unknown_names_fail_before_any_change():
    out = in_child(lambda: privileges.drop(plan("--uid", "no-such-user-here"), lambda line: None))
    assert "no user 'no-such-user-here'" in out["error"]
    out = in_child(lambda: privileges.drop(plan("--gid", "no-such-group-here"), lambda line: None))
    assert "no group 'no-such-group-here'" in out["error"]


@root_only
def test_non_root_cannot_become_someone_else():
    def attempt():
        os.setuid(65534)
        privileges.drop(plan("--uid", "0"), lambda line: None)

    assert "cannot setuid(0) as non-root" in in_child(attempt)["error"]
