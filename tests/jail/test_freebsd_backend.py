"""jail/freebsd.py's plan and describe (pure, on Linux), and _jail's FreeBSD names on Linux.

The plan is what create()/attach() execute on FreeBSD; these tests fix its calls, flags and
bytes against FREEBSD_JAILS (sections cited).  Running the calls is test_freebsd_live.py's
job, in FreeBSD CI only.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jailserve import _jail
from jailserve.config import load_config
from jailserve.jail import backend_for
from jailserve.jail import freebsd as fb
from jailserve.jail.spec import build_spec


def spec_of(*argv, environ=None):
    return build_spec(load_config(list(argv), environ or {}), platform="freebsd")


def test_backend_for_freebsd_is_this_module():
    assert backend_for("freebsd") is fb


# --- jail = ... -> jail(2) ------------------------------------------------------------------

def test_jail_option_is_one_jail2_call_with_struct_fields():
    spec = spec_of("--jail", "/jails/a web my jail", "--jail-ip4", "198.18.0.2", "--jail-ip4", "127.0.0.2",
                   "--jail-ip6", "fd00::2")
    [call] = fb.plan(spec)
    assert call.kind == "jail"
    assert call.args == {
        "path": b"/jails/a", "hostname": b"web", "jailname": b"my jail",
        # §1.1: in_addr in network byte order, contiguous; the first stays first (§1.2)
        "ip4": bytes([198, 18, 0, 2, 127, 0, 0, 2]),
        "ip6": ipaddress.IPv6Address("fd00::2").packed,
    }


def test_jail_without_hostname_or_name_or_addresses():
    # §1.2, §11.7: hostname is "" never NULL; no name -> NULL; both arrays passed, empty
    [call] = fb.plan(spec_of("--jail", "/jails/a"))
    assert call.args == {"path": b"/jails/a", "hostname": b"", "jailname": None, "ip4": b"", "ip6": b""}
    lines = fb.describe(spec_of("--jail", "/jails/a"))
    assert lines[0] == ('jail(&j) with struct jail {version=2, path="/jails/a", hostname="", jailname=NULL, '
                        'ip4s=0, ip4=NULL, ip6s=0, ip6=NULL}')
    assert lines[1] == 'chdir("/")'                                      # §11.11
    assert any("can open no IPv4 or IPv6 sockets" in line for line in lines)   # §11.7 warning


# --- jail-attach ------------------------------------------------------------------------------

def test_attach_by_jid_is_jail_attach_then_chdir():
    spec = spec_of("--jail-attach", "7")
    assert [(c.kind, c.args) for c in fb.plan(spec)] == [("attach", {"jid": 7})]
    assert fb.describe(spec) == ["jail_attach(7)", 'chdir("/")']


def test_attach_by_name_resolves_with_jail_get():
    # §4.3: name -> jid with jail_get (name + errmsg pairs = 4 iovecs, flags 0)
    spec = spec_of("--jail-attach", "web")
    assert [c.kind for c in fb.plan(spec)] == ["getid", "attach"]
    assert fb.describe(spec) == ['jail_get(iov, 4, 0): name="web", errmsg[1024] -> jid',
                                 "jail_attach(jid)", 'chdir("/")']


# --- jail2 -> jail_set ------------------------------------------------------------------------

def test_jail2_is_one_jail_set_create_attach():
    spec = spec_of("--jail2", "path=/jails/b", "--jail2", "host.hostname=b", "--jail2", "persist",
                   "--jail2", "allow.sysvipc", "--jail2", "ip4.addr=198.18.0.3", "--jail2", "enforce_statfs=1")
    [call] = fb.plan(spec)
    # §2.5, §11.8: JAIL_CREATE | JAIL_ATTACH, never with JAIL_UPDATE (path would be refused)
    assert call.kind == "jail_set" and call.args["flags"] == fb.JAIL_CREATE | fb.JAIL_ATTACH == 0x05
    assert call.args["pairs"] == [
        (b"path\0", b"/jails/b\0"),
        (b"host.hostname\0", b"b\0"),
        (b"persist\0", None),
        (b"allow.sysvipc\0", None),
        (b"ip4.addr\0", bytes([198, 18, 0, 3])),
        (b"enforce_statfs\0", (1).to_bytes(4, sys.byteorder)),
    ]


def test_describe_counts_iovec_elements_not_pairs():
    # §11.1: niov = 2 x (7 pairs + errmsg) = 16; persist and nopersist are one pair (§2.2)
    spec = spec_of("--jail2", "path=/j", "--jail2", "persist", "--jail2", "nopersist", "--jail2", "name=x",
                   "--jail2", "host.hostname=h", "--jail2", "allow.raw_sockets", "--jail2", "children.max=0",
                   "--jail2", "enforce_statfs=1")
    lines = fb.describe(spec)
    assert lines[0] == "jail_set(iov, 16, JAIL_CREATE|JAIL_ATTACH)"
    assert sum(line.startswith('  "') for line in lines) == 8
    assert lines[-2] == '  "errmsg\\0" (7 B) = buffer[1024], first byte zeroed'     # §2.2: errmsg last
    assert lines[-1] == 'chdir("/")'


def test_describe_shows_the_bytes():
    lines = fb.describe(spec_of("--jail2", "persist=0", "--jail2", "ip4.addr=10.0.0.1,10.0.0.2"))
    assert lines[1].split() == ['"nopersist\\0"', "(10", "B)", "=", "NULL", "(0", "B)", "nopersist"]
    assert lines[2].split()[:8] == ['"ip4.addr\\0"', "(9", "B)", "=", "0a", "00", "00", "01"]


def test_jail_ip4_with_jail2_goes_into_ip4_addr_after_the_jail2_ones():
    spec = spec_of("--jail2", "ip4.addr=198.18.0.2", "--jail-ip4", "198.18.0.9", "--jail-ip6", "fd00::9")
    pairs = fb.plan(spec)[0].args["pairs"]
    assert pairs == [(b"ip4.addr\0", bytes([198, 18, 0, 2, 198, 18, 0, 9])),
                     (b"ip6.addr\0", ipaddress.IPv6Address("fd00::9").packed)]


def test_attach_then_jail2_keeps_uwsgi_order():
    # UWSGI_SEMANTICS §3: jail, then jail-attach, then jail2 (a child of the attached jail)
    spec = spec_of("--jail2", "name=child", "--jail2", "persist", "--jail-attach", "parent")
    assert [c.kind for c in fb.plan(spec)] == ["getid", "attach", "jail_set"]


def test_jidfile_is_a_host_path_opened_before():
    lines = fb.describe(spec_of("--jail", "/j", "--jidfile", "/var/run/j.jid"))
    assert 'jidfile: open("/var/run/j.jid", O_WRONLY|O_CREAT|O_TRUNC, 0644) on the host before jailing; ' \
           'write "<jid>\\n" after' in lines                                  # §4.4, §11.22


def test_devfs_warnings():
    # §6, §11.20
    warned = fb.warnings(spec_of("--jail2", "allow.mount", "--jail2", "allow.mount.devfs"))
    assert len(warned) == 2 and "devfs_ruleset" in warned[0] and "enforce_statfs=2" in warned[1]
    assert fb.warnings(spec_of("--jail2", "allow.mount", "--jail2", "allow.mount.devfs",
                               "--jail2", "devfs_ruleset=4", "--jail2", "enforce_statfs=1")) == []


# --- reload: nothing is jailed again (§7, §11.13) ------------------------------------------

def test_reload_plans_nothing_and_create_does_nothing():
    spec = spec_of("--jail", "/j", "--jidfile", "/nonexistent/dir/j.jid", environ={"UWSGI_RELOADS": "1"})
    assert fb.plan(spec) == []
    assert fb.describe(spec) == ["reload: the process is already inside its jail; nothing is jailed again"]
    assert fb.create(spec) is None             # no jidfile opened (its directory does not exist)


# --- _jail's FreeBSD names exist on Linux and refuse ------------------------------------------

@pytest.mark.skipif(sys.platform.startswith("freebsd"), reason="the Linux behaviour of the FreeBSD calls")
@pytest.mark.parametrize("call, args", [
    (_jail.jail, ("/j", "", None, b"", b"")),
    (_jail.jail_set, ([(b"persist\0", None)], 5)),
    (_jail.jail_get, ([(b"name\0", b"x\0")], 0)),
    (_jail.jail_getid, ("web",)),
    (_jail.jail_attach, (1,)),
    (_jail.jail_remove, (1,)),
    (_jail.sysctl_oidfmt, ("security.jail.param.persist",)),
    (_jail.sysctl_read, ("security.jail.param.name", 16)),
])
def test_freebsd_calls_raise_enosys_on_linux(call, args):
    with pytest.raises(OSError) as info:
        call(*args)
    assert info.value.errno == errno.ENOSYS and "FreeBSD only" in str(info.value)


@pytest.mark.skipif(sys.platform.startswith("freebsd"), reason="the Linux behaviour of the FreeBSD calls")
def test_list_jails_on_linux_is_enosys():
    with pytest.raises(OSError) as info:
        fb.list_jails()
    assert info.value.errno == errno.ENOSYS


# --- list_jails' jail_get request and its decoding (pure parts) -------------------------------

def test_list_request_is_lastjid_then_output_buffers():
    # §2.6: lastjid picks the next jail; every other pair is an output buffer of a fixed size
    pairs = fb._list_pairs(5)
    assert pairs[0] == (b"lastjid\0", (5).to_bytes(4, sys.byteorder, signed=True))
    assert pairs[1:] == [(b"jid\0", 4), (b"name\0", 256), (b"host.hostname\0", 256), (b"path\0", 1024),
                         (b"ip4.addr\0", 4 * 255), (b"ip6.addr\0", 16 * 255), (b"persist\0", 4)]


def test_list_decoding():
    values = [b"", (3).to_bytes(4, sys.byteorder), b"web\0", b"h\0", b"/jails/web\0",
              bytes([198, 18, 0, 2]), ipaddress.IPv6Address("fd00::2").packed, (1).to_bytes(4, sys.byteorder)]
    assert fb._jail_info(3, values) == {
        "jid": 3, "name": "web", "hostname": "h", "root": "/jails/web", "ip4": ["198.18.0.2"],
        "ip6": ["fd00::2"], "addresses": ["198.18.0.2", "fd00::2"], "persist": True}


# --- _jail's argument checks run before the platform check, so they are tested here -------

@pytest.mark.parametrize("pairs, error", [
    ([(b"persist", None)], ValueError),              # §2.2: the name must end in its NUL
    ([(b"per\0sist\0", None)], ValueError),          # one NUL, at the end
    ([("persist\0", None)], ValueError),             # bytes, not str
    ([(b"enforce_statfs\0", 1)], TypeError),         # jail_set values are bytes or None
])
def test_jail_set_argument_checks(pairs, error):
    with pytest.raises(error):
        _jail.jail_set(pairs, fb.JAIL_CREATE | fb.JAIL_ATTACH)


def test_jail_get_takes_int_sizes_but_checks_names():
    with pytest.raises(ValueError):
        _jail.jail_get([(b"name", 256)], 0)


@pytest.mark.parametrize("args", [
    ("/j", "", None, b"\x7f\x00\x00", b""),           # ip4 not a multiple of 4 (in_addr)
    ("/j", "", None, b"", b"\x00" * 15),              # ip6 not a multiple of 16 (in6_addr)
    ("/j\0x", "", None, b"", b""),                    # an embedded NUL would cut the path
    ("/j", "h", "a\0b", b"", b""),
])
def test_jail_argument_checks(args):
    with pytest.raises(ValueError):
        _jail.jail(*args)


# --- before jailing: one jail per process, single-threaded, no directory fds (§11.12, §11.13) --

def test_a_second_jailing_in_one_process_is_refused(monkeypatch):
    monkeypatch.setattr(fb, "_entered", True)
    with pytest.raises(RuntimeError, match="already been jailed once"):
        fb.create(spec_of("--jail", "/j"))


def test_an_open_directory_fd_is_refused(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(RuntimeError, match=f"file descriptor {fd} is an open directory"):
            fb._check_safe_to_jail()
    finally:
        os.close(fd)


def test_a_fresh_process_passes_the_checks():
    # the positive control, in a fresh interpreter (the test process may hold other threads)
    code = "from jailserve.jail import freebsd; freebsd._check_safe_to_jail()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_a_running_thread_is_refused():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="threads running"):
            fb._check_safe_to_jail()
    finally:
        stop.set()
        thread.join()
