"""Real FreeBSD jails made by jailserve, checked with jls(8) and jexec(8).

FreeBSD only, as root: written for the FreeBSD 14 task of .cirrus.yml.  These tests have
not been run by the authors (developed on Linux; the FreeBSD code is compile-checked).
Each jail is made by a child process (freebsd_fixtures/jail_child.py) so the test process
itself is never jailed; the child waits on stdin while the test inspects the jail.
"""
from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "freebsd_fixtures" / "jail_child.py"

pytestmark = [
    pytest.mark.freebsd,
    pytest.mark.skipif(not sys.platform.startswith("freebsd"),
                       reason="makes real FreeBSD jails; runs in FreeBSD CI (.cirrus.yml)"),
    pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() != 0, reason="jail(2) needs root"),
]

ALIAS = "127.0.1.2"          # a loopback alias, so the test touches no real interface


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def rootfs(tmp_path) -> Path:
    """A jail root with a statically linked /bin/sh (from /rescue) for jexec."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/rescue/sh", root / "bin" / "sh")
    (root / "marker-root").write_text("jail root\n")
    return Path(os.path.realpath(root))     # the kernel stores the resolved path (§2.4)


@pytest.fixture
def loopback_alias():
    subprocess.run(["ifconfig", "lo0", "inet", f"{ALIAS}/32", "alias"], check=True)
    yield ALIAS
    subprocess.run(["ifconfig", "lo0", "inet", ALIAS, "-alias"], check=False)


class Child:
    """A jailed child process: its JSON report, then it waits until released."""

    def __init__(self, argv: list[str], bind: str | None = None):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if bind:
            env["JS_BIND"] = bind
        self.proc = subprocess.Popen([sys.executable, str(CHILD), *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise AssertionError(f"child failed: {self.proc.stderr.read()}")
        self.report = json.loads(line)

    def release(self) -> int:
        self.proc.stdin.write("\n")
        self.proc.stdin.close()
        return self.proc.wait()


def jls(target: str | int) -> dict[str, str]:
    """`jls -n -j TARGET`: every parameter as key=value (booleans as name / noname)."""
    out = subprocess.run(["jls", "-n", "-j", str(target)], check=True, capture_output=True, text=True).stdout
    params = {}
    for word in shlex.split(out):
        key, sep, value = word.partition("=")
        params[key] = value if sep else True
    return params


def jexec(jid: int, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["jexec", str(jid), "/bin/sh", "-c", command], capture_output=True, text=True)


def remove_jail(name: str) -> None:
    subprocess.run(["jail", "-r", name], capture_output=True)


# --- old-style jail = ROOT HOST NAME with jail-ip4 (jail(2)) ----------------------------

def test_old_style_jail_with_loopback_alias(rootfs, loopback_alias, tmp_path):
    name = unique("jsold")
    jidfile = tmp_path / "jid"
    child = Child(["--jail", f"{rootfs} oldhost {name}", "--jail-ip4", loopback_alias,
                   "--jidfile", str(jidfile)], bind=loopback_alias)
    try:
        report = child.report
        jid = report["jid"]
        assert jidfile.read_text() == f"{jid}\n"                  # host path (§4.4)
        assert report["jailed"] == 1 and report["cwd"] == "/"     # §4.1 chdir("/")
        assert "marker-root" in report["root"] and report["hostname"] == "oldhost"
        assert report["bound"] == loopback_alias
        params = jls(name)
        assert params["jid"] == str(jid) and params["name"] == name
        assert params["path"] == str(rootfs) and params["host.hostname"] == "oldhost"
        assert params["ip4.addr"] == loopback_alias
        assert params["ip6.addr"] == ""                              # §1.2: none given, none allowed
        done = jexec(jid, "echo inside > /marker-jexec")
        assert done.returncode == 0, done.stderr
        assert (rootfs / "marker-jexec").read_text() == "inside\n"
    finally:
        assert child.release() == 0
    # not persistent: the jail is gone (dying at most) once its last process exited (§7)
    assert subprocess.run(["jls", "-j", name], capture_output=True).returncode != 0


# --- jail2 with persist and allow.sysvipc (jail_set) -------------------------------------

@pytest.fixture
def persistent_jail(rootfs):
    name = unique("jsp")
    child = Child(["--jail2", f"path={rootfs}", "--jail2", f"name={name}", "--jail2", "host.hostname=phost",
                   "--jail2", "persist", "--jail2", "allow.sysvipc"])
    try:
        assert child.release() == 0
        yield name, child.report
    finally:
        remove_jail(name)


def test_jail2_persist_outlives_its_process(persistent_jail, rootfs):
    name, report = persistent_jail
    params = jls(name)
    assert params["jid"] == str(report["jid"]) and params["path"] == str(rootfs)
    assert params["persist"] is True and params["host.hostname"] == "phost"
    # §2.4: allow.sysvipc means sysvmsg = sysvsem = sysvshm = inherit
    assert params["allow.sysvipc"] is True
    assert params["sysvsem"] == "inherit" and params["sysvshm"] == "inherit"
    assert jexec(report["jid"], "echo alive").stdout == "alive\n"


def test_list_jails_sees_the_persistent_jail(persistent_jail, rootfs):
    from jailserve.jail import freebsd
    name, report = persistent_jail
    [mine] = [j for j in freebsd.list_jails() if j["name"] == name]
    assert mine == {"jid": report["jid"], "name": name, "hostname": "phost", "root": str(rootfs),
                    "ip4": [], "ip6": [], "addresses": [], "persist": True}


def test_remove_by_name_ends_a_persistent_jail(rootfs):
    from jailserve.jail import freebsd
    name = unique("jsr")
    child = Child(["--jail2", f"path={rootfs}", "--jail2", f"name={name}", "--jail2", "persist"])
    assert child.release() == 0
    assert jls(name)["persist"] is True
    freebsd.remove(name)                                             # jail_remove(2), §4.2
    assert subprocess.run(["jls", "-j", name], capture_output=True).returncode != 0


@pytest.mark.parametrize("by", ["name", "jid"])
def test_jail_attach(persistent_jail, tmp_path, by):
    name, report = persistent_jail
    target = name if by == "name" else str(report["jid"])
    jidfile = tmp_path / "attach.jid"
    child = Child(["--jail-attach", target, "--jidfile", str(jidfile)])
    try:
        assert child.report["jid"] == report["jid"] and child.report["jailed"] == 1
        assert child.report["cwd"] == "/" and "marker-root" in child.report["root"]
        assert child.report["hostname"] == "phost"
        assert jidfile.read_text() == f"{report['jid']}\n"          # our choice: written for attach too
        # ps(1) -J lists the jail's processes: the attached child is one of them
        ps = subprocess.run(["ps", "-J", str(report["jid"]), "-o", "pid="], capture_output=True, text=True)
        assert str(child.proc.pid) in ps.stdout.split()
    finally:
        assert child.release() == 0
    assert jls(name)["persist"] is True                             # attach does not change the jail


# --- errors the kernel reports, safe to provoke in the test process --------------------

def test_attach_to_a_missing_jid_is_einval():
    from jailserve import _jail
    with pytest.raises(OSError) as info:
        _jail.jail_attach(999998)
    assert info.value.errno == errno.EINVAL                         # §4.1, §11.15: not ENOENT


def test_missing_name_is_enoent_from_jail_get():
    from jailserve import _jail
    with pytest.raises(OSError) as info:
        _jail.jail_getid(unique("nosuch"))
    assert info.value.errno == errno.ENOENT                          # §4.3


def test_unknown_parameter_message_comes_from_errmsg():
    from jailserve import _jail
    with pytest.raises(OSError) as info:
        _jail.jail_set([(b"allow.teleport\0", None), (b"persist\0", None)], 0x01)
    assert info.value.errno == errno.EINVAL
    assert "unknown parameter: allow.teleport" in str(info.value)    # §2.2 errmsg


def test_create_without_attach_or_persist_is_einval():
    from jailserve import _jail
    with pytest.raises(OSError) as info:
        _jail.jail_set([(b"name\0", unique("jsx").encode() + b"\0")], 0x01)
    assert info.value.errno == errno.EINVAL                          # §2.1: must persist or attach


# --- the static parameter table against the running kernel (§2.7) ------------------------

def test_table_types_match_the_kernel():
    from jailserve.jail import freebsd, freebsd_params as fp
    checked = 0
    for key, param in fp.TABLE.items():
        probed = freebsd.kernel_probe(key)
        if probed is None:
            assert param.dynamic, f"{key} is in the table but not in this kernel"
            continue
        assert probed.kind == param.kind, key
        if param.kind == fp.STRING:
            assert probed.maxlen == param.maxlen, key
        checked += 1
    assert checked > 30
