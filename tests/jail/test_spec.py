"""build_spec: the jail options of a real Config -> JailSpec, or ConfigError with FILE:LINE.

Configs are loaded with jailserve.config.load_config, from argv or from an ini file in
tmp_path so that error locations are real file:line origins.
"""
from __future__ import annotations

import ipaddress
import textwrap

import pytest

from jailserve.config import load_config
from jailserve.errors import ConfigError
from jailserve.jail.spec import LINUX_KEYS, build_spec, split_jail_words


def spec_of(*argv, platform="linux", environ=None):
    return build_spec(load_config(list(argv), environ or {}), platform=platform)


def spec_of_ini(tmp_path, text, platform="linux"):
    path = tmp_path / "jail.ini"
    path.write_text("[uwsgi]\n" + textwrap.dedent(text))
    return build_spec(load_config([str(path)], {}), platform=platform)


def error_of(*argv, platform="linux") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        spec_of(*argv, platform=platform)
    return info.value


# --- no jail ---------------------------------------------------------------------------

def test_no_jail_option_gives_none():
    assert spec_of("--processes", "2") is None


# --- jail = ROOT [HOST] [NAME] (uWSGI's split, UWSGI_SEMANTICS §3) ------------------------

@pytest.mark.parametrize("text, words", [
    ("/x", ("/x", "", None)),                          # no hostname -> "", no name -> None
    ("/x h", ("/x", "h", None)),
    ("/x h n", ("/x", "h", "n")),
    ("/x h my jail name", ("/x", "h", "my jail name")),   # the rest, spaces and all
    ("/x  n", ("/x", "", "n")),                        # cut at each single space
])
def test_split_jail_words(text, words):
    assert split_jail_words(text) == words


def test_jail_option_fills_the_spec():
    spec = spec_of("--jail", "/x h n", "--jail-ip4", "127.0.0.2", "--jail-ip4", "198.18.0.2",
                   "--jail-ip6", "fd00::2", "--jidfile", "/run/x.jid")
    assert (spec.source, spec.root, spec.hostname, spec.name) == ("jail", "/x", "h", "n")
    assert spec.ip4 == (ipaddress.IPv4Address("127.0.0.2"), ipaddress.IPv4Address("198.18.0.2"))
    assert spec.ip6 == (ipaddress.IPv6Address("fd00::2"),)
    assert (spec.ip4_mode, spec.ip6_mode) == ("new", "new")
    assert spec.jidfile == "/run/x.jid" and spec.attach is None and spec.params == ()
    # jail(2) jails get the host sysctl defaults (FREEBSD_JAILS §1.2)
    assert spec.sysvipc is False and spec.allow_set_hostname is True and spec.enforce_statfs == 2


def test_jail_without_addresses_has_no_network():
    # FREEBSD_JAILS §1.2, §11.7: zero addresses means no IPv4/IPv6 at all, not the host's
    spec = spec_of("--jail", "/x")
    assert (spec.ip4, spec.ip6, spec.ip4_mode, spec.ip6_mode) == ((), (), "disable", "disable")


def test_jail_error_names_file_line_and_option(tmp_path):
    with pytest.raises(ConfigError) as info:
        spec_of_ini(tmp_path, "processes = 2\njail = relative/root h\n")
    assert str(info.value) == (f"{tmp_path}/jail.ini:3: option 'jail': the jail root 'relative/root' is not "
                               f"an absolute path (allowed: ROOTFS [HOSTNAME [NAME]], separated by single spaces)")


@pytest.mark.parametrize("text, match", [
    ("/x h web.a", "child of jail 'web'"),             # FREEBSD_JAILS §11.14
    ("/x h 007", "cannot be a jid"),
    ("/x " + "h" * 256, "hostname is longer than 255"),
    ("/x h ", "jail name is empty"),
])
def test_bad_jail_words(text, match):
    err = error_of("--jail", text)
    assert err.option == "jail" and match in err.message


# --- combinations -------------------------------------------------------------------

def test_jail_with_jail_attach_is_an_error():
    err = error_of("--jail", "/x", "--jail-attach", "web")
    assert err.option == "jail-attach" and "cannot be combined with 'jail'" in err.message


def test_jail_with_jail2_is_an_error():
    err = error_of("--jail", "/x", "--jail2", "persist", platform="freebsd")
    assert err.option == "jail2" and "children.max = 0" in err.message


