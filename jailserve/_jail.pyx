# cython: language_level=3
"""System calls for jails, namespaces and semaphores: thin, typed, errno -> OSError.

One module for every OS: each section below has its own `cdef extern from *` block whose
C code is chosen by the preprocessor (`__FreeBSD__` / `__linux__`), and exposes one set of
Python names.  Only this module, jail/freebsd.py and jail/linux.py know which OS they run on.

Sections (each owned by one part of the code base; keep edits inside your section):
  1. common helpers
  2. FreeBSD jails: jail(2), jail_set(2), jail_get(2), jail_attach(2), jail_remove(2), sysctl probe
  3. Linux namespaces: unshare, setns, pivot_root, mount, umount2, sethostname, pidfd, prctl, caps
  4. semaphores: SysV semget/semop/semctl/ftok, POSIX sem_open/sem_init/sem_wait/sem_post
"""

from libc.errno cimport errno
from libc.string cimport strerror


# ---------------------------------------------------------------------------------------
# 1. common helpers

cdef extern from *:
    """
    #if defined(__FreeBSD__)
    #define JS_PLATFORM "freebsd"
    #elif defined(__linux__)
    #define JS_PLATFORM "linux"
    #else
    #error "jailserve._jail supports FreeBSD and Linux only"
    #endif
    """
    const char *JS_PLATFORM


PLATFORM = JS_PLATFORM.decode()


cdef int raise_errno(str what) except -1:
    """Raise OSError for the errno left by the call just made (read before any Python runs)."""
    cdef int err = errno
    raise OSError(err, f"{what}: {strerror(err).decode()}")


cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int js_malloc_trim(void) { return malloc_trim(0); }
    #else
    static int js_malloc_trim(void) { return 0; }
    #endif
    """
    int js_malloc_trim() nogil


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): the free pages of the malloc heap go back to the kernel (True
    when some did).  The master calls it before its first fork, so that no worker starts
    with a copy of the start-up's garbage.  Other C libraries (FreeBSD's jemalloc) return
    free pages by themselves: nothing to do, False."""
    return js_malloc_trim() != 0


# ---------------------------------------------------------------------------------------
# 2. FreeBSD jails
#
# jail(2) with struct jail v2, jail_set(2)/jail_get(2) with name/value iovecs and an errmsg
# buffer, jail_attach(2) + chdir("/"), jail_remove(2), name -> jid, and the sysctl reads
# that tell a jail parameter's type (FREEBSD_JAILS §1, §2, §4, §2.7).  The C lives behind
# __FreeBSD__; on Linux the same names exist and every Python function raises
# OSError(ENOSYS, "...: FreeBSD only"), so one module builds on both.  Encoding of values
# is not done here: jail/freebsd_params.py builds the exact bytes (unit-tested on Linux)
# and these functions only point iovecs at them.

from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.errno cimport ENOENT
from posix.unistd cimport chdir as _fb_chdir

cdef extern from *:
    """
    #if defined(__FreeBSD__)
    #include <sys/param.h>
    #include <sys/types.h>
    #include <sys/uio.h>
    #include <sys/jail.h>
    #include <sys/sysctl.h>
    #include <netinet/in.h>
    #include <errno.h>
    #include <string.h>

    /* jail/freebsd_params.py keeps these numbers for pure code and tests; the C build (and
       freebsd-check) fails here if the header ever disagrees (FREEBSD_JAILS 2.1). */
    _Static_assert(JAIL_API_VERSION == 2, "struct jail version 2 expected");
    _Static_assert(JAIL_CREATE == 0x01 && JAIL_UPDATE == 0x02 && JAIL_ATTACH == 0x04
                   && JAIL_DYING == 0x08, "jail_set flag values");
    _Static_assert(JAIL_SYS_DISABLE == 0 && JAIL_SYS_NEW == 1 && JAIL_SYS_INHERIT == 2,
                   "jailsys values");

    /* the sysctl meta-node {0, 4, oid...} answers kind + format (FREEBSD_JAILS 2.7);
       named CTL_UNSPEC before 13.0, hence the fallbacks */
    #ifndef CTL_SYSCTL
    #define CTL_SYSCTL 0
    #endif
    #ifndef CTL_SYSCTL_OIDFMT
    #define CTL_SYSCTL_OIDFMT 4
    #endif

    /* struct jail is filled in C so its layout always comes from <sys/jail.h> (1.1). */
    static int js_fb_jail(const char *path, const char *hostname, const char *jailname,
                          const void *ip4, unsigned int ip4s,
                          const void *ip6, unsigned int ip6s)
    {
        struct jail j;
        memset(&j, 0, sizeof j);
        j.version = JAIL_API_VERSION;
        j.path = (char *)path;
        j.hostname = (char *)hostname;      /* never NULL: "" when none (1.2, 11.7) */
        j.jailname = (char *)jailname;      /* NULL: no name */
        j.ip4s = ip4s;                      /* both always passed; 0 = no IPv4 at all */
        j.ip6s = ip6s;
        j.ip4 = (struct in_addr *)ip4;
        j.ip6 = (struct in6_addr *)ip6;
        return jail(&j);
    }
    static int js_fb_jail_set(struct iovec *iov, unsigned int niov, int flags)
    { return jail_set(iov, niov, flags); }
    static int js_fb_jail_get(struct iovec *iov, unsigned int niov, int flags)
    { return jail_get(iov, niov, flags); }
    static int js_fb_jail_attach(int jid) { return jail_attach(jid); }
    static int js_fb_jail_remove(int jid) { return jail_remove(jid); }

    static int js_fb_oidfmt(const char *name, unsigned int *kind, char *fmt, size_t fmtlen)
    {
        int mib[CTL_MAXNAME + 2];
        size_t miblen = CTL_MAXNAME;
        unsigned char buf[sizeof(unsigned int) + 256];
        size_t len = sizeof buf;
        if (sysctlnametomib(name, mib + 2, &miblen) < 0)
            return -1;
        mib[0] = CTL_SYSCTL;
        mib[1] = CTL_SYSCTL_OIDFMT;
        if (sysctl(mib, (u_int)(miblen + 2), buf, &len, NULL, 0) < 0)
            return -1;
        if (len <= sizeof(unsigned int) || fmtlen == 0) {
            errno = EINVAL;
            return -1;
        }
        memcpy(kind, buf, sizeof(unsigned int));
        len -= sizeof(unsigned int);
        if (len >= fmtlen)
            len = fmtlen - 1;
        memcpy(fmt, buf + sizeof(unsigned int), len);
        fmt[len] = '\\0';
        return 0;
    }
    static int js_fb_sysctl_read(const char *name, void *buf, size_t *len)
    { return sysctlbyname(name, buf, len, NULL, 0); }

    #elif defined(__linux__)
    #include <errno.h>
    #include <stddef.h>
    #include <sys/uio.h>
    /* Present so the module links on Linux; the Python wrappers refuse before calling. */
    static int js_fb_enosys(void) { errno = ENOSYS; return -1; }
    static int js_fb_jail(const char *path, const char *hostname, const char *jailname,
                          const void *ip4, unsigned int ip4s,
                          const void *ip6, unsigned int ip6s)
    { (void)path; (void)hostname; (void)jailname; (void)ip4; (void)ip4s; (void)ip6; (void)ip6s;
      return js_fb_enosys(); }
    static int js_fb_jail_set(struct iovec *iov, unsigned int niov, int flags)
    { (void)iov; (void)niov; (void)flags; return js_fb_enosys(); }
    static int js_fb_jail_get(struct iovec *iov, unsigned int niov, int flags)
    { (void)iov; (void)niov; (void)flags; return js_fb_enosys(); }
    static int js_fb_jail_attach(int jid) { (void)jid; return js_fb_enosys(); }
    static int js_fb_jail_remove(int jid) { (void)jid; return js_fb_enosys(); }
    static int js_fb_oidfmt(const char *name, unsigned int *kind, char *fmt, size_t fmtlen)
    { (void)name; (void)kind; (void)fmt; (void)fmtlen; return js_fb_enosys(); }
    static int js_fb_sysctl_read(const char *name, void *buf, size_t *len)
    { (void)name; (void)buf; (void)len; return js_fb_enosys(); }
    #endif
    """
    cdef struct js_fb_iovec "iovec":
        void *iov_base
        size_t iov_len
    int js_fb_jail(const char *path, const char *hostname, const char *jailname,
                   const void *ip4, unsigned int ip4s, const void *ip6, unsigned int ip6s) nogil
    int js_fb_jail_set(js_fb_iovec *iov, unsigned int niov, int flags) nogil
    int js_fb_jail_get(js_fb_iovec *iov, unsigned int niov, int flags) nogil
    int js_fb_jail_attach(int jid) nogil
    int js_fb_jail_remove(int jid) nogil
    int js_fb_oidfmt(const char *name, unsigned int *kind, char *fmt, size_t fmtlen) nogil
    int js_fb_sysctl_read(const char *name, void *buf, size_t *len) nogil


