"""A small rtnetlink client: just the messages a jail's network needs.

Why our own and not pyroute2: pyroute2 does all of this with nicer code, but importing it
costs 110-165 ms and about 4 MB per forked process, and its netns sockets fork a helper
(LINUX_JAILS.md §2); every jail init and master is a fork of the process that imported it.
This module is stdlib `socket` + `struct` and costs well under a millisecond per message
(bench/jail/bench_netlink.py measures both).

A netlink socket talks to the network namespace its creator was in when it was made, so the
keeper (host side) and the jail's init (jail side) each open their own.

Layouts: linux/netlink.h (nlmsghdr), linux/rtnetlink.h (ifinfomsg, ifaddrmsg, rtmsg),
linux/if_link.h (IFLA_*), linux/veth.h, linux/if_addr.h (IFA_*).
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

# message types and flags
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400

# link attributes
IFLA_IFNAME, IFLA_LINKINFO, IFLA_NET_NS_PID, IFLA_AF_SPEC = 3, 18, 19, 26
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_INET6_ADDR_GEN_MODE = 8
IN6_ADDR_GEN_MODE_NONE = 1
IFF_UP = 0x1

# address and route attributes
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC = 1, 4, 5, 7
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254

_NLMSGHDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")    # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")     # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")     # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTA = struct.Struct("=HH")


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes (RTA_ALIGN)."""
    data = _RTA.pack(_RTA.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind, b"".join(attrs))


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _family(addr) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


class Netlink:
    """One NETLINK_ROUTE socket; every request waits for the kernel's ack (or errno)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, what: str, msg_type: int, body: bytes, flags: int = 0) -> None:
        self.seq += 1
        head = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0)
        self.sock.send(head + body)
        self._ack(what)

    def _ack(self, what: str) -> None:
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if kind == NLMSG_ERROR and seq == self.seq:
                    (code,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    if code:
                        raise OSError(-code, f"{what}: {os.strerror(-code)}")
                    return
                offset += max(length, _NLMSGHDR.size) + (-length % 4)

    # links -------------------------------------------------------------------------------

    def add_veth(self, name: str, peer: str, peer_netns_pid: int) -> None:
        """A veth pair: `name` here, `peer` created directly in the netns of process `peer_netns_pid`."""
        peer_info = ifinfo() + attr_str(IFLA_IFNAME, peer) + attr_u32(IFLA_NET_NS_PID, peer_netns_pid)
        linkinfo = nest(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth"),
                        nest(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_info)))
        self.request(f"add veth {name}/{peer}", RTM_NEWLINK, ifinfo() + attr_str(IFLA_IFNAME, name) + linkinfo,
                     NLM_F_CREATE | NLM_F_EXCL)

    def delete_link(self, name: str) -> bool:
        """Remove a link (both ends, for a veth); False when it was already gone."""
        try:
            self.request(f"delete link {name}", RTM_DELLINK, ifinfo() + attr_str(IFLA_IFNAME, name))
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    def link_up(self, index: int, no_ipv6_autoconf: bool = False) -> None:
        """Set IFF_UP; optionally first stop the kernel from adding its own fe80:: address,
        so the link holds exactly the addresses we give it (the mode must be set while the
        link is down, in a message of its own)."""
        if no_ipv6_autoconf:
            mode = nest(IFLA_AF_SPEC, nest(socket.AF_INET6, attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE]))))
            self.request(f"set link {index} addrgenmode none", RTM_NEWLINK, ifinfo(index) + mode)
        self.request(f"set link {index} up", RTM_NEWLINK, ifinfo(index, IFF_UP, IFF_UP))

    # addresses and routes ----------------------------------------------------------------

    def add_address(self, index: int, address, prefixlen: int | None = None, scope: int = RT_SCOPE_UNIVERSE) -> None:
        """An address on a link.  IPv6 ones get IFA_F_NODAD: without it the address stays
        "tentative" and bind() fails with EADDRNOTAVAIL for about a second."""
        address = ipaddress.ip_address(address)
        family = _family(address)
        prefixlen = address.max_prefixlen if prefixlen is None else prefixlen
        flags = IFA_F_NODAD if address.version == 6 else 0
        body = _IFADDRMSG.pack(family, prefixlen, flags, scope, index)
        body += attr(IFA_LOCAL, address.packed) + attr(IFA_ADDRESS, address.packed) + attr_u32(IFA_FLAGS, flags)
        self.request(f"add address {address}/{prefixlen}", RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL)

    def add_route(self, index: int, dst=None, gateway=None, prefsrc=None, family: int | None = None) -> None:
        """A route out of link `index`: to `dst` (a host route; None = default) directly on the
        link (scope link) or via `gateway`."""
        dst = ipaddress.ip_address(dst) if dst is not None else None
        gateway = ipaddress.ip_address(gateway) if gateway is not None else None
        some = dst or gateway
        family = family or _family(some)
        dst_len = dst.max_prefixlen if dst is not None else 0
        scope = RT_SCOPE_LINK if gateway is None else RT_SCOPE_UNIVERSE
        body = _RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0)
        if dst is not None:
            body += attr(RTA_DST, dst.packed)
        if gateway is not None:
            body += attr(RTA_GATEWAY, gateway.packed)
        if prefsrc is not None:
            body += attr(RTA_PREFSRC, ipaddress.ip_address(prefsrc).packed)
        body += attr_u32(RTA_OIF, index)
        self.request(f"add route {dst or 'default'} dev {index}", RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL)