@pytest.mark.parametrize("option, value", [("--jail-ip4", "198.18.0.2"), ("--jail-ip6", "fd00::2")])
def test_jail_ip_without_a_jail(option, value):
    err = error_of(option, value)
    assert err.option == option[2:] and "needs 'jail'" in err.message


def test_jidfile_without_a_jail():
    err = error_of("--jidfile", "/run/x.jid")
    assert err.option == "jidfile"


def test_attach_with_jail2_is_nesting():
    # allowed on FreeBSD (a child of the attached jail), refused on Linux
    spec = spec_of("--jail-attach", "12", "--jail2", "name=child", "--jail2", "persist", platform="freebsd")
    assert spec.attach == "12" and spec.attach_jid == 12 and spec.source == "jail2"
    err = error_of("--jail-attach", "12", "--jail2", "persist", platform="linux")
    assert err.option == "jail2" and "nested" in err.message


# --- jail-attach -----------------------------------------------------------------------

@pytest.mark.parametrize("target, jid", [("12", 12), ("web", None), ("web jail", None)])
def test_attach_targets(target, jid):
    spec = spec_of("--jail-attach", target)
    assert spec.attach == target and spec.attach_jid == jid and not spec.creates


@pytest.mark.parametrize("target, match", [("0", "host itself"), (" web", "not a jid or a jail name"),
                                           ("x" * 256, "longer than 255")])
def test_bad_attach_targets(target, match):
    err = error_of("--jail-attach", target)
    assert err.option == "jail-attach" and match in err.message


# --- jail2 -------------------------------------------------------------------------------

def test_jail2_merges_arrays_and_last_wins_for_scalars(tmp_path):
    spec = spec_of_ini(tmp_path, """\
        jail2 = path=/j
        jail2 = ip4.addr=198.18.0.2
        jail2 = enforce_statfs=2
        libjail = ip4.addr=198.18.0.3,198.18.0.4
        jail2 = enforce_statfs=1
        jail2 = persist
        jail2 = nopersist
    """, platform="freebsd")
    keys = [p.key for p in spec.params]
    assert keys == ["path", "ip4.addr", "enforce_statfs", "persist"]     # first-seen order
    ip4 = spec.param("ip4.addr")
    assert [str(a) for a in ip4] == ["198.18.0.2", "198.18.0.3", "198.18.0.4"]   # concatenated
    assert spec.param("enforce_statfs") == 1 and spec.enforce_statfs == 1          # last wins
    assert spec.param("persist") is False and spec.persist is False                # x/nox: one key
    origins = {p.key: p.origin.line for p in spec.params}
    assert origins == {"path": 2, "ip4.addr": 5, "enforce_statfs": 6, "persist": 8}
    assert spec.root == "/j" and spec.source == "jail2" and spec.ip4_mode == "new"


def test_jail2_error_has_file_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        spec_of_ini(tmp_path, "jail2 = persist\njail2 = enforce_statfs=one\n")
    assert str(info.value).startswith(f"{tmp_path}/jail.ini:3: option 'jail2': 'enforce_statfs=one': not an integer")


@pytest.mark.parametrize("entry, match", [
    ("allow.teleport", "unknown jail parameter 'allow.teleport'"),
    ("persist=maybe", "not a boolean"),
    ("children.max=many", "not an integer"),
    ("path", "needs a value"),
    ("ip4.addr", "needs a value"),
    ("dying", "read-only"),
])
def test_jail2_value_errors(entry, match):
    err = error_of("--jail2", entry, platform="freebsd")
    assert err.option == "jail2" and match in err.message


def test_duplicate_address_across_entries():
    err = error_of("--jail2", "ip4.addr=198.18.0.2", "--jail2", "ip4.addr=198.18.0.2", platform="freebsd")
    assert "given twice" in err.message


def test_jail_ip4_adds_to_a_jail2_jail_after_its_own():
    spec = spec_of("--jail2", "ip4.addr=198.18.0.2", "--jail-ip4", "198.18.0.9", platform="freebsd")
    assert [str(a) for a in spec.ip4] == ["198.18.0.2", "198.18.0.9"]


@pytest.mark.parametrize("mode", ["disable", "inherit"])
def test_ip_mode_contradicting_addresses(mode):
    err = error_of("--jail2", f"ip4={mode}", "--jail2", "ip4.addr=198.18.0.2", platform="freebsd")
    assert err.option == "jail2" and f"ip4={mode} contradicts" in err.message
    assert spec_of("--jail2", "ip4=new", "--jail2", "ip4.addr=198.18.0.2", platform="freebsd").ip4_mode == "new"