cdef int _FB_JAIL_ATTACH = 0x04        # checked against <sys/jail.h> by the _Static_assert above
cdef bytes _FB_ERRMSG = b"errmsg\0"


cdef int _fb_only(str call) except -1:
    """Every FreeBSD call refuses on Linux before touching C (errno ENOSYS)."""
    if PLATFORM != "freebsd":
        import errno as _errno
        raise OSError(_errno.ENOSYS, f"{call}: FreeBSD only")
    return 0


cdef int _fb_raise(str call, int err, const char *errmsg) except -1:
    """OSError(errno, the kernel's errmsg, or strerror when it wrote none) (§2.2, §11.9)."""
    text = errmsg.decode("utf-8", "replace") if errmsg[0] else strerror(err).decode()
    raise OSError(err, f"{call}: {text}")


cdef int _fb_chdir_root(str after) except -1:
    # §4.1, §11.11: up to 12.x attaching leaves the cwd outside the jail
    cdef int err
    if _fb_chdir(b"/") < 0:
        err = errno
        _fb_raise(f"chdir('/') after {after}", err, b"")
    return 0


cdef bytes _fb_cstring(object value, str what):
    """A str or bytes as a C string; an embedded NUL would cut it silently, so refuse it."""
    cdef bytes data = value.encode() if isinstance(value, str) else bytes(value)
    if b"\0" in data:
        raise ValueError(f"{what} contains a NUL byte")
    return data


