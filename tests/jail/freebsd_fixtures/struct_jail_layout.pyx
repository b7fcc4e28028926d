# cython: language_level=3
# Compiled by freebsd-check only (tests/jail/test_freebsd_layout.py): the _Static_asserts
# below are FREEBSD_JAILS §1.1's table of struct jail (version 2) and §2.1/§2.2's constants
# and sizes, checked against FreeBSD's own <sys/jail.h> for each target.  If FreeBSD's
# header and the document disagree, this file fails to compile.  It has no Linux branch.

cdef extern from *:
    """
    #if !defined(__FreeBSD__)
    #error "struct_jail_layout.pyx is a FreeBSD compile check (freebsd-check)"
    #endif
    #include <sys/param.h>
    #include <sys/types.h>
    #include <sys/uio.h>
    #include <sys/jail.h>
    #include <netinet/in.h>
    #include <stddef.h>
    #include <stdint.h>

    #define JS_MEMBER_SIZE(type, member) sizeof(((type *)0)->member)

    /* FREEBSD_JAILS 1.1: offsets on LP64 (amd64, arm64) and ILP32 (i386) */
    #if defined(__LP64__)
    _Static_assert(offsetof(struct jail, version) == 0, "version at 0");
    _Static_assert(offsetof(struct jail, path) == 8, "path at 8");
    _Static_assert(offsetof(struct jail, hostname) == 16, "hostname at 16");
    _Static_assert(offsetof(struct jail, jailname) == 24, "jailname at 24");
    _Static_assert(offsetof(struct jail, ip4s) == 32, "ip4s at 32");
    _Static_assert(offsetof(struct jail, ip6s) == 36, "ip6s at 36");
    _Static_assert(offsetof(struct jail, ip4) == 40, "ip4 at 40");
    _Static_assert(offsetof(struct jail, ip6) == 48, "ip6 at 48");
    _Static_assert(sizeof(struct jail) == 56, "struct jail is 56 bytes");
    _Static_assert(sizeof(struct iovec) == 16, "iovec is 16 bytes (2.2)");
    #else
    _Static_assert(offsetof(struct jail, path) == 4, "path at 4");
    _Static_assert(offsetof(struct jail, hostname) == 8, "hostname at 8");
    _Static_assert(offsetof(struct jail, jailname) == 12, "jailname at 12");
    _Static_assert(offsetof(struct jail, ip4s) == 16, "ip4s at 16");
    _Static_assert(offsetof(struct jail, ip6s) == 20, "ip6s at 20");
    _Static_assert(offsetof(struct jail, ip4) == 24, "ip4 at 24");
    _Static_assert(offsetof(struct jail, ip6) == 28, "ip6 at 28");
    _Static_assert(sizeof(struct jail) == 32, "struct jail is 32 bytes");
    _Static_assert(sizeof(struct iovec) == 8, "iovec is 8 bytes (2.2)");
    #endif
    _Static_assert(JS_MEMBER_SIZE(struct jail, version) == 4, "version is uint32_t");
    _Static_assert(JS_MEMBER_SIZE(struct jail, ip4s) == 4, "ip4s is 32-bit");
    _Static_assert(JS_MEMBER_SIZE(struct jail, ip6s) == 4, "ip6s is 32-bit");
    _Static_assert(sizeof(struct in_addr) == 4, "in_addr is 4 bytes");
    _Static_assert(sizeof(struct in6_addr) == 16, "in6_addr is 16 bytes");

    /* 2.1: the numbers jail/freebsd.py and jail/freebsd_params.py use */
    _Static_assert(JAIL_API_VERSION == 2, "JAIL_API_VERSION 2");
    _Static_assert(JAIL_CREATE == 0x01, "JAIL_CREATE");
    _Static_assert(JAIL_UPDATE == 0x02, "JAIL_UPDATE");
    _Static_assert(JAIL_ATTACH == 0x04, "JAIL_ATTACH");
    _Static_assert(JAIL_DYING == 0x08, "JAIL_DYING");
    _Static_assert(JAIL_SYS_DISABLE == 0 && JAIL_SYS_NEW == 1 && JAIL_SYS_INHERIT == 2, "jailsys");
    /* 2.3: unsigned long (host.hostid) is pointer-sized on these targets */
    _Static_assert(sizeof(unsigned long) == sizeof(void *), "unsigned long width");

    static int js_layout_size(void) { return (int)sizeof(struct jail); }
    """
    int js_layout_size()


def struct_jail_size():
    return js_layout_size()