def test_vnet_with_addresses_is_an_error():
    err = error_of("--jail2", "vnet", "--jail2", "ip4.addr=198.18.0.2", platform="freebsd")
    assert "vnet=new cannot have addresses" in err.message


# --- the derived fields the Linux backend reads ---------------------------------------------

def test_linux_mapping_fields():
    spec = spec_of("--jail2", "path=/j", "--jail2", "host.hostname=h", "--jail2", "name=web",
                   "--jail2", "persist", "--jail2", "allow.mount", "--jail2", "allow.mount.tmpfs",
                   "--jail2", "allow.mount.nodevfs", "--jail2", "enforce_statfs=1",
                   "--jail2", "allow.noset_hostname", "--jail2", "allow.raw_sockets=true",
                   "--jail2", "children.max=3", "--jail2", "devfs_ruleset=4", "--jail2", "sysvsem=new")
    assert (spec.root, spec.hostname, spec.name) == ("/j", "h", "web")
    assert spec.persist and spec.allow_mount and spec.allow_mount_fs == ("tmpfs",)
    assert spec.enforce_statfs == 1 and spec.allow_set_hostname is False and spec.allow_raw_sockets
    assert spec.children_max == 3 and spec.devfs_ruleset == 4
    assert (spec.sysvsem, spec.sysvshm, spec.sysvmsg, spec.sysvipc) == ("new", "disable", "disable", True)


def test_allow_sysvipc_means_inherit_for_all_three():
    # FREEBSD_JAILS §2.4: allow.sysvipc = sysvmsg=sysvsem=sysvshm=inherit; an explicit key wins
    spec = spec_of("--jail2", "allow.sysvipc", "--jail2", "sysvshm=disable")
    assert (spec.sysvsem, spec.sysvshm, spec.sysvmsg) == ("inherit", "disable", "inherit")


def test_linux_refuses_keys_without_a_linux_meaning():
    err = error_of("--jail2", "securelevel=3", platform="linux")
    assert err.option == "jail2" and "'securelevel' has no Linux equivalent" in err.message
    assert spec_of("--jail2", "securelevel=3", platform="freebsd").param("securelevel") == 3


@pytest.mark.parametrize("entry", [
    "path=/j", "name=web", "host.hostname=h", "ip4.addr=198.18.0.2", "ip6.addr=fd00::2",
    "ip4=disable", "ip6=new", "vnet", "persist", "allow.sysvipc", "sysvsem=new", "sysvshm=new",
    "sysvmsg=new", "allow.mount", "allow.mount.devfs", "allow.mount.procfs", "enforce_statfs=1",
    "allow.set_hostname=0", "allow.raw_sockets", "children.max=0", "devfs_ruleset=4",
])
def test_every_linux_key_is_accepted_on_linux(entry):
    assert spec_of("--jail2", entry, platform="linux") is not None


def test_linux_key_table_is_the_documented_list():
    # issue 4 item 1: at least these keys have a Linux meaning
    required = {"path", "name", "host.hostname", "ip4.addr", "ip6.addr", "ip4", "ip6", "vnet", "persist",
                "allow.sysvipc", "sysvsem", "sysvshm", "sysvmsg", "allow.mount", "allow.mount.*",
                "enforce_statfs", "allow.set_hostname", "allow.raw_sockets", "children.max", "devfs_ruleset"}
    assert required <= set(LINUX_KEYS)


def test_linux_sysv_cannot_mix_new_and_inherit():
    err = error_of("--jail2", "sysvsem=new", "--jail2", "sysvshm=inherit", platform="linux")
    assert "one namespace" in err.message


def test_reload_is_carried():
    spec = spec_of("--jail", "/x", environ={"UWSGI_RELOADS": "1"})
    assert spec.reload is True
    assert spec_of("--jail", "/x").reload is False


def test_check_platform_option_selects_the_rules():
    config = load_config(["--jail2", "securelevel=3", "--check-platform", "freebsd"], {})
    assert build_spec(config).platform == "freebsd"
    with pytest.raises(ConfigError) as info:
        build_spec(load_config(["--jail2", "persist", "--check-platform", "solaris"], {}))
    assert info.value.option == "check-platform"