def jail(path, hostname, jailname, bytes ip4 not None, bytes ip6 not None) -> int:
    """jail(2), struct jail version 2, then chdir("/"); returns the new jid.

    path, hostname (str or bytes; hostname "" for none), jailname (None for none);
    ip4 / ip6: concatenated in_addr (4 bytes) / in6_addr (16 bytes) in network order, the
    first address primary.  Empty ip4 means the jail may use no IPv4 (FREEBSD_JAILS §1.2).
    """
    # arguments are checked first, on every OS, so that these checks are tested on Linux too
    if len(ip4) % 4 or len(ip6) % 16:
        raise ValueError("ip4 must be a multiple of 4 bytes and ip6 of 16 (in_addr / in6_addr)")
    cdef bytes c_path = _fb_cstring(path, "path")
    cdef bytes c_host = _fb_cstring(hostname, "hostname")
    cdef bytes c_name = None if jailname is None else _fb_cstring(jailname, "jailname")
    _fb_only("jail")
    cdef const char *name_p = NULL                     # NULL: no name (§1.2)
    cdef const char *ip4_p = NULL                      # NULL is allowed with a count of 0
    cdef const char *ip6_p = NULL
    if c_name is not None:
        name_p = c_name
    if ip4:
        ip4_p = ip4
    if ip6:
        ip6_p = ip6
    cdef int jid = js_fb_jail(c_path, c_host, name_p, ip4_p, len(ip4) // 4, ip6_p, len(ip6) // 16)
    cdef int err = errno                                # §11.10: before any Python runs
    if jid < 0:
        _fb_raise("jail", err, b"")
    _fb_chdir_root("jail")
    return jid


cdef list _fb_pairs(object pairs, bint sizes):
    """[(name bytes ending in NUL, value)], checked, as one list kept alive for the call.

    value: bytes or None; with sizes (jail_get) also an int, the size of an output buffer.
    """
    cdef list out = []
    for name, value in pairs:
        if not isinstance(name, bytes) or name.find(b"\0") != len(name) - 1:
            raise ValueError(f"jail parameter name {name!r}: bytes ending in one NUL (FREEBSD_JAILS §2.2)")
        if not (value is None or isinstance(value, bytes) or (sizes and isinstance(value, int))):
            raise TypeError(f"jail parameter {name!r}: value must be bytes{', an int size' if sizes else ''} or None")
        out.append((name, value))
    return out


cdef js_fb_iovec *_fb_iovec(Py_ssize_t npairs) except NULL:
    # §2.2: 2 elements per pair, plus the errmsg pair libjail also puts last
    cdef js_fb_iovec *iov = <js_fb_iovec *>PyMem_Malloc((2 * npairs + 2) * sizeof(js_fb_iovec))
    if iov == NULL:
        raise MemoryError()
    return iov


cdef void _fb_point(js_fb_iovec *slot, object buf):
    """One iovec element at a bytes/bytearray (None or empty = NULL, 0: "no value")."""
    cdef const char *p
    if buf is None or len(buf) == 0:
        slot.iov_base = NULL
        slot.iov_len = 0
        return
    if isinstance(buf, bytearray):
        p = <char *>(<bytearray>buf)
    else:
        p = <const char *>(<bytes>buf)
    slot.iov_base = <void *>p
    slot.iov_len = len(buf)


def jail_set(pairs, int flags) -> int:
    """jail_set(2) with [(name + NUL, value bytes or None)]; returns the jid.

    niov is 2 * (pairs + 1) with the errmsg pair (§11.1); the kernel's message goes into the
    OSError.  With JAIL_ATTACH the process is inside afterwards and the cwd is "/".
    """
    cdef list keep = _fb_pairs(pairs, False)
    _fb_only("jail_set")
    cdef Py_ssize_t n = len(keep), i
    cdef char errmsg[1024]
    cdef js_fb_iovec *iov = _fb_iovec(n)
    cdef int rc, err
    try:
        for i in range(n):
            _fb_point(&iov[2 * i], keep[i][0])
            _fb_point(&iov[2 * i + 1], keep[i][1])
        errmsg[0] = 0                                   # §2.2, §11.9: no stale message
        _fb_point(&iov[2 * n], _FB_ERRMSG)
        iov[2 * n + 1].iov_base = errmsg
        iov[2 * n + 1].iov_len = sizeof(errmsg)
        rc = js_fb_jail_set(iov, <unsigned int>(2 * n + 2), flags)
        err = errno                                     # §11.10: before any Python runs
    finally:
        PyMem_Free(iov)
    if rc < 0:
        _fb_raise("jail_set", err, errmsg)
    if flags & _FB_JAIL_ATTACH:
        _fb_chdir_root("jail_set(JAIL_ATTACH)")
    return rc


def jail_get(pairs, int flags=0):
    """jail_get(2): pairs of (name + NUL, bytes = a key's value, int = an output buffer size).

    Returns (jid, [bytes per pair]), each value cut to the length the kernel reported
    (§2.6).  Every buffer is a private bytearray because the kernel writes into them.
    """
    cdef list keep = _fb_pairs(pairs, True)
    _fb_only("jail_get")
    cdef list bufs = [bytearray() if v is None else bytearray(v) for _, v in keep]
    cdef Py_ssize_t n = len(keep), i
    cdef char errmsg[1024]
    cdef js_fb_iovec *iov = _fb_iovec(n)
    cdef int rc, err
    cdef list lens = []
    try:
        for i in range(n):
            _fb_point(&iov[2 * i], keep[i][0])
            _fb_point(&iov[2 * i + 1], bufs[i])
        errmsg[0] = 0
        _fb_point(&iov[2 * n], _FB_ERRMSG)
        iov[2 * n + 1].iov_base = errmsg
        iov[2 * n + 1].iov_len = sizeof(errmsg)
        rc = js_fb_jail_get(iov, <unsigned int>(2 * n + 2), flags)
        err = errno
        lens = [iov[2 * i + 1].iov_len for i in range(n)]
    finally:
        PyMem_Free(iov)
    if rc < 0:
        _fb_raise("jail_get", err, errmsg)
    return rc, [bytes(bufs[i][:lens[i]]) for i in range(n)]


def jail_getid(name) -> int:
    """A jail's jid from its name, as libjail's jail_getid (§4.3): all digits are a jid."""
    _fb_only("jail_getid")
    cdef bytes c_name = _fb_cstring(name, "jail name")
    if c_name.isdigit():
        return int(c_name)
    jid, _ = jail_get([(b"name\0", c_name + b"\0")], 0)
    return jid


def jail_attach(int jid) -> None:
    """jail_attach(2), then chdir("/") (§4.1).  A missing or dying jail is EINVAL (§11.15)."""
    _fb_only("jail_attach")
    cdef int err
    if js_fb_jail_attach(jid) < 0:
        err = errno
        _fb_raise(f"jail_attach({jid})", err, b"")
    _fb_chdir_root("jail_attach")


def jail_remove(int jid) -> None:
    """jail_remove(2): clear persist, SIGKILL every process, let the jail die (§4.2)."""
    _fb_only("jail_remove")
    cdef int err
    if js_fb_jail_remove(jid) < 0:
        err = errno
        _fb_raise(f"jail_remove({jid})", err, b"")


def sysctl_oidfmt(name):
    """(kind word, format) of a sysctl by name, or None when there is no such name (§2.7)."""
    _fb_only("sysctl_oidfmt")
    cdef bytes c_name = _fb_cstring(name, "sysctl name")
    cdef unsigned int kind = 0
    cdef char fmt[256]
    cdef int err
    if js_fb_oidfmt(c_name, &kind, fmt, sizeof(fmt)) < 0:
        err = errno
        if err == ENOENT:                               # no such name: an unknown parameter
            return None
        _fb_raise(f"sysctl oidfmt {name}", err, b"")
    return kind, fmt.decode("ascii", "replace")


def sysctl_read(name, size_t size):
    """The raw value of a sysctl (at most size bytes), or None when there is no such name."""
    _fb_only("sysctl_read")
    cdef bytes c_name = _fb_cstring(name, "sysctl name")
    cdef bytearray buf = bytearray(size)
    cdef size_t length = size
    cdef int err
    if js_fb_sysctl_read(c_name, <char *>buf, &length) < 0:
        err = errno
        if err == ENOENT:
            return None
        _fb_raise(f"sysctl {name}", err, b"")
    return bytes(buf[:length])

# (section 2 end)


# ---------------------------------------------------------------------------------------
# 3. Linux namespaces
#
# Thin wrappers: each raises OSError(errno) on failure.  Python 3.11 has no os.unshare /
# os.setns, and nothing at all for pivot_root, mount, prctl capabilities or mount_setattr.
# supervise() is the loop of the keeper and of the jail's init, in C so that those
# processes touch (and so un-share) almost none of the interpreter's pages after the fork.
# On FreeBSD every name exists and fails with ENOSYS (the FreeBSD backend never calls them).

from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #if defined(__linux__)
    #include <sched.h>
    #include <errno.h>
    #include <fcntl.h>
    #include <stdint.h>
    #include <string.h>
    #include <signal.h>
    #include <poll.h>
    #include <dirent.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <unistd.h>
    #include <sys/mount.h>
    #include <sys/prctl.h>
    #include <sys/signalfd.h>
    #include <sys/syscall.h>
    #include <sys/wait.h>
    #include <linux/capability.h>
    #include <linux/audit.h>
    #include <linux/filter.h>
    #include <linux/seccomp.h>
    #include <stddef.h>

    #define JS_HAVE_LINUX_NS 1
    #ifndef SYS_mount_setattr
    #define SYS_mount_setattr 442
    #endif
    #ifndef SYS_pidfd_open
    #define SYS_pidfd_open 434
    #endif
    #ifndef AT_RECURSIVE
    #define AT_RECURSIVE 0x8000
    #endif
    #ifndef PR_CAP_AMBIENT
    #define PR_CAP_AMBIENT 47
    #define PR_CAP_AMBIENT_CLEAR_ALL 4
    #endif

    struct js_ns_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };

    static int js_ns_unshare(int flags) { return unshare(flags); }
    static int js_ns_setns(int fd, int nstype) { return setns(fd, nstype); }
    static int js_ns_pivot_root(const char *n, const char *o) { return (int)syscall(SYS_pivot_root, n, o); }
    static int js_ns_mount(const char *src, const char *tgt, const char *fs, unsigned long fl, const char *data) {
        return mount(src, tgt, fs, fl, data);
    }
    static int js_ns_umount2(const char *tgt, int fl) { return umount2(tgt, fl); }
    static int js_ns_mount_setattr(const char *path, unsigned int flags, uint64_t set, uint64_t clr) {
        struct js_ns_mount_attr a = {set, clr, 0, 0};
        return (int)syscall(SYS_mount_setattr, AT_FDCWD, path, flags, &a, sizeof a);
    }
    static int js_ns_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }
    static int js_ns_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }
    static int js_ns_capbset_read(int cap) { return prctl(PR_CAPBSET_READ, cap, 0, 0, 0); }

    /* Keep only the capabilities in `keep` (bit n = capability n): the bounding set limits
       what any later execve can give back (a root exec gets the bounding set), capset takes
       them from this process now, and the ambient set is emptied.  All three are needed:
       dropping the bounding set alone leaves a running root with every capability. */
    static int js_ns_limit_caps(uint64_t keep) {
        int cap;
        for (cap = 0; cap < 64; cap++) {
            int r = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
            if (r < 0) break;               /* EINVAL: past the kernel's last capability */
            if (r == 1 && !(keep >> cap & 1) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) return -1;
        }
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0) return -1;
        struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[2];
        if (syscall(SYS_capget, &hdr, data) < 0) return -1;
        for (int i = 0; i < 2; i++) {
            uint32_t k = (uint32_t)(keep >> (32 * i));
            data[i].effective &= k; data[i].permitted &= k; data[i].inheritable &= k;
        }
        return (int)syscall(SYS_capset, &hdr, data);
    }

    /* children.max = 0: no namespace may be made inside the jail.  Without CAP_SYS_ADMIN the
       one way left is a user namespace (unprivileged, then every other kind inside it), so a
       seccomp filter refuses CLONE_NEWUSER in unshare(2) and clone(2), and clone3(2) as a
       whole with ENOSYS (its flags are in memory a filter cannot read; libc then falls back
       to clone).  Foreign syscall ABIs (i386, x32) are refused: they would bypass the check.
       Needs no_new_privs set first. */
    static int js_ns_forbid_user_namespaces(void) {
    #if defined(__x86_64__)
        const unsigned int arch = AUDIT_ARCH_X86_64;
    #elif defined(__aarch64__)
        const unsigned int arch = AUDIT_ARCH_AARCH64;
    #else
        errno = ENOSYS;
        return -1;
    #endif
    #ifndef __NR_clone3
    #define __NR_clone3 435
    #endif
        struct sock_filter code[] = {
            /* 0 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            /* 1 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
            /* 2 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
            /* 3 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            /* 4 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 7, 0),          /* x32 -> 12 */
            /* 5 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
            /* 6 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
            /* 7 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_unshare, 1, 0),
            /* 8 */ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 4),            /* -> 9 / 13 */
            /* 9 */ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
            /* 10 */ BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER, 1, 0),
            /* 11 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
            /* 12 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
            /* 13 */ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {(unsigned short)(sizeof code / sizeof code[0]), code};
        return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
    }

    static const int js_ns_relayed[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    #define JS_NS_NRELAYED (int)(sizeof js_ns_relayed / sizeof js_ns_relayed[0])
    static void js_ns_noop(int sig) { (void)sig; }

    static int js_ns_code(int st) {
        if (WIFEXITED(st)) return WEXITSTATUS(st);
        if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
        return 1;
    }

    /* An exited member stays in /proc until its parent (outside, for an attached one)
       reaps it; its pidfd is readable at once, so waiting on it would spin. */
    static int js_ns_is_zombie(const char *pid) {
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return 1;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) return 1;
        buf[n] = 0;
        char *p = strrchr(buf, ')');          /* the command name may hold spaces and ')' */
        return !p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X';
    }

    /* pidfds of the pid namespace's processes other than ourselves (an init with no child
       left still has members that jail-attach put there; it must wait for them too). */
    static int js_ns_members(int *fds, int max) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        int n = 0;
        if (!d) return 0;
        while (n < max && (e = readdir(d))) {
            char *end;
            long pid = strtol(e->d_name, &end, 10);
            if (*end || pid <= 1 || js_ns_is_zombie(e->d_name)) continue;
            int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
            if (fd >= 0) fds[n++] = fd;
        }
        closedir(d);
        return n;
    }

    /* mode 0: keeper (return the status of `child` once it is reaped);
       mode 1: init (reap everything; return when no process is left but us);
       mode 2: persistent init (reap everything; return only on TERM/INT/QUIT once the
       master is gone).  Relayed signals go to `child` while it lives; an init whose
       master is gone passes them to every member (kill(-1)).  A signal the kernel sent to a
       whole process group (si_code SI_KERNEL: the terminal's ^C) has reached the child
       already and is not sent twice. */
    static int js_ns_supervise(pid_t child, int mode) {
        sigset_t set;
        struct sigaction sa;
        int i, status = 0, alive = 1, fds[65], nfds = 0;
        sigemptyset(&set);
        sigaddset(&set, SIGCHLD);
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = js_ns_noop;      /* pid 1 drops signals left at SIG_DFL, even blocked ones */
        for (i = 0; i < JS_NS_NRELAYED; i++) { sigaddset(&set, js_ns_relayed[i]); sigaction(js_ns_relayed[i], &sa, NULL); }
        sigaction(SIGCHLD, &sa, NULL);
        if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) return -1;
        fds[0] = signalfd(-1, &set, SFD_CLOEXEC);
        if (fds[0] < 0) return -1;
        for (;;) {
            int st, left = 1;
            pid_t p;
            while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
                if (p == child) { status = js_ns_code(st); alive = 0; }
            }
            if (p < 0) left = 0;          /* ECHILD: no child at all, not even a zombie */
            if (mode == 0 && !alive) break;
            for (i = 1; i <= nfds; i++) close(fds[i]);
            nfds = 0;
            if (mode == 1 && !left) {
                nfds = js_ns_members(fds + 1, 64);
                if (nfds == 0) break;
            }
            struct pollfd pf[65];
            for (i = 0; i <= nfds; i++) { pf[i].fd = fds[i]; pf[i].events = POLLIN; pf[i].revents = 0; }
            if (poll(pf, nfds + 1, -1) < 0 && errno != EINTR) return -1;
            if (!(pf[0].revents & POLLIN)) continue;       /* a member exited: look again */
            struct signalfd_siginfo si;
            if (read(fds[0], &si, sizeof si) != sizeof si) continue;
            int sig = (int)si.ssi_signo;
            if (sig == SIGCHLD || si.ssi_code == SI_KERNEL) continue;
            if (alive) kill(child, sig);
            else if (mode == 2 && (sig == SIGTERM || sig == SIGINT || sig == SIGQUIT)) break;
            else if (mode != 0) kill(-1, sig);
        }
        for (i = 0; i <= nfds; i++) close(fds[i]);
        return status;
    }

    #ifndef SYS_close_range
    #define SYS_close_range 436
    #endif
    static void js_ns_close_from(int first) {
        if (syscall(SYS_close_range, first, ~0U, 0) == 0) return;
        long max = sysconf(_SC_OPEN_MAX);          /* kernels before 5.9 */
        for (long fd = first; fd < (max > 0 && max < 65536 ? max : 65536); fd++) close((int)fd);
    }

    static void js_ns_fail(int fd, const char *what) {
        char msg[320];
        int e = errno;
        int n = snprintf(msg, sizeof msg, "E%d jail init: %s: %s", e, what, strerror(e));
        if (n > 0 && write(fd, msg, (size_t)n) < 0) { /* the keeper is gone: nothing to tell */ }
        _exit(1);
    }

    /* The jail's PID 1, entirely in C (it never runs Python, so the pages it shares with the
       keeper stay shared): new namespaces, hostname, "u" to the keeper, wait for "g", then
       fork the master - which returns 0 into Python - and supervise it. */
    static void js_ns_init(int flags, const char *hostname, int mode, uint64_t init_caps,
                           int up_w, int down_r) {
        char c;
        if (mode != 2 && prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) js_ns_fail(up_w, "pdeathsig");
        if (unshare(flags) < 0) js_ns_fail(up_w, "unshare");
        if (sethostname(hostname, strlen(hostname)) < 0) js_ns_fail(up_w, "sethostname");
        /* pivot_root (made by the master) moves the root and cwd of every process whose root
           or cwd is the old root: without this, init's cwd would stay a way into the host's
           tree, open to the jail's root through /proc/1/cwd */
        if (chdir("/") < 0) js_ns_fail(up_w, "chdir /");
        if (write(up_w, "u", 1) != 1) _exit(1);
        if (read(down_r, &c, 1) != 1 || c != 'g') _exit(1);   /* EOF: the keeper died first */
        pid_t master = fork();
        if (master < 0) js_ns_fail(up_w, "fork");
        if (master == 0) return;
        js_ns_close_from(3);      /* the caller's descriptors: /proc/1/fd must lead nowhere */
        int st = 1;
        if (js_ns_limit_caps(init_caps) == 0 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0) {
            st = js_ns_supervise(master, mode);
            if (st < 0) st = 1;
        }
        _exit(st);
    }

    /* unshare(CLONE_NEWPID) and fork the jail's init.  Returns the init's pid in the caller
       (whose pid_for_children is set back to `host_pidns` at once: otherwise its every later
       fork would land in the jail), 0 in the master, -1 on error in the caller. */
    static int js_ns_spawn(int flags, const char *hostname, int mode, uint64_t init_caps,
                           int host_pidns, int up_w, int down_r, int up_r, int down_w) {
        if (unshare(CLONE_NEWPID) < 0) return -1;
        PyOS_BeforeFork();
        pid_t pid = fork();
        if (pid != 0) {
            int e = errno;
            if (setns(host_pidns, CLONE_NEWPID) < 0 && pid > 0) { e = errno; kill(pid, SIGKILL); pid = -1; }
            PyOS_AfterFork_Parent();
            errno = e;
            return pid < 0 ? -1 : (int)pid;
        }
        close(up_r);
        close(down_w);
        close(host_pidns);
        js_ns_init(flags, hostname, mode, init_caps, up_w, down_r);
        PyOS_AfterFork_Child();
        return 0;
    }
    #else
    #include <errno.h>
    #define JS_HAVE_LINUX_NS 0
    #define CLONE_NEWNS 0
    #define CLONE_NEWUTS 0
    #define CLONE_NEWIPC 0
    #define CLONE_NEWPID 0
    #define CLONE_NEWNET 0
    #define MS_RDONLY 0
    #define MS_NOSUID 0
    #define MS_NODEV 0
    #define MS_NOEXEC 0
    #define MS_REMOUNT 0
    #define MS_BIND 0
    #define MS_REC 0
    #define MS_PRIVATE 0
    #define MS_SHARED 0
    #define MS_SLAVE 0
    #define MS_NOATIME 0
    #define MS_MOVE 0
    #define MS_SYNCHRONOUS 0
    #define MS_DIRSYNC 0
    #define MS_MANDLOCK 0
    #define MNT_DETACH 0
    #define MNT_FORCE 0
    #define AT_RECURSIVE 0
    static int js_ns_enosys(void) { errno = ENOSYS; return -1; }
    static int js_ns_unshare(int f) { (void)f; return js_ns_enosys(); }
    static int js_ns_setns(int fd, int t) { (void)fd; (void)t; return js_ns_enosys(); }
    static int js_ns_pivot_root(const char *n, const char *o) { (void)n; (void)o; return js_ns_enosys(); }
    static int js_ns_mount(const char *s, const char *t, const char *f, unsigned long fl, const char *d) {
        (void)s; (void)t; (void)f; (void)fl; (void)d; return js_ns_enosys();
    }
    static int js_ns_umount2(const char *t, int f) { (void)t; (void)f; return js_ns_enosys(); }
    static int js_ns_mount_setattr(const char *p, unsigned int f, uint64_t s, uint64_t c) {
        (void)p; (void)f; (void)s; (void)c; return js_ns_enosys();
    }
    static int js_ns_set_pdeathsig(int s) { (void)s; return js_ns_enosys(); }
    static int js_ns_set_no_new_privs(void) { return js_ns_enosys(); }
    static int js_ns_capbset_read(int c) { (void)c; return js_ns_enosys(); }
    static int js_ns_limit_caps(uint64_t k) { (void)k; return js_ns_enosys(); }
    static int js_ns_forbid_user_namespaces(void) { return js_ns_enosys(); }
    static int js_ns_supervise(pid_t c, int m) { (void)c; (void)m; return js_ns_enosys(); }
    static int js_ns_spawn(int f, const char *h, int m, uint64_t k, int p, int a, int b, int c, int d) {
        (void)f; (void)h; (void)m; (void)k; (void)p; (void)a; (void)b; (void)c; (void)d; return js_ns_enosys();
    }
    #endif
    """
    int JS_HAVE_LINUX_NS
    int CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET
    unsigned long MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE
    unsigned long MS_SHARED, MS_SLAVE, MS_NOATIME, MS_MOVE, MS_SYNCHRONOUS, MS_DIRSYNC, MS_MANDLOCK
    int MNT_DETACH, MNT_FORCE
    unsigned int AT_RECURSIVE
    int js_ns_unshare(int flags)
    int js_ns_setns(int fd, int nstype)
    int js_ns_pivot_root(const char *new_root, const char *put_old)
    int js_ns_mount(const char *src, const char *tgt, const char *fstype, unsigned long flags, const char *data)
    int js_ns_umount2(const char *tgt, int flags)
    int js_ns_mount_setattr(const char *path, unsigned int flags, uint64_t attr_set, uint64_t attr_clr)
    int js_ns_set_pdeathsig(int sig)
    int js_ns_set_no_new_privs()
    int js_ns_capbset_read(int cap)
    int js_ns_limit_caps(uint64_t keep)
    int js_ns_forbid_user_namespaces()
    int js_ns_supervise(int child, int mode) nogil
    int js_ns_spawn(int flags, const char *hostname, int mode, uint64_t init_caps, int host_pidns,
                    int up_w, int down_r, int up_r, int down_w)


HAVE_LINUX_NS = bool(JS_HAVE_LINUX_NS)
NS_CONSTANTS = {"CLONE_NEWNS": CLONE_NEWNS, "CLONE_NEWUTS": CLONE_NEWUTS, "CLONE_NEWIPC": CLONE_NEWIPC,
                "CLONE_NEWPID": CLONE_NEWPID, "CLONE_NEWNET": CLONE_NEWNET}
MOUNT_FLAGS = {"MS_RDONLY": MS_RDONLY, "MS_NOSUID": MS_NOSUID, "MS_NODEV": MS_NODEV, "MS_NOEXEC": MS_NOEXEC,
               "MS_REMOUNT": MS_REMOUNT, "MS_BIND": MS_BIND, "MS_REC": MS_REC, "MS_PRIVATE": MS_PRIVATE,
               "MS_SHARED": MS_SHARED, "MS_SLAVE": MS_SLAVE, "MS_NOATIME": MS_NOATIME, "MS_MOVE": MS_MOVE,
               "MS_SYNCHRONOUS": MS_SYNCHRONOUS, "MS_DIRSYNC": MS_DIRSYNC, "MS_MANDLOCK": MS_MANDLOCK,
               "MNT_DETACH": MNT_DETACH, "MNT_FORCE": MNT_FORCE, "AT_RECURSIVE": AT_RECURSIVE}
# mount_setattr(2) attribute bits (linux/mount.h), the same on every architecture
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


cdef bytes _ns_path(object p):
    return None if p is None else (p.encode() if isinstance(p, str) else bytes(p))


def unshare(int flags):
    if js_ns_unshare(flags) < 0:
        raise_errno("unshare")


def setns(int fd, int nstype):
    if js_ns_setns(fd, nstype) < 0:
        raise_errno("setns")


def pivot_root(new_root, put_old):
    cdef bytes n = _ns_path(new_root), o = _ns_path(put_old)
    if js_ns_pivot_root(n, o) < 0:
        raise_errno(f"pivot_root {new_root}")


def mount(source, target, fstype, unsigned long flags, data=None):
    cdef bytes s = _ns_path(source), t = _ns_path(target), f = _ns_path(fstype), d = _ns_path(data)
    if js_ns_mount(<const char *>s if s is not None else NULL, t,
                <const char *>f if f is not None else NULL, flags,
                <const char *>d if d is not None else NULL) < 0:
        raise_errno(f"mount {fstype or ''} {source or ''} on {target}")


def umount2(target, int flags):
    cdef bytes t = _ns_path(target)
    if js_ns_umount2(t, flags) < 0:
        raise_errno(f"umount {target}")


def mount_setattr(path, unsigned int flags, uint64_t attr_set, uint64_t attr_clr=0):
    cdef bytes p = _ns_path(path)
    if js_ns_mount_setattr(p, flags, attr_set, attr_clr) < 0:
        raise_errno(f"mount_setattr {path}")


def set_pdeathsig(int sig):
    if js_ns_set_pdeathsig(sig) < 0:
        raise_errno("prctl(PR_SET_PDEATHSIG)")


def set_no_new_privs():
    if js_ns_set_no_new_privs() < 0:
        raise_errno("prctl(PR_SET_NO_NEW_PRIVS)")


def capbset_has(int cap):
    """Whether capability `cap` is in this process's bounding set."""
    cdef int r = js_ns_capbset_read(cap)
    if r < 0:
        raise_errno("prctl(PR_CAPBSET_READ)")
    return r == 1


