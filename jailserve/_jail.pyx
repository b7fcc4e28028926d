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


# ---------------------------------------------------------------------------------------
# 2. FreeBSD jails
# (section 2 end)


# ---------------------------------------------------------------------------------------
# 3. Linux namespaces
# (section 3 end)


# ---------------------------------------------------------------------------------------
# 4. semaphores
# (section 4 end)
