"""The jail_set encoding, byte for byte, on Linux.

Every expected value below is written from ../shared/FREEBSD_JAILS.md, cited by section
(§2.2 iovec protocol, §2.3 encodings, §2.4 parameters, §3 key=value rules, §11 checklist).
These are the bytes _jail.jail_set points its iovecs at; nothing here runs on FreeBSD.
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
import sys

import pytest
from hypothesis import given, strategies as st

from jailserve.jail import freebsd_params as fp

LITTLE = sys.byteorder == "little"


def pair(entry: str):
    """jail2 'key[=value]' -> (name bytes, value bytes or None), as freebsd.py builds it."""
    key, sep, value = entry.partition("=")
    canon, typed = fp.parse(key, value if sep else None)
    return fp.encode(canon, typed, fp.kind_of(canon))


# --- §3 "Unit tests worth having here" — the document's own list, one by one -------------

def test_bare_boolean_is_name_with_null_value():
    # §3: persist -> (persist, NULL, 0); §2.3 booleans: name alone, iov_base NULL, iov_len 0
    assert pair("persist") == (b"persist\0", None)


def test_boolean_zero_is_the_no_form_not_an_int():
    # §3: persist=0 -> (nopersist, NULL, 0); §11.3: an int 0 would SET persist
    assert pair("persist=0") == (b"nopersist\0", None)


def test_dotted_boolean_bare():
    # §3: allow.mount.devfs -> (allow.mount.devfs, NULL, 0)
    assert pair("allow.mount.devfs") == (b"allow.mount.devfs\0", None)


def test_no_boolean_bare_clears():
    # §3: allow.nomount -> (allow.nomount, NULL, 0)
    assert pair("allow.nomount") == (b"allow.nomount\0", None)


@pytest.mark.skipif(not LITTLE, reason="the §3 expectation is written for little-endian")
def test_int_is_four_native_bytes():
    # §3: enforce_statfs=1 -> 4 bytes 01 00 00 00 on little-endian; §11.5 not 8 bytes
    assert pair("enforce_statfs=1") == (b"enforce_statfs\0", b"\x01\x00\x00\x00")


def test_ip4_array_network_order_concatenated():
    # §3: ip4.addr=10.0.0.1,10.0.0.2 -> 8 bytes 0a000001 0a000002; §11.6 network order
    assert pair("ip4.addr=10.0.0.1,10.0.0.2") == (b"ip4.addr\0", bytes.fromhex("0a000001 0a000002"))


@pytest.mark.skipif(not LITTLE, reason="native int bytes written for little-endian")
def test_jailsys_new_is_int_one():
    # §3: sysvsem=new -> int 1; §2.3 jailsys = 4-byte int
    assert pair("sysvsem=new") == (b"sysvsem\0", b"\x01\x00\x00\x00")


def test_string_has_trailing_nul():
    # §3: name=foo -> b"foo\0"; §11.2 iov_len counts the NUL
    assert pair("name=foo") == (b"name\0", b"foo\0")


def test_array_without_value_is_an_error():
    # §3: ip4.addr without value -> error (§3.3: arrays need a value in jailserve)
    with pytest.raises(fp.ParamError, match="needs a value"):
        pair("ip4.addr")


def test_empty_string_value_is_one_nul():
    # §3: host.hostname= -> b"\0"
    assert pair("host.hostname=") == (b"host.hostname\0", b"\0")


# --- §2.2 names ----------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(k for k, p in fp.TABLE.items() if p.when != fp.RO and not p.refuse))
def test_every_settable_name_is_nul_terminated_once(key):
    # §2.2: name iov_len = strlen + 1, last byte NUL, no NUL before it
    name = fp.cname(key)
    assert name.endswith(b"\0") and name.count(b"\0") == 1 and len(name) == len(key) + 1


# --- §2.3 booleans and the no-form after the last dot --------------------------------

@pytest.mark.parametrize("key, no", [
    ("persist", "nopersist"),                       # §2.3
    ("allow.mount", "allow.nomount"),               # §2.3
    ("allow.mount.devfs", "allow.mount.nodevfs"),   # §2.3
    ("ip4.saddrsel", "ip4.nosaddrsel"),             # §2.3 (ip6 spelled the same way)
    ("ip6.saddrsel", "ip6.nosaddrsel"),
])
def test_no_form_goes_after_last_dot(key, no):
    assert fp.noname(key) == no
    assert fp.stem_of_noname(no) == key


@pytest.mark.parametrize("entry, sent", [
    ("allow.raw_sockets=true", b"allow.raw_sockets\0"),    # §3.4 true -> key
    ("allow.raw_sockets=FALSE", b"allow.noraw_sockets\0"),  # §3.4 any case; false -> no-form
    ("allow.raw_sockets=1", b"allow.raw_sockets\0"),        # §3.4 integer: non-zero true
    ("allow.raw_sockets=7", b"allow.raw_sockets\0"),
    ("allow.raw_sockets=0", b"allow.noraw_sockets\0"),
    ("allow.raw_sockets=yes", b"allow.raw_sockets\0"),      # wider uWSGI-style set (docs)
    ("allow.raw_sockets=off", b"allow.noraw_sockets\0"),
    ("allow.nomount=false", b"allow.mount\0"),             # §3.4: a no-boolean the other way
    ("allow.nomount=true", b"allow.nomount\0"),
    ("nopersist", b"nopersist\0"),                          # §3.3: bare no-boolean clears
])
def test_boolean_values(entry, sent):
    assert pair(entry) == (sent, None)                     # §2.3: always NULL / 0 value


@pytest.mark.parametrize("entry", ["persist=maybe", "allow.mount=", "persist=1.0", "persist= 1"])
def test_mistyped_boolean_is_an_error(entry):
    # issue 5: better than uWSGI, which sends a mistyped boolean as true (§8)
    with pytest.raises(fp.ParamError, match="not a boolean"):
        pair(entry)


def test_no_prefix_on_a_non_boolean_is_unknown():
    # §2.7 step 5: a no-form is accepted only when its stem is a boolean
    with pytest.raises(fp.ParamError, match="unknown jail parameter 'noenforce_statfs'"):
        pair("noenforce_statfs")


def test_canonical_form_merges_x_and_nox():
    # §2.2, §11.4: the kernel treats x and nox as one option; we store one canonical key
    assert fp.parse("allow.nomount", None) == ("allow.mount", False)
    assert fp.parse("allow.mount", None) == ("allow.mount", True)


# --- §2.3 ints, §3.6 -----------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 2])
def test_enforce_statfs_range_and_width(value):
    name, data = pair(f"enforce_statfs={value}")
    assert data == struct.pack("=i", value) and len(data) == 4        # §2.3, §11.5


def test_negative_int_is_four_byte_twos_complement():
    # securelevel may be -1 (§2.4); still exactly a C int (§2.3)
    assert pair("securelevel=-1") == (b"securelevel\0", struct.pack("=i", -1))


@pytest.mark.parametrize("entry, match", [
    ("enforce_statfs=one", "not an integer"),       # uWSGI would send 0 (§8)
    ("enforce_statfs= 1", "not an integer"),        # §3.6: strtol would take the space; we do not
    ("enforce_statfs=1x", "not an integer"),
    ("enforce_statfs=3", "out of range"),           # §2.4: 0..2 else EINVAL
    ("devfs_ruleset=65536", "out of range"),        # §2.4: 0..65535
    ("devfs_ruleset=-1", "out of range"),
    ("children.max=-1", "out of range"),
    ("securelevel=2147483648", "out of range"),     # §3.6: must fit a C int
    ("enforce_statfs", "needs a value"),            # §3.3: bare int key is an error here
])
def test_bad_ints(entry, match):
    with pytest.raises(fp.ParamError, match=match):
        pair(entry)


def test_int_limits_are_c_int():
    assert pair("securelevel=2147483647")[1] == struct.pack("=i", 2**31 - 1)
    assert pair("securelevel=-2147483648")[1] == struct.pack("=i", -(2**31))


# --- §2.3 unsigned long (host.hostid) -------------------------------------------------

@pytest.mark.skipif(struct.calcsize("P") != 8, reason="written for an LP64 process")
def test_hostid_is_unsigned_long_of_the_process():
    # §2.3, §11.5: host.hostid is unsigned long: 8 bytes on LP64 (not a 4-byte int)
    assert pair("host.hostid=4294967296") == (b"host.hostid\0", (2**32).to_bytes(8, sys.byteorder))
    with pytest.raises(fp.ParamError, match="unsigned long"):
        pair(f"host.hostid={2**64}")


def test_hostid_rejects_negative():
    with pytest.raises(fp.ParamError, match="unsigned long"):
        pair("host.hostid=-1")


# --- §2.3 jailsys, §3.5 -----------------------------------------------------------------

@pytest.mark.parametrize("value, number", [
    ("disable", 0), ("new", 1), ("inherit", 2), ("INHERIT", 2), ("0", 0), ("1", 1), ("2", 2),
])
def test_jailsys_words(value, number):
    assert pair(f"sysvshm={value}") == (b"sysvshm\0", struct.pack("=i", number))


def test_jailsys_bare_and_empty_mean_new():
    # §3.3 no value -> new; §3.5 empty -> new
    assert pair("ip4")[1] == struct.pack("=i", 1)
    assert pair("ip4=")[1] == struct.pack("=i", 1)


@pytest.mark.parametrize("entry", ["host=disable", "vnet=disable", "vnet=0"])
def test_disable_refused_for_host_and_vnet(entry):
    # §2.3: disable is invalid for host and vnet (EINVAL)
    with pytest.raises(fp.ParamError, match="refused by the kernel"):
        pair(entry)


def test_jailsys_bad_word():
    with pytest.raises(fp.ParamError, match="not a jailsys value"):
        pair("sysvsem=3")


# --- §2.3 strings, §3.7 ---------------------------------------------------------------

def test_string_is_utf8_plus_nul():
    assert pair("host.hostname=bücher")[1] == "bücher".encode() + b"\0"


@pytest.mark.parametrize("key, limit", [
    ("name", 255), ("host.hostname", 255), ("host.domainname", 255),
    ("host.hostuuid", 63), ("path", 1023),
])
def test_string_limits(key, limit):
    # §2.3: name/host.* <= 256 with NUL, hostuuid <= 64, path <= 1024
    value = "a" * limit
    assert pair(f"{key}={value}")[1] == value.encode() + b"\0"
    with pytest.raises(fp.ParamError, match="too long"):
        pair(f"{key}={value}a")


def test_osrelease_length():
    # §2.3: osrelease 1..31 characters
    assert pair("osrelease=14.0-RELEASE")[1] == b"14.0-RELEASE\0"
    with pytest.raises(fp.ParamError):
        pair("osrelease=")
    with pytest.raises(fp.ParamError, match="too long"):
        pair("osrelease=" + "x" * 32)


def test_string_rejects_embedded_nul():
    with pytest.raises(fp.ParamError, match="NUL"):
        pair("host.hostname=a\0b")                   # §3.7


def test_bare_string_is_an_error():
    # §3.3: uWSGI imports "1" (path -> ./1); jailserve refuses
    with pytest.raises(fp.ParamError, match="needs a value"):
        pair("path")


def test_empty_path_is_an_error():
    with pytest.raises(fp.ParamError, match="empty"):
        pair("path=")                                # §3.7: empty path fails ENOENT


@pytest.mark.parametrize("name, match", [
    ("web.a", "child of jail 'web'"),               # §2.4, §11.14: dot = hierarchy
    ("007", "cannot be a jid"),                     # §2.4: numeric name, no leading zeros
    ("1000000", "cannot be a jid"),                 # jids wrap at 999999 (§2.4)
])
def test_bad_jail_names(name, match):
    with pytest.raises(fp.ParamError, match=match):
        pair(f"name={name}")


def test_numeric_name_is_allowed():
    # §2.4: with JAIL_CREATE and no jid a numeric name becomes the jid
    assert pair("name=42")[1] == b"42\0"


# --- §2.3 address arrays, §3.8 --------------------------------------------------------

def test_ip6_array_sixteen_bytes_each():
    name, data = pair("ip6.addr=fd00::2,fd00::3")
    assert name == b"ip6.addr\0"
    assert data == ipaddress.IPv6Address("fd00::2").packed + ipaddress.IPv6Address("fd00::3").packed
    assert len(data) == 32                                          # §2.3 multiple of 16


def test_first_address_stays_first():
    # §1.2, §11.6: the first address is the primary one; we never sort
    assert pair("ip4.addr=10.0.0.9,10.0.0.1")[1] == bytes.fromhex("0a000009 0a000001")


@pytest.mark.parametrize("value", ["", "-"])
def test_empty_array(value):
    # §3.8: "" or "-" is the empty list (length 0 = no addresses of that family)
    assert pair(f"ip4.addr={value}") == (b"ip4.addr\0", b"")


@pytest.mark.parametrize("value", [
    "10.0.0.1/24",        # §3.8, §11.6: no prefix
    "em0|10.0.0.1",       # §3.8: no iface| (jail(8) syntax)
    " 10.0.0.1",          # §3.8: no spaces
    "10.0.0.1, 10.0.0.2",
    "fd00::1",            # an IPv6 address in ip4.addr
    "10.0.0",
])
def test_bad_ip4_elements(value):
    with pytest.raises(fp.ParamError, match="not an IPv4 address"):
        pair(f"ip4.addr={value}")


def test_ip6_scope_refused():
    with pytest.raises(fp.ParamError, match="not an IPv6 address"):
        pair("ip6.addr=fe80::1%em0")


@pytest.mark.parametrize("kind, addrs, match", [
    (fp.IP4, ["0.0.0.0"], "refused by the kernel"),            # §1.2
    (fp.IP4, ["255.255.255.255"], "refused by the kernel"),
    (fp.IP6, ["::"], "refused by the kernel"),
    (fp.IP4, ["10.0.0.1", "10.0.0.1"], "given twice"),         # §1.2 duplicates -> EINVAL
])
def test_kernel_address_checks(kind, addrs, match):
    with pytest.raises(fp.ParamError, match=match):
        fp.check_addresses(kind, fp.parse_addresses(kind, addrs))


def test_too_many_addresses():
    addrs = tuple(ipaddress.IPv4Address(0x0A000001 + i) for i in range(256))
    with pytest.raises(fp.ParamError, match="at most 255"):     # §1.2 jail_max_af_ips
        fp.check_addresses(fp.IP4, addrs)
    fp.check_addresses(fp.IP4, addrs[:255])


# --- §2.4 read-only, refused and unknown keys -----------------------------------------

@pytest.mark.parametrize("key", ["dying", "parent", "children.cur", "cpuset.id"])
def test_read_only_parameters(key):
    # §2.2: read-only parameters are not consumed by jail_set -> EINVAL; refuse them here
    with pytest.raises(fp.ParamError, match="read-only"):
        fp.parse(key, "1")


def test_jid_is_refused():
    # §7, §11.21: never pass jid when creating
    with pytest.raises(fp.ParamError, match="let the kernel choose"):
        fp.parse("jid", "5")


def test_unknown_key_without_probe():
    with pytest.raises(fp.ParamError, match="unknown jail parameter 'allow.teleport'"):
        fp.parse("allow.teleport", None)


# --- §2.7 run-time probing, over a sysctl tree written from §2.4/§2.7 ------------------

RW_INT = fp.CTLFLAG_RD | fp.CTLFLAG_WR | 2
TREE = {
    # name -> (kind word, format), as the {0,4} oidfmt node answers (§2.7 step 2)
    "security.jail.param.allow.nfsd": (fp.CTLFLAG_RD | fp.CTLFLAG_WR | 2, "B"),
    "security.jail.param.meta": (fp.CTLFLAG_RD | fp.CTLFLAG_WR | 3, "A"),
    "security.jail.param.linux": (fp.CTLFLAG_RD | 1, "N"),                # a node (step 4)
    "security.jail.param.linux.": (fp.CTLFLAG_RD | fp.CTLFLAG_WR | 2, "E,jailsys"),
    "security.jail.param.osfoo": (fp.CTLFLAG_RD | fp.CTLFLAG_TUN | 2, "I"),
    "security.jail.param.weird": (fp.CTLFLAG_RD | fp.CTLFLAG_WR | 5, "S,foo"),
}
SIZES = {"security.jail.param.meta": 4096}
PROBE = fp.make_probe(TREE.get, lambda name: SIZES[name])


def test_probe_boolean_and_its_no_form():
    # §2.7 step 2 (B -> boolean) and step 5 (no-form of a probed boolean)
    assert pair_probed("allow.nfsd") == (b"allow.nfsd\0", None)
    assert pair_probed("allow.nonfsd") == (b"allow.nonfsd\0", None)


def test_probe_string_uses_reported_size():
    # §2.7 step 3: a string's maximum length comes from reading the sysctl
    assert pair_probed("meta=x") == (b"meta\0", b"x\0")
    with pytest.raises(fp.ParamError, match="too long"):
        pair_probed("meta=" + "x" * 4096)


def test_probe_node_with_empty_child():
    # §2.7 step 4: a node with an empty-named child is the parameter itself
    assert pair_probed("linux=inherit") == (b"linux\0", struct.pack("=i", 2))


def test_probe_when_flags():
    assert PROBE("osfoo").when == fp.CREATE          # §2.7: RDTUN = creation only
    assert PROBE("allow.nfsd").when == fp.RW


def test_probe_unknown_and_unencodable():
    with pytest.raises(fp.ParamError, match="unknown jail parameter 'allow.nothing'"):
        fp.parse("allow.nothing", None, PROBE)
    with pytest.raises(fp.ParamError, match="cannot encode"):
        fp.parse("weird", "x", PROBE)


def test_dynamic_table_key_missing_from_kernel():
    # §11.24: allow.mount.<fs> exists only while that file system is in the kernel
    with pytest.raises(fp.ParamError, match="not in this kernel"):
        fp.parse("allow.mount.zfs", None, PROBE)
    assert fp.parse("allow.mount.zfs", None) == ("allow.mount.zfs", True)   # no probe: table


def pair_probed(entry: str):
    key, sep, value = entry.partition("=")
    canon, typed = fp.parse(key, value if sep else None, PROBE)
    return fp.encode(canon, typed, fp.kind_of(canon, PROBE))


# --- properties against an independent oracle ------------------------------------------

ip4_text = st.integers(1, 2**32 - 2).map(lambda n: str(ipaddress.IPv4Address(n)))
ip6_text = st.integers(1, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@given(st.lists(ip4_text, min_size=1, max_size=8, unique=True))
def test_ip4_array_is_inet_pton_concatenated(addrs):
    # §3.8: each element through inet_pton(AF_INET), output concatenated, order kept
    assert pair("ip4.addr=" + ",".join(addrs))[1] == b"".join(socket.inet_pton(socket.AF_INET, a) for a in addrs)


@given(st.lists(ip6_text, min_size=1, max_size=4, unique=True))
def test_ip6_array_is_inet_pton_concatenated(addrs):
    assert pair("ip6.addr=" + ",".join(addrs))[1] == b"".join(socket.inet_pton(socket.AF_INET6, a) for a in addrs)


@given(st.integers(-(2**31), 2**31 - 1))
def test_securelevel_is_a_c_int(value):
    # §2.3: exactly 4 bytes, the C int of the process (ctypes as the oracle)
    assert pair(f"securelevel={value}")[1] == bytes(ctypes.c_int(value))


@given(st.sampled_from(sorted(k for k, p in fp.TABLE.items() if p.kind == fp.BOOL and p.when != fp.RO)),
       st.booleans())
def test_every_boolean_true_is_key_false_is_no_form(key, value):
    # §2.3, §11.3: booleans are never sent with a value
    assert pair(f"{key}={'true' if value else 'false'}") == ((key if value else fp.noname(key)).encode() + b"\0", None)