def limit_caps(uint64_t keep):
    """Keep only the capabilities whose bits are set in `keep`: bounding, permitted,
    effective and inheritable sets; the ambient set is cleared."""
    if js_ns_limit_caps(keep) < 0:
        raise_errno("limit capabilities")


def forbid_user_namespaces():
    """children.max = 0: a seccomp filter refuses CLONE_NEWUSER (and clone3) to this process
    and everything it starts.  Set no_new_privs first."""
    if js_ns_forbid_user_namespaces() < 0:
        raise_errno("seccomp: forbid user namespaces")


def supervise(int child, int mode):
    """Relay signals and reap (see js_ns_supervise); returns an exit status.  mode 0 keeper,
    1 init, 2 persistent init.  Leaves the relayed signals blocked."""
    cdef int r
    with nogil:
        r = js_ns_supervise(child, mode)
    if r < 0:
        raise_errno("supervise")
    return r


def spawn_jail(int flags, hostname, int mode, uint64_t init_caps, int host_pidns,
               int up_w, int down_r, int up_r, int down_w):
    """unshare(CLONE_NEWPID) + fork the jail's init, which runs in C only (js_ns_init).
    Returns the init's host pid in the caller (the keeper), 0 in the master (pid 2 of the
    jail, in the namespaces of `flags`, hostname set).  Pipes: init writes "u" on up_w
    after unsharing, waits for "g" on down_r; on failure it writes "E<errno> message"."""
    cdef bytes h = _ns_path(hostname)
    cdef int r = js_ns_spawn(flags, h, mode, init_caps, host_pidns, up_w, down_r, up_r, down_w)
    if r < 0:
        raise_errno("unshare(CLONE_NEWPID) + fork")
    return r

# (section 3 end)


# ---------------------------------------------------------------------------------------
# 4. semaphores
#
# SysV sets (lock-engine = ipcsem) and POSIX semaphores (posixsem); FREEBSD_JAILS.md §5.
# What differs between the OSes comes from the system headers through the C compiler, never
# from numbers written here: the semctl commands (GETVAL is 12 on Linux, 5 on FreeBSD),
# key_t's width (int on Linux, long on FreeBSD LP64), MAP_ANON's spelling, union semun
# (declared by neither libc: the caller must).  Waits that can block release the GIL; on
# EINTR Python's signal handlers run (an exception they raise propagates), then the wait
# is retried.  Every wait first tries without blocking, so an uncontended lock costs one
# call and no GIL round trip.

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, ETIMEDOUT
from posix.time cimport timespec
from posix.types cimport pid_t
from cpython.mem cimport PyMem_Free, PyMem_Malloc

import os as _sem_os

cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <pthread.h>
    #include <semaphore.h>
    #include <string.h>
    #include <time.h>
    #include <unistd.h>
    #include <sys/types.h>
    #include <sys/ipc.h>
    #include <sys/mman.h>
    #include <sys/sem.h>
    #if defined(__FreeBSD__)
    #define JS_MAP_ANON MAP_ANON
    #define JS_IPC_PERM_KEY(perm) ((perm).key)
    #elif defined(__linux__)
    #define JS_MAP_ANON MAP_ANONYMOUS
    #define JS_IPC_PERM_KEY(perm) ((perm).__key)
    #else
    #error "jailserve._jail semaphores: FreeBSD and Linux only"
    #endif

    /* semctl(2)'s fourth argument, passed by value.  Neither glibc nor FreeBSD (without
       _WANT_SEMUN) declares it; ours has its own name so it never clashes with one that does. */
    union js_semun { int val; struct semid_ds *buf; unsigned short *array; };

    typedef struct {
        long uid, gid, cuid, cgid, mode, nsems;
        long long key, otime, ctime;
    } js_semstat;

    /* One operation on one semaphore: 0 or the errno. */
    static int js_semop1(int semid, int num, int op, int flags) {
        struct sembuf b;
        b.sem_num = (unsigned short)num;
        b.sem_op = (short)op;
        b.sem_flg = (short)flags;
        return semop(semid, &b, 1) < 0 ? errno : 0;
    }

    /* The semctl commands whose argument is an int (GETVAL, SETVAL, GETPID, GETNCNT,
       GETZCNT, IPC_RMID): the result, or -1 with errno. */
    static int js_semctl_int(int semid, int num, int cmd, int val) {
        union js_semun arg;
        arg.val = val;
        return semctl(semid, num, cmd, arg);
    }

    static int js_sem_stat(int semid, js_semstat *out) {
        struct semid_ds ds;
        union js_semun arg;
        memset(out, 0, sizeof *out);
        arg.buf = &ds;
        if (semctl(semid, 0, IPC_STAT, arg) < 0)
            return -1;
        out->uid = (long)ds.sem_perm.uid;
        out->gid = (long)ds.sem_perm.gid;
        out->cuid = (long)ds.sem_perm.cuid;
        out->cgid = (long)ds.sem_perm.cgid;
        out->mode = (long)(ds.sem_perm.mode & 0777);
        out->nsems = (long)ds.sem_nsems;
        out->key = (long long)JS_IPC_PERM_KEY(ds.sem_perm);
        out->otime = (long long)ds.sem_otime;
        out->ctime = (long long)ds.sem_ctime;
        return 0;
    }

    /* IPC_SET changes uid, gid and mode together: read the set first so the mode stays.
       uid or gid -1 keeps that one. */
    static int js_sem_set_owner(int semid, long uid, long gid) {
        struct semid_ds ds;
        union js_semun arg;
        arg.buf = &ds;
        if (semctl(semid, 0, IPC_STAT, arg) < 0)
            return -1;
        if (uid >= 0)
            ds.sem_perm.uid = (uid_t)uid;
        if (gid >= 0)
            ds.sem_perm.gid = (gid_t)gid;
        return semctl(semid, 0, IPC_SET, arg);
    }

    /* sem_open is variadic: give the optional arguments their declared types. */
    static sem_t *js_sem_open(const char *name, int oflag, unsigned int mode, unsigned int value) {
        sem_t *s = sem_open(name, oflag, (mode_t)mode, value);
        return s == SEM_FAILED ? NULL : s;
    }

    static int js_deadline(double seconds, struct timespec *out) {
        /* sem_timedwait takes an absolute CLOCK_REALTIME time on both systems. */
        long long ns;
        if (clock_gettime(CLOCK_REALTIME, out) < 0)
            return errno;
        ns = (long long)out->tv_nsec + (long long)((seconds - (double)(long long)seconds) * 1e9);
        out->tv_sec += (time_t)seconds + (time_t)(ns / 1000000000LL);
        out->tv_nsec = (long)(ns % 1000000000LL);
        return 0;
    }

    /* This process's pid, for the holder words.  getpid() is a system call (glibc stopped
       caching it) and costs more than an uncontended lock/unlock pair, so it is cached
       here and refreshed in every fork() child (pthread_atfork) and whenever shared
       semaphores are made (a raw clone() runs no atfork handler; the lock set is made
       after the jail's clones, in the master, and workers are fork()ed from it). */
    static pid_t js_self_pid = 0;
    static void js_self_pid_refresh(void) { js_self_pid = getpid(); }
    static int js_self_pid_init(void) {
        js_self_pid_refresh();
        return pthread_atfork(NULL, NULL, js_self_pid_refresh);
    }

    enum { JS_SEM_BLOCK = 0, JS_SEM_TRY = 1, JS_SEM_TIMED = 2 };

    /* Which SysV key space this process sees: on Linux the IPC namespace's inode (a jail
       has its own), so a record of sets made in another namespace is not mistaken for
       ours.  FreeBSD: 0; a jail with sysvsem=new has its own root, hence its own records. */
    #include <sys/stat.h>
    static long long js_ipc_space(void) {
    #if defined(__linux__)
        struct stat st;
        return stat("/proc/self/ns/ipc", &st) == 0 ? (long long)st.st_ino : 0;
    #else
        return 0;
    #endif
    }

    /* One attempt: 0 when taken, else the errno (EAGAIN busy, ETIMEDOUT, EINTR...).  When
       `holder` is given the caller's pid is stored there at once: a SIGKILL landing between
       the two statements leaves a held lock nobody owns (docs/locks.md). */
    static int js_sem_take(sem_t *s, pid_t *holder, int mode, const struct timespec *deadline) {
        int rc = mode == JS_SEM_TRY ? sem_trywait(s)
               : mode == JS_SEM_TIMED ? sem_timedwait(s, deadline) : sem_wait(s);
        if (rc < 0)
            return errno;
        if (holder != NULL)
            __atomic_store_n(holder, js_self_pid, __ATOMIC_RELEASE);
        return 0;
    }

    /* One lock of a shared array: the semaphore and the pid of the process holding it.
       POSIX semaphores have no SEM_UNDO, so this word is how the master finds, and
       releases, a lock whose holder died. */
    typedef struct { sem_t sem; pid_t holder; } js_semslot;

    static js_semslot *js_slots_map(size_t n) {
        void *p = mmap(NULL, n * sizeof(js_semslot), PROT_READ | PROT_WRITE,
                       MAP_SHARED | JS_MAP_ANON, -1, 0);
        return p == MAP_FAILED ? NULL : (js_semslot *)p;
    }

    static int js_slots_unmap(js_semslot *p, size_t n) {
        return munmap((void *)p, n * sizeof(js_semslot)) < 0 ? errno : 0;
    }

    static int js_slot_init(js_semslot *s, unsigned int value) {
        s->holder = 0;
        return sem_init(&s->sem, 1, value) < 0 ? errno : 0;
    }

    /* Post only if `pid` holds the slot.  The holder word is cleared by compare-and-swap
       before the post, so of two releasers (the holder itself and the master recovering it
       after the holder died) exactly one posts.  1 posted, 0 not held by pid, -errno. */
    static int js_slot_post(js_semslot *s, pid_t pid) {
        pid_t expected = pid;
        if (!__atomic_compare_exchange_n(&s->holder, &expected, 0, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 0;
        return sem_post(&s->sem) < 0 ? -errno : 1;
    }

    /* Holder words for SysV locks: pid_t[n] in an anonymous shared mapping (zeroed). */
    static pid_t *js_words_map(size_t n) {
        void *p = mmap(NULL, n * sizeof(pid_t), PROT_READ | PROT_WRITE,
                       MAP_SHARED | JS_MAP_ANON, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        memset(p, 0, n * sizeof(pid_t));
        return (pid_t *)p;
    }

    static int js_words_unmap(pid_t *p, size_t n) {
        return munmap((void *)p, n * sizeof(pid_t)) < 0 ? errno : 0;
    }

    static pid_t js_slot_holder(js_semslot *s) {
        return __atomic_load_n(&s->holder, __ATOMIC_ACQUIRE);
    }
    """
    ctypedef long key_t           # the real width is the header's (the C compiler's)
    ctypedef struct sem_t:
        pass
    ctypedef struct js_semslot:
        sem_t sem
        pid_t holder
    ctypedef struct js_semstat:
        long uid
        long gid
        long cuid
        long cgid
        long mode
        long nsems
        long long key
        long long otime
        long long ctime

    key_t c_IPC_PRIVATE "IPC_PRIVATE"
    int c_IPC_CREAT "IPC_CREAT"
    int c_IPC_EXCL "IPC_EXCL"
    int c_IPC_NOWAIT "IPC_NOWAIT"
    int c_IPC_RMID "IPC_RMID"
    int c_IPC_SET "IPC_SET"
    int c_IPC_STAT "IPC_STAT"
    int c_SEM_UNDO "SEM_UNDO"
    int c_GETVAL "GETVAL"
    int c_SETVAL "SETVAL"
    int c_GETPID "GETPID"
    int c_GETNCNT "GETNCNT"
    int c_GETZCNT "GETZCNT"
    int c_O_CREAT "O_CREAT"
    int c_O_EXCL "O_EXCL"
    int JS_SEM_BLOCK
    int JS_SEM_TRY
    int JS_SEM_TIMED

    key_t c_ftok "ftok"(const char *path, int proj_id)
    int c_semget "semget"(key_t key, int nsems, int flags)
    int js_semop1(int semid, int num, int op, int flags) nogil
    int js_semctl_int(int semid, int num, int cmd, int val)
    int js_sem_stat(int semid, js_semstat *out)
    int js_sem_set_owner(int semid, long uid, long gid)

    sem_t *js_sem_open(const char *name, int oflag, unsigned int mode, unsigned int value)
    int c_sem_close "sem_close"(sem_t *sem)
    int c_sem_unlink "sem_unlink"(const char *name)
    int c_sem_post "sem_post"(sem_t *sem)
    int c_sem_getvalue "sem_getvalue"(sem_t *sem, int *value)
    int c_sem_destroy "sem_destroy"(sem_t *sem)
    pid_t js_self_pid
    long long js_ipc_space()
    int js_self_pid_init()
    void js_self_pid_refresh()
    int js_deadline(double seconds, timespec *out)
    int js_sem_take(sem_t *s, pid_t *holder, int mode, const timespec *deadline) nogil

    js_semslot *js_slots_map(size_t n)
    int js_slots_unmap(js_semslot *p, size_t n)
    int js_slot_init(js_semslot *s, unsigned int value)
    int js_slot_post(js_semslot *s, pid_t pid)
    pid_t js_slot_holder(js_semslot *s)
    pid_t *js_words_map(size_t n)
    int js_words_unmap(pid_t *p, size_t n)


IPC_PRIVATE = c_IPC_PRIVATE
IPC_CREAT = c_IPC_CREAT
IPC_EXCL = c_IPC_EXCL
IPC_NOWAIT = c_IPC_NOWAIT
IPC_RMID = c_IPC_RMID
IPC_SET = c_IPC_SET
IPC_STAT = c_IPC_STAT
SEM_UNDO = c_SEM_UNDO
GETVAL = c_GETVAL
SETVAL = c_SETVAL
GETPID = c_GETPID
GETNCNT = c_GETNCNT
GETZCNT = c_GETZCNT
KEY_T_SIZE = sizeof(key_t)

# semctl commands whose argument (if any) is an int; the others take buffers and have their
# own functions (sem_stat, sem_set_owner) or are not needed.
_SEMCTL_INT_COMMANDS = frozenset({c_GETVAL, c_SETVAL, c_GETPID, c_GETNCNT, c_GETZCNT, c_IPC_RMID})


cdef int _raise_err(int err, str what) except -1:
    raise OSError(err, f"{what}: {strerror(err).decode()}")


# --- SysV ---------------------------------------------------------------------------

def ftok(path, int proj_id) -> int:
    """ftok(3): the SysV key for (path's inode and device, the low 8 bits of proj_id)."""
    cdef bytes raw = _sem_os.fsencode(path)
    cdef key_t key = c_ftok(raw, proj_id)
    if key == -1:
        raise_errno(f"ftok({path!r}, {proj_id})")
    return key


def ipc_space() -> int:
    """An id of the SysV key space this process sees (Linux: its IPC namespace; 0 elsewhere)."""
    return js_ipc_space()


def semget(key_t key, int nsems, int flags) -> int:
    """semget(2): the id of the set for `key` (IPC_PRIVATE: a new one); flags include the mode."""
    cdef int semid = c_semget(key, nsems, flags)
    if semid < 0:
        raise_errno(f"semget(key={key}, nsems={nsems})")
    return semid


cdef int _semop(int semid, int semnum, int op, int flags, bint restart) except -1:
    # Try without blocking first: an uncontended lock needs no GIL round trip.
    cdef int err = js_semop1(semid, semnum, op, flags | c_IPC_NOWAIT)
    while err != 0:
        if err == EAGAIN:
            if flags & c_IPC_NOWAIT:
                return 0
        elif err == EINTR:
            PyErr_CheckSignals()
            if not restart:
                return 0
        else:
            _raise_err(err, f"semop(semid={semid}, sem={semnum}, op={op})")
        with nogil:
            err = js_semop1(semid, semnum, op, flags)
    return 1


def semop(int semid, int semnum, int op, int flags=0, bint restart=True) -> bool:
    """semop(2) with one operation.  True when done; False when IPC_NOWAIT is in flags and
    it would block, or (restart=False) when a signal interrupted the wait, once its Python
    handler has run.  A blocking wait releases the GIL."""
    return _semop(semid, semnum, op, flags, restart) == 1


def semctl(int semid, int semnum, int cmd, int value=0) -> int:
    """semctl(2) for GETVAL, SETVAL, GETPID, GETNCNT, GETZCNT and IPC_RMID (int argument)."""
    if cmd not in _SEMCTL_INT_COMMANDS:
        raise ValueError(f"semctl command {cmd} takes a buffer; use sem_stat or sem_set_owner")
    cdef int rc = js_semctl_int(semid, semnum, cmd, value)
    if rc < 0:
        raise_errno(f"semctl(semid={semid}, sem={semnum}, cmd={cmd})")
    return rc


def sem_stat(int semid) -> dict:
    """IPC_STAT of a set: uid, gid, cuid, cgid, mode (permission bits), nsems, key, otime, ctime."""
    cdef js_semstat st
    if js_sem_stat(semid, &st) < 0:
        raise_errno(f"semctl(semid={semid}, IPC_STAT)")
    return {"uid": st.uid, "gid": st.gid, "cuid": st.cuid, "cgid": st.cgid, "mode": st.mode,
            "nsems": st.nsems, "key": st.key, "otime": st.otime, "ctime": st.ctime}


def sem_set_owner(int semid, long uid=-1, long gid=-1) -> None:
    """IPC_SET the owner of a set (-1 keeps one), keeping its mode: uWSGI gives its sets to
    uid/gid this way before dropping root."""
    if js_sem_set_owner(semid, uid, gid) < 0:
        raise_errno(f"semctl(semid={semid}, IPC_SET uid={uid} gid={gid})")


# --- POSIX --------------------------------------------------------------------------

if js_self_pid_init() != 0:
    raise OSError("pthread_atfork failed")


def self_pid() -> int:
    """getpid() without the system call (cached; refreshed after fork)."""
    return js_self_pid


cdef int _sem_acquire(sem_t *sem, pid_t *holder, object timeout, bint restart=True) except -1:
    """1 when taken; 0 when not (timeout 0: busy; timeout > 0: timed out; restart=False: a
    signal's handler ran and did not raise); None waits."""
    cdef timespec deadline
    cdef int mode = JS_SEM_BLOCK
    cdef int err
    if timeout is not None:
        mode = JS_SEM_TRY if timeout <= 0 else JS_SEM_TIMED
        if mode == JS_SEM_TIMED:
            err = js_deadline(<double>timeout, &deadline)
            if err:
                _raise_err(err, "clock_gettime")
    err = js_sem_take(sem, holder, JS_SEM_TRY, NULL)
    while err != 0:
        if err == ETIMEDOUT or (err == EAGAIN and mode == JS_SEM_TRY):
            return 0
        if err == EINTR:
            PyErr_CheckSignals()
            if not restart:
                return 0
        elif err != EAGAIN:
            _raise_err(err, "sem_wait")
        with nogil:
            err = js_sem_take(sem, holder, mode, &deadline)
    return 1


cdef class NamedSemaphore:
    """sem_open(3).  The name starts with '/'.  Linux keeps it as /dev/shm/sem.NAME, FreeBSD 9+
    as a file /tmp/SEMD<NAME> (so a jail needs a writable /tmp); sem_unlink() removes it."""

    cdef sem_t *sem
    cdef readonly str name

    def __cinit__(self, str name, int oflag=c_O_CREAT, unsigned int mode=0o600, unsigned int value=1):
        cdef bytes raw = _sem_os.fsencode(name)
        self.name = name
        self.sem = js_sem_open(raw, oflag, mode, value)
        if self.sem == NULL:
            raise_errno(f"sem_open({name!r})")

    cdef sem_t *_open(self) except NULL:
        if self.sem == NULL:
            raise ValueError(f"semaphore {self.name!r} is closed")
        return self.sem

    def wait(self, timeout=None) -> bool:
        """sem_wait (None), sem_trywait (0) or sem_timedwait (seconds): True when taken."""
        return _sem_acquire(self._open(), NULL, timeout) == 1

    def trywait(self) -> bool:
        return _sem_acquire(self._open(), NULL, 0) == 1

    def post(self) -> None:
        if c_sem_post(self._open()) < 0:
            raise_errno(f"sem_post({self.name!r})")

    def value(self) -> int:
        cdef int v
        if c_sem_getvalue(self._open(), &v) < 0:
            raise_errno(f"sem_getvalue({self.name!r})")
        return v

    def close(self) -> None:
        """sem_close: this process's handle only; the name stays until sem_unlink."""
        if self.sem != NULL:
            c_sem_close(self.sem)
            self.sem = NULL

    def __dealloc__(self):
        if self.sem != NULL:
            c_sem_close(self.sem)


def sem_unlink(str name) -> None:
    if c_sem_unlink(_sem_os.fsencode(name)) < 0:
        raise_errno(f"sem_unlink({name!r})")


class SemaphoreIndexError(IndexError, ValueError):
    """A semaphore number out of range.  Also a ValueError: uwsgi.lock(n) raises that for
    a lock that does not exist, and jailserve.locks hands SharedSemaphores methods to the
    app directly."""


cdef class SharedSemaphores:
    """`count` unnamed process-shared POSIX semaphores (sem_init, pshared=1), each beside the
    pid of its holder, in one anonymous MAP_SHARED mapping.  Make it before fork(): every
    child shares it, and the kernel frees it with the last process that maps it, so it
    cannot outlive the instance (no name, nothing in /dev/shm or /tmp).

    wait() stores the caller's pid (self_pid()) as holder; post(i, pid) posts only if `pid` holds slot i
    and clears the holder atomically first, so the holder and a master releasing the lock of
    a dead holder can never both post."""

    cdef js_semslot *slots
    cdef readonly Py_ssize_t count
    cdef readonly pid_t creator

    def __cinit__(self, Py_ssize_t count, unsigned int value=1):
        cdef Py_ssize_t i
        cdef int err
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        self.slots = js_slots_map(<size_t>count)
        if self.slots == NULL:
            raise_errno(f"mmap(MAP_SHARED|MAP_ANON, {count} semaphores)")
        self.count = count
        js_self_pid_refresh()
        self.creator = js_self_pid
        for i in range(count):
            err = js_slot_init(&self.slots[i], value)
            if err:
                js_slots_unmap(self.slots, <size_t>count)
                self.slots = NULL
                _raise_err(err, "sem_init(pshared=1)")

    cdef js_semslot *_slot(self, Py_ssize_t i) except NULL:
        if self.slots == NULL:
            raise ValueError("the semaphores are closed")
        if not 0 <= i < self.count:
            raise SemaphoreIndexError(f"lock {i} does not exist (0..{self.count - 1})")
        return &self.slots[i]

    def wait(self, Py_ssize_t i=0, timeout=None, bint restart=True) -> bool:
        """sem_wait (None), sem_trywait (0) or sem_timedwait (seconds): True when taken.
        restart=False: False when a signal interrupted the wait (its handler has run)."""
        cdef js_semslot *s = self._slot(i)
        return _sem_acquire(&s.sem, &s.holder, timeout, restart) == 1

    def trywait(self, Py_ssize_t i) -> bool:
        cdef js_semslot *s = self._slot(i)
        return _sem_acquire(&s.sem, &s.holder, 0) == 1

    def post(self, Py_ssize_t i=0, pid=None) -> bool:
        """sem_post slot i if `pid` (default: this process) holds it; False, and nothing
        posted, if it does not."""
        cdef js_semslot *s = self._slot(i)
        cdef pid_t who = js_self_pid if pid is None else pid
        if who <= 0:
            raise ValueError(f"not a holder pid: {who}")
        cdef int rc = js_slot_post(s, who)
        if rc < 0:
            _raise_err(-rc, f"sem_post({i})")
        return rc == 1

    def holder(self, Py_ssize_t i) -> int:
        """The pid that took slot i, 0 when free (or in the instant after it was taken)."""
        return js_slot_holder(self._slot(i))

    def value(self, Py_ssize_t i) -> int:
        cdef int v
        if c_sem_getvalue(&self._slot(i).sem, &v) < 0:
            raise_errno(f"sem_getvalue({i})")
        return v

    def close(self) -> None:
        """Unmap.  In the process that made them, sem_destroy them first (call it only once
        no other process can be waiting: after the workers are gone)."""
        cdef Py_ssize_t i
        if self.slots == NULL:
            return
        if js_self_pid == self.creator:
            for i in range(self.count):
                c_sem_destroy(&self.slots[i].sem)
        js_slots_unmap(self.slots, <size_t>self.count)
        self.slots = NULL

    def __dealloc__(self):
        if self.slots != NULL:
            js_slots_unmap(self.slots, <size_t>self.count)


cdef class SysVLocks:
    """Binary locks over SysV sets of one semaphore each (made by the caller, value 1),
    taken and released with SEM_UNDO so the kernel releases a dying holder's lock.  Each
    lock has a holder word in an anonymous MAP_SHARED mapping (make this before fork()),
    written only while holding the lock.  unlock clears it, so a word found set when the
    lock is taken names a holder that died: wait() then calls on_dead_holder(i, pid).  The
    master's release_dead(i, pid) takes the lock without waiting to clear such a word, so
    a death is reported once, by whoever takes the lock first after it."""

    cdef int *semids
    cdef pid_t *holders
    cdef readonly Py_ssize_t count
    cdef public object on_dead_holder

    def __cinit__(self, semids, on_dead_holder=None):
        cdef Py_ssize_t i, n = len(semids)
        if n < 1:
            raise ValueError("at least one set is needed")
        self.semids = <int *>PyMem_Malloc(n * sizeof(int))
        if self.semids == NULL:
            raise MemoryError()
        for i in range(n):
            self.semids[i] = semids[i]
        self.holders = js_words_map(<size_t>n)
        if self.holders == NULL:
            PyMem_Free(self.semids)
            self.semids = NULL
            raise_errno(f"mmap(MAP_SHARED|MAP_ANON, {n} holder words)")
        self.count = n
        self.on_dead_holder = on_dead_holder
        js_self_pid_refresh()

    cdef Py_ssize_t _index(self, Py_ssize_t i) except -1:
        if self.holders == NULL:
            raise ValueError("the locks are closed")
        if not 0 <= i < self.count:
            raise SemaphoreIndexError(f"lock {i} does not exist (0..{self.count - 1})")
        return i

    def wait(self, Py_ssize_t i=0, bint restart=True) -> bool:
        """Take lock i (semop -1, SEM_UNDO).  restart=False: False when a signal interrupted
        the wait and its handler ran."""
        cdef pid_t previous
        self._index(i)
        if not _semop(self.semids[i], 0, -1, c_SEM_UNDO, restart):
            return False
        previous = self.holders[i]
        self.holders[i] = js_self_pid
        if previous != 0 and self.on_dead_holder is not None:
            self.on_dead_holder(i, previous)
        return True

    def post(self, Py_ssize_t i=0) -> bool:
        """Release lock i if this process holds it; False, and nothing done, if not (an
        extra +1 would let two holders in)."""
        self._index(i)
        if self.holders[i] != js_self_pid:
            return False
        self.holders[i] = 0
        _semop(self.semids[i], 0, 1, c_SEM_UNDO, True)
        return True

    def release_dead(self, Py_ssize_t i, pid_t pid) -> bool:
        """The master, after `pid` died: True if it held lock i (the kernel has already
        released it) and nobody reported that yet.  Clears its word under the lock."""
        self._index(i)
        if self.holders[i] != pid or not _semop(self.semids[i], 0, -1, c_SEM_UNDO | c_IPC_NOWAIT, True):
            return False
        found = self.holders[i] == pid
        if found:
            self.holders[i] = 0
        _semop(self.semids[i], 0, 1, c_SEM_UNDO, True)
        return found

    def value(self, Py_ssize_t i) -> int:
        self._index(i)
        return semctl(self.semids[i], 0, c_GETVAL)

    def semid(self, Py_ssize_t i) -> int:
        self._index(i)
        return self.semids[i]

    def close(self) -> None:
        """Unmap the holder words (the sets themselves are the caller's to remove)."""
        if self.holders != NULL:
            js_words_unmap(self.holders, <size_t>self.count)
            self.holders = NULL
        PyMem_Free(self.semids)
        self.semids = NULL

    def __dealloc__(self):
        if self.holders != NULL:
            js_words_unmap(self.holders, <size_t>self.count)
        PyMem_Free(self.semids)


# (section 4 end)
