# cython: language_level=3
"""The hot path: sans-I/O HTTP/1.1 and uwsgi parsers, WSGI environ, response writer, serve loop.

Ordered as a request flows (STYLE.md §3): C helpers and tables -> errors -> RequestParser
(HTTP head, uwsgi packet, body framing) -> environ builder -> wsgi.input / file_wrapper ->
Response (start_response, writer) -> Connection (one socket's requests) -> Server (accept
loop) -> serve().  The contract for the rest of jailserve is docs/internals.md, `_core.pyx`.
"""
cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytes cimport PyBytes_Check
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.dict cimport PyDict_Copy
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeLatin1, PyUnicode_Check
from libc.stdlib cimport malloc, free, realloc
from libc.string cimport memcpy, memmove, memchr, memcmp, strlen
from libc.stdint cimport uint64_t
from libc.errno cimport errno, EINTR, EAGAIN
from posix.uio cimport iovec
from posix.unistd cimport alarm, close, lseek
from posix.stat cimport struct_stat, fstat, S_ISREG

import os
import sys
import socket as _socket
import traceback as _traceback

cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1
    PyObject *PyDict_SetDefault(object d, object key, object dflt) except NULL
    int PyUnicode_KIND(object u)
    void *PyUnicode_DATA(object u)
    Py_ssize_t PyUnicode_GET_LENGTH(object u)
    int PyUnicode_1BYTE_KIND
    object PyUnicode_InternFromString(const char *s)
    object PyUnicode_FromStringAndSize(const char *s, Py_ssize_t n)

# ---------------------------------------------------------------------------------------------
# 1. C helpers: the only OS-specific code.  POSIX calls; sendfile differs per OS (Linux
#    sendfile(out, in, &off, count), FreeBSD sendfile(fd, s, off, nbytes, hdtr, &sbytes, flags))
#    and accept4 (Linux, FreeBSD >= 10) gives a blocking, close-on-exec socket in one call.
# ---------------------------------------------------------------------------------------------
cdef extern from *:
    """
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <sys/stat.h>
    #include <sys/un.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #include <arpa/inet.h>
    #include <poll.h>
    #include <unistd.h>
    #include <fcntl.h>
    #include <time.h>
    #include <errno.h>
    #include <string.h>
    #include <stdio.h>
    #if defined(__linux__)
    #include <sys/sendfile.h>
    #endif
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif

    /* Accept one connection; write the peer's address as text into addr and its port.
       nonblock: the accepted socket is O_NONBLOCK (the greenlet hub), else blocking. */
    static int js_accept(int lfd, char *addr, size_t addrlen, int *port, int nonblock) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd;
    #if defined(__linux__) || defined(__FreeBSD__)
        fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0));
    #else
        fd = accept(lfd, (struct sockaddr *)&ss, &sl);
        if (fd >= 0) {
            fcntl(fd, F_SETFD, FD_CLOEXEC);
            if (nonblock) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            else fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        }
    #endif
        addr[0] = 0;
        *port = 0;
        if (fd < 0) return fd;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, addr, addrlen);
            *port = ntohs(a->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, addr, addrlen);
            *port = ntohs(a->sin6_port);
        }
        return fd;
    }

    /* writev that never raises SIGPIPE (a client gone is EPIPE, not a signal). */
    static ssize_t js_sendv(int fd, struct iovec *iov, int n) {
        struct msghdr m;
        memset(&m, 0, sizeof(m));
        m.msg_iov = iov;
        m.msg_iovlen = n;
        return sendmsg(fd, &m, MSG_NOSIGNAL);
    }

    /* Unlike sendmsg there is no MSG_NOSIGNAL here: a peer gone is EPIPE only because
       CPython starts with SIGPIPE ignored (do not reset it to SIG_DFL in a worker). */
    static ssize_t js_sendfile(int out_fd, int in_fd, off_t offset, size_t count) {
    #if defined(__linux__)
        off_t off = offset;
        return sendfile(out_fd, in_fd, &off, count);
    #elif defined(__FreeBSD__)
        off_t sbytes = 0;
        int r = sendfile(in_fd, out_fd, offset, count, NULL, &sbytes, 0);
        if (r == 0 || sbytes > 0) return (ssize_t)sbytes;
        return -1;
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }

    /* Receive and send timeouts: the slice after which a blocked call returns EAGAIN, so the
       loop can count idle time and look at the stop flag. */
    static int js_set_timeouts(int fd, double slice) {
        struct timeval tv;
        tv.tv_sec = (time_t)slice;
        tv.tv_usec = (suseconds_t)((slice - (double)tv.tv_sec) * 1e6);
        if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) return -1;
        return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }

    static int js_has_timeouts(int fd) {
        struct timeval tv;
        socklen_t l = sizeof(tv);
        if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &l) < 0) return 0;
        return tv.tv_sec != 0 || tv.tv_usec != 0;
    }

    static void js_nodelay(int fd) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  /* fails on unix: fine */
    }

    /* Deferred accept (uWSGI core/socket.c bind_to_tcp): Linux TCP_DEFER_ACCEPT, FreeBSD's
       "dataready" accept filter (accf_data(9); ENOENT while the module is not loaded);
       ENOTSUP where neither exists.  0 or an errno. */
    static int js_defer_accept(int fd, int seconds) {
    #if defined(TCP_DEFER_ACCEPT)
        return setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &seconds, sizeof(seconds)) ? errno : 0;
    #elif defined(SO_ACCEPTFILTER)
        struct accept_filter_arg afa;
        (void)seconds;
        memset(&afa, 0, sizeof(afa));
        strcpy(afa.af_name, "dataready");
        return setsockopt(fd, SOL_SOCKET, SO_ACCEPTFILTER, &afa, sizeof(afa)) ? errno : 0;
    #else
        (void)fd; (void)seconds;
        return ENOTSUP;
    #endif
    }

    static int js_set_nonblock(int fd) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0) return -1;
        if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
        return fl;
    }

    static void js_restore_flags(int fd, int fl) { if (fl >= 0) fcntl(fd, F_SETFL, fl); }

    static int js_poll_in(int *fds, int n, int timeout_ms) {
        struct pollfd p[64];
        int i;
        if (n > 64) n = 64;
        for (i = 0; i < n; i++) { p[i].fd = fds[i]; p[i].events = POLLIN; p[i].revents = 0; }
        return poll(p, (nfds_t)n, timeout_ms);
    }

    /* One socket, readable (write = 0) or writable (write = 1): the sync hub's wait inside
       a request.  > 0 ready (or an error / hang-up the next call will report), 0 timeout. */
    static int js_poll_one(int fd, int write, int timeout_ms) {
        struct pollfd p;
        p.fd = fd; p.events = write ? POLLOUT : POLLIN; p.revents = 0;
        return poll(&p, 1, timeout_ms);
    }

    /* Discard what the peer already sent, so close() does not turn into an RST that destroys
       the response we just wrote (RFC 9112 §9.6, "tear-down": close in stages). */
    static void js_linger(int fd) {
        shutdown(fd, SHUT_WR);
    #ifdef MSG_DONTWAIT   /* Linux, FreeBSD; elsewhere the shutdown alone */
        {
            char junk[4096];
            int i;
            for (i = 0; i < 16; i++)
                if (recv(fd, junk, sizeof(junk), MSG_DONTWAIT) <= 0) break;
        }
    #endif
    }

    #ifndef JS_DEBUG
    #define JS_DEBUG 0   /* setup.py defines it; 1 under JAILSERVE_DEBUG=1 */
    #endif

    static uint64_t js_monotonic_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    }

    static double js_wallclock(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    }

    /* IMF-fixdate (RFC 9110 §5.6.7) without strftime: locale-independent. */
    static time_t js_date_sec = 0;
    static char js_date_line[64];
    static int js_date_len = 0;
    static const char *js_date(int *len) {
        static const char days[7][4] = {"Sun","Mon","Tue","Wed","Thu","Fri","Sat"};
        static const char mons[12][4] = {"Jan","Feb","Mar","Apr","May","Jun","Jul","Aug",
                                         "Sep","Oct","Nov","Dec"};
        time_t now = time(NULL);
        if (now != js_date_sec) {
            struct tm tm;
            gmtime_r(&now, &tm);
            js_date_len = snprintf(js_date_line, sizeof(js_date_line),
                "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\\r\\n", days[tm.tm_wday % 7],
                tm.tm_mday, mons[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                tm.tm_sec);
            js_date_sec = now;
        }
        *len = js_date_len;
        return js_date_line;
    }
    """
    int js_accept(int lfd, char *addr, size_t addrlen, int *port, int nonblock) nogil
    Py_ssize_t js_sendv(int fd, iovec *iov, int n) nogil
    Py_ssize_t js_sendfile(int out_fd, int in_fd, long long offset, size_t count) nogil
    int js_set_timeouts(int fd, double slice) nogil
    int js_has_timeouts(int fd) nogil
    void js_nodelay(int fd) nogil
    int js_defer_accept(int fd, int seconds) nogil
    int js_set_nonblock(int fd) nogil
    void js_restore_flags(int fd, int fl) nogil
    int js_poll_in(int *fds, int n, int timeout_ms) nogil
    int js_poll_one(int fd, int write, int timeout_ms) nogil
    void js_linger(int fd) nogil
    uint64_t js_monotonic_ns() nogil
    double js_wallclock() nogil
    const char *js_date(int *length) nogil
    Py_ssize_t recv(int fd, void *buf, size_t n, int flags) nogil
    int ECONNABORTED, EPROTO, EMFILE, ENFILE, ENOBUFS, ENOMEM, ETIMEDOUT, ECONNRESET, EWOULDBLOCK
    int JS_DEBUG

DEF MAX_LISTENERS = 64
DEF IOV_INLINE = 32

# ---------------------------------------------------------------------------------------------
# 2. Character tables (RFC 9110 §5.6.2 tchar, §5.5 field-vchar / obs-text, RFC 3986 host).
# ---------------------------------------------------------------------------------------------
cdef unsigned char TCHAR[256]
cdef unsigned char VALUE_OK[256]    # field-vchar / obs-text / SP / HTAB
cdef unsigned char TARGET_OK[256]   # visible ASCII except '#' (RFC 9112 §3.2: no fragment)
cdef unsigned char HEXVAL[256]      # hex digit value + 1, 0 when not a hex digit
cdef unsigned char REGNAME[256]     # RFC 3986 reg-name: unreserved / pct-encoded / sub-delims


cdef void init_tables():
    cdef int c
    cdef bytes extra = b"!#$%&'*+-.^_`|~"
    cdef bytes sub = b"-._~!$&'()*+,;=%"
    for c in range(256):
        TCHAR[c] = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or (c in extra)
        VALUE_OK[c] = c == 9 or (32 <= c <= 126) or c >= 128
        TARGET_OK[c] = 33 <= c <= 126 and c != 35
        HEXVAL[c] = 0
        REGNAME[c] = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or (c in sub)
    for c in range(10):
        HEXVAL[48 + c] = c + 1
    for c in range(6):
        HEXVAL[65 + c] = c + 11
        HEXVAL[97 + c] = c + 11


init_tables()

# ---------------------------------------------------------------------------------------------
# 3. Errors: C codes, one Python exception carrying the status.
# ---------------------------------------------------------------------------------------------
cdef enum:
    E_NONE = 0
    E_REQUEST_LINE      # 400 RFC 9112 §3
    E_METHOD            # 400 RFC 9112 §3.1 method = token
    E_TARGET            # 400 RFC 9112 §3.2
    E_VERSION           # 400 RFC 9112 §2.3
    E_VERSION_MAJOR     # 505 RFC 9110 §15.6.6
    E_BARE_CR           # 400 RFC 9112 §2.2
    E_BARE_LF           # 400 RFC 9112 §2.2 (we do not take the MAY of bare LF)
    E_CTL               # 400 RFC 9110 §5.5 NUL / CTL in a field value
    E_OBS_FOLD          # 400 RFC 9112 §5.2
    E_FIELD_NAME        # 400 RFC 9112 §5.1 token, nothing before the colon
    E_WS_BEFORE_COLON   # 400 RFC 9112 §5.1
    E_NO_COLON          # 400 RFC 9112 §5.1
    E_HOST_MISSING      # 400 RFC 9112 §3.2
    E_HOST_REPEATED     # 400 RFC 9112 §3.2
    E_HOST_INVALID      # 400 RFC 9112 §3.2, RFC 3986 §3.2.2
    E_CL_INVALID        # 400 RFC 9112 §6.3 (5), RFC 9110 §8.6
    E_CL_REPEATED       # 400 RFC 9110 §8.6
    E_CL_TE             # 400 RFC 9112 §6.1, §11.2
    E_TE_NOT_CHUNKED    # 400 RFC 9112 §6.3 (4)
    E_TE_CHUNKED_TWICE  # 400 RFC 9112 §7.1
    E_TE_HTTP10         # 400 RFC 9112 §6.1
    E_TE_INVALID        # 400 RFC 9112 §6.1 transfer-coding syntax
    E_TE_UNKNOWN        # 501 RFC 9112 §6.1
    E_CHUNK_SIZE        # 400 RFC 9112 §7.1
    E_CHUNK_EXT         # 400 RFC 9112 §7.1.1
    E_CHUNK_DATA        # 400 RFC 9112 §7.1 (CRLF after chunk-data)
    E_TRAILER           # 400 RFC 9112 §7.1.2
    E_HEAD_TOO_LARGE    # 431 RFC 6585 §5
    E_TOO_MANY_HEADERS  # 431 RFC 6585 §5
    E_TARGET_TOO_LONG   # 414 RFC 9110 §15.5.15
    E_EXPECT            # 417 RFC 9110 §10.1.1
    E_CONNECT           # 501 RFC 9110 §9.3.6 (a WSGI origin server does not tunnel)
    E_UWSGI_SIZE        # 431 uwsgi pktsize > buffer-size (UWSGI_SEMANTICS §9)
    E_UWSGI_VARS        # 400 uwsgi var sizes past the packet, empty key, too many vars
    E_UWSGI_MODIFIER    # 400 modifier1 is not 0 (WSGI)
    E_UWSGI_CL          # 400 CONTENT_LENGTH var not a number
    E_COUNT

cdef list ERR_INFO = [None] * E_COUNT
ERR_INFO[E_REQUEST_LINE] = (400, "bad_request_line", "malformed request-line")
ERR_INFO[E_METHOD] = (400, "bad_method", "method is not a token")
ERR_INFO[E_TARGET] = (400, "bad_target", "invalid request-target")
ERR_INFO[E_VERSION] = (400, "bad_version", "malformed HTTP-version")
ERR_INFO[E_VERSION_MAJOR] = (505, "version_not_supported", "HTTP major version not 1")
ERR_INFO[E_BARE_CR] = (400, "bare_cr", "CR not followed by LF")
ERR_INFO[E_BARE_LF] = (400, "bare_lf", "LF not preceded by CR")
ERR_INFO[E_CTL] = (400, "ctl", "control character in a field value")
ERR_INFO[E_OBS_FOLD] = (400, "obs_fold", "obsolete line folding")
ERR_INFO[E_FIELD_NAME] = (400, "bad_field_name", "field-name is not a token")
ERR_INFO[E_WS_BEFORE_COLON] = (400, "ws_before_colon", "whitespace before the colon")
ERR_INFO[E_NO_COLON] = (400, "no_colon", "header line without a colon")
ERR_INFO[E_HOST_MISSING] = (400, "host_missing", "HTTP/1.1 request without Host")
ERR_INFO[E_HOST_REPEATED] = (400, "host_repeated", "more than one Host")
ERR_INFO[E_HOST_INVALID] = (400, "host_invalid", "invalid Host")
ERR_INFO[E_CL_INVALID] = (400, "cl_invalid", "invalid Content-Length")
ERR_INFO[E_CL_REPEATED] = (400, "cl_repeated", "more than one Content-Length")
ERR_INFO[E_CL_TE] = (400, "cl_te", "both Content-Length and Transfer-Encoding")
ERR_INFO[E_TE_NOT_CHUNKED] = (400, "te_not_chunked", "last transfer coding is not chunked")
ERR_INFO[E_TE_CHUNKED_TWICE] = (400, "te_chunked_twice", "chunked applied more than once")
ERR_INFO[E_TE_HTTP10] = (400, "te_http10", "Transfer-Encoding in an HTTP/1.0 request")
ERR_INFO[E_TE_INVALID] = (400, "te_invalid", "malformed Transfer-Encoding")
ERR_INFO[E_TE_UNKNOWN] = (501, "te_unknown", "unknown transfer coding")
ERR_INFO[E_CHUNK_SIZE] = (400, "chunk_size", "invalid chunk size")
ERR_INFO[E_CHUNK_EXT] = (400, "chunk_ext", "invalid chunk extension")
ERR_INFO[E_CHUNK_DATA] = (400, "chunk_data", "chunk data not followed by CRLF")
ERR_INFO[E_TRAILER] = (400, "trailer", "invalid trailer field")
ERR_INFO[E_HEAD_TOO_LARGE] = (431, "head_too_large", "request head larger than buffer-size")
ERR_INFO[E_TOO_MANY_HEADERS] = (431, "too_many_headers", "more header fields than max-vars")
ERR_INFO[E_TARGET_TOO_LONG] = (414, "target_too_long", "request-target does not fit")
ERR_INFO[E_EXPECT] = (417, "expect", "unsupported expectation")
ERR_INFO[E_CONNECT] = (501, "connect", "CONNECT is not implemented")
ERR_INFO[E_UWSGI_SIZE] = (431, "uwsgi_size", "uwsgi packet larger than buffer-size")
ERR_INFO[E_UWSGI_VARS] = (400, "uwsgi_vars", "malformed uwsgi vars")
ERR_INFO[E_UWSGI_MODIFIER] = (400, "uwsgi_modifier", "uwsgi modifier1 is not 0 (WSGI)")
ERR_INFO[E_UWSGI_CL] = (400, "uwsgi_cl", "invalid CONTENT_LENGTH var")

# The rules a request can break: HTTPError.code -> HTTPError.status.
ERRORS = {info[1]: info[0] for info in ERR_INFO if info is not None}

REASONS = {400: "Bad Request", 414: "URI Too Long", 417: "Expectation Failed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 505: "HTTP Version Not Supported"}


class HTTPError(Exception):
    """The one parser error.  .status is the HTTP status to answer with, .reason its phrase,
    .code a stable short name of the rule broken, .detail a human sentence."""

    def __init__(self, status, code, detail):
        super().__init__(status, code, detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.reason = REASONS.get(status, "Bad Request")

    def __str__(self):
        return "%d %s: %s" % (self.status, self.reason, self.detail)


class _ClientGone(OSError):
    """The peer closed, reset or timed out while we were reading or writing for a request."""


cdef object make_error(int code):
    status, name, detail = ERR_INFO[code]
    return HTTPError(status, name, detail)

# ---------------------------------------------------------------------------------------------
# 4. Known header names: one table, built at import.  A hit gives the interned environ key
#    (HTTP_* or CONTENT_TYPE / CONTENT_LENGTH, PEP 3333) and, for the framing headers, the
#    id the semantic checks switch on.  Lookup: bucket by length, compare case-insensitively.
# ---------------------------------------------------------------------------------------------
cdef enum:
    H_HOST = 0
    H_CONTENT_LENGTH = 1
    H_TRANSFER_ENCODING = 2
    H_CONNECTION = 3
    H_EXPECT = 4
    H_CONTENT_TYPE = 5

DEF KN_MAX = 64
DEF KN_MAXLEN = 48

KNOWN_HEADERS = (
    "host", "content-length", "transfer-encoding", "connection", "expect", "content-type",
    "accept", "accept-encoding", "accept-language", "accept-charset", "user-agent", "cookie",
    "referer", "origin", "cache-control", "pragma", "authorization", "if-none-match",
    "if-modified-since", "if-match", "if-range", "if-unmodified-since", "range",
    "upgrade-insecure-requests", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    "x-forwarded-port", "x-real-ip", "x-requested-with", "x-request-id", "forwarded", "via",
    "dnt", "te", "upgrade", "keep-alive", "content-encoding", "priority", "sec-fetch-dest",
    "sec-fetch-mode", "sec-fetch-site", "sec-fetch-user", "sec-ch-ua", "sec-ch-ua-mobile",
    "sec-ch-ua-platform", "x-csrftoken", "x-api-key",
)

cdef const char *KN_NAME[KN_MAX]
cdef Py_ssize_t KN_LEN[KN_MAX]
cdef PyObject *KN_KEY[KN_MAX]
cdef Py_ssize_t KN_KEYLEN[KN_MAX]
cdef int KN_NEXT[KN_MAX]
cdef int KN_BUCKET[KN_MAXLEN]
cdef list _kn_keep = []      # owns the bytes and str objects the C arrays point into


cdef str environ_key(str name):
    if name == "content-length":
        return "CONTENT_LENGTH"
    if name == "content-type":
        return "CONTENT_TYPE"
    return "HTTP_" + name.upper().replace("-", "_")


cdef void init_known():
    cdef int i, n
    cdef bytes raw
    cdef str key
    for n in range(KN_MAXLEN):
        KN_BUCKET[n] = -1
    for i in range(len(KNOWN_HEADERS) - 1, -1, -1):
        raw = KNOWN_HEADERS[i].encode("ascii")
        key = sys.intern(environ_key(KNOWN_HEADERS[i]))
        _kn_keep.append(raw)
        _kn_keep.append(key)
        n = len(raw)
        KN_NAME[i] = PyBytes_AS_STRING(raw)
        KN_LEN[i] = n
        KN_KEY[i] = <PyObject *>key
        KN_KEYLEN[i] = len(key)
        KN_NEXT[i] = KN_BUCKET[n]
        KN_BUCKET[n] = i


init_known()


cdef inline bint ieq(const char *p, const char *lower, Py_ssize_t n) noexcept nogil:
    # Token bytes only: `| 0x20` folds A-Z onto a-z and maps no other tchar onto a letter.
    cdef Py_ssize_t k
    for k in range(n):
        if (<unsigned char>p[k] | 0x20) != <unsigned char>lower[k]:
            return False
    return True


cdef inline int lookup_header(const char *p, Py_ssize_t n) noexcept nogil:
    cdef int i
    if n >= KN_MAXLEN:
        return -1
    i = KN_BUCKET[n]
    while i >= 0:
        if ieq(p, KN_NAME[i], n):
            return i
        i = KN_NEXT[i]
    return -1


# ---------------------------------------------------------------------------------------------
# 5. RequestParser: sans-I/O.  Bytes go into `buf` (by feed() or by the serve loop's recv);
#    try_head() finds a complete head and parses it in place into spans; body_next() walks the
#    body framing (Content-Length or chunked) and hands out spans of body data.
# ---------------------------------------------------------------------------------------------
cdef enum:
    PROTO_HTTP = 0
    PROTO_UWSGI = 1

cdef enum:
    ST_HEAD = 0
    ST_BODY = 1
    ST_CLOSED = 2
    ST_ERROR = 3

cdef enum:
    R_NEED = 0
    R_HEAD = 1
    R_DATA = 2
    R_DONE = 3

cdef enum:   # chunked decoder (RFC 9112 §7.1)
    CS_SIZE = 0
    CS_SIZE_WS
    CS_EXT
    CS_SIZE_LF
    CS_DATA
    CS_DATA_CR
    CS_DATA_LF
    CS_TRAILER_START
    CS_TRAILER_NAME
    CS_TRAILER_VALUE
    CS_TRAILER_LF
    CS_END_LF

DEF BIG = 1 << 62
DEF DISCARD_MAX = 65536


cdef inline bint is_digit(char c) noexcept nogil:
    return b'0' <= c <= b'9'


cdef inline bint is_ows(char c) noexcept nogil:
    return c == b' ' or c == b'\t'


cdef inline int eol_error(const char *b, Py_ssize_t p, int otherwise) noexcept nogil:
    # The byte at p ended a field early: name the line-ending fault if it is one.
    if b[p] == b'\n':
        return E_BARE_LF
    if b[p] == b'\r' and b[p + 1] != b'\n':
        return E_BARE_CR
    if b[p] != b'\r' and b[p] != b'\t' and (<unsigned char>b[p] < 32 or <unsigned char>b[p] == 127):
        return E_CTL
    return otherwise


cdef bint has_token(const char *v, Py_ssize_t n, const char *tok, Py_ssize_t tn) noexcept nogil:
    # Is `tok` (lower-case) one of the elements of the list `v` (RFC 9110 §5.6.1 #rule)?
    cdef Py_ssize_t p = 0, q
    while p < n:
        while p < n and (is_ows(v[p]) or v[p] == b','):
            p += 1
        q = p
        while p < n and v[p] != b',' and not is_ows(v[p]):
            p += 1
        if p - q == tn and ieq(v + q, tok, tn):
            return True
    return False


cdef bint valid_host(const char *h, Py_ssize_t n) noexcept nogil:
    # RFC 9110 §7.2 Host = uri-host [ ":" port ]; RFC 3986 §3.2.2 host = IP-literal /
    # IPv4address / reg-name (reg-name may be empty).
    cdef Py_ssize_t p = 0
    cdef unsigned char c
    if n > 0 and h[0] == b'[':
        p = 1
        while p < n and h[p] != b']':
            c = <unsigned char>h[p]
            if not (HEXVAL[c] or c == b':' or c == b'.' or REGNAME[c]):
                return False
            p += 1
        if p >= n or p == 1:
            return False
        p += 1
    else:
        while p < n and REGNAME[<unsigned char>h[p]]:
            p += 1
    if p == n:
        return True
    if h[p] != b':':
        return False
    p += 1
    while p < n:
        if not is_digit(h[p]):
            return False
        p += 1
    return True


cdef long long parse_decimal(const char *p, Py_ssize_t n) noexcept nogil:
    # RFC 9110 §8.6 Content-Length = 1*DIGIT: no sign, no space, no hex; at most 18 digits
    # so the value fits in a long long (anything longer is 400, not a wrapped number).
    cdef Py_ssize_t i
    cdef long long v = 0
    if n == 0 or n > 18:
        return -1
    for i in range(n):
        if not is_digit(p[i]):
            return -1
        v = v * 10 + (p[i] - 48)
    return v


@cython.final
cdef class RequestParser:
    """Sans-I/O parser.  RequestParser(buffer_size=4096, max_headers=100, protocol="http",
    environ=None).  feed(data) -> list of events:
      ("head", method, target, version, headers, keep_alive, expect_continue)  [http]
      ("vars", pairs)                                                          [uwsgi]
      ("environ", dict)        instead of the two above when environ= (a base dict) is given
      ("body", bytes) ... ("end",)
    Raises HTTPError (when events came before the error in the same call, they are returned
    and the next feed() raises); once failed, every later feed() raises it again."""

    def __cinit__(self, Py_ssize_t buffer_size=4096, int max_headers=100,
                  str protocol="http", environ=None):
        if buffer_size < 64 or buffer_size > (1 << 24):
            raise ValueError("buffer_size must be between 64 and 16 MiB")
        if max_headers < 1 or max_headers > 65535:
            raise ValueError("max_headers must be between 1 and 65535")
        if protocol not in ("http", "uwsgi"):
            raise ValueError("protocol must be 'http' or 'uwsgi'")
        self.limit = buffer_size
        self.cap = buffer_size + 16          # + the 4-byte uwsgi header, rounded
        self.buf = <char *>malloc(self.cap + 1)
        self.scratch = <char *>malloc(self.cap + 64)
        self.max_headers = max_headers
        self.headers = <Header *>malloc(sizeof(Header) * max_headers)
        if self.buf == NULL or self.scratch == NULL or self.headers == NULL:
            raise MemoryError()
        self.proto = PROTO_UWSGI if protocol == "uwsgi" else PROTO_HTTP
        self.base_environ = environ
        self.reset()

    def __dealloc__(self):
        free(self.buf)
        free(self.scratch)
        free(self.headers)

    cdef void reset(self):
        self.start = self.end = self.scanned = 0
        self.state = ST_HEAD
        self.err = E_NONE
        self.error = None
        self.nheaders = 0

    cdef int fail(self, int code) except -1:
        self.state = ST_ERROR
        self.err = code
        self.error = make_error(code)
        raise self.error

    cdef Py_ssize_t make_room(self) except -1:
        # No span may point into buf across this call: heads are turned into Python objects
        # (environ) before any more bytes are read.
        cdef Py_ssize_t lim = self.cap if self.proto == PROTO_UWSGI else self.limit
        if JS_DEBUG and not (0 <= self.start <= self.end <= self.cap
                             and self.scanned <= self.end and self.remaining >= 0):
            raise AssertionError("RequestParser buffer invariant broken: %d %d %d %d"
                                 % (self.start, self.end, self.scanned, self.cap))
        if self.start == self.end:
            self.start = self.end = self.scanned = 0
        elif self.start > 0 and (self.state == ST_HEAD or self.end == self.cap):
            memmove(self.buf, self.buf + self.start, self.end - self.start)
            self.end -= self.start
            self.scanned -= self.start
            if self.scanned < 0:
                self.scanned = 0
            self.start = 0
        if self.state != ST_HEAD:
            lim = self.cap
        return lim - self.end

    cdef void new_message(self):
        self.nheaders = 0
        self.keep_alive = False
        self.expect_continue = False
        self.chunked = False
        self.remaining = 0
        self.cstate = CS_SIZE
        self.csize = 0
        self.cdigits = 0
        self.trailer_bytes = 0
        self.query_off = self.query_len = 0
        self.modifier1 = 0

    # -- HTTP head ------------------------------------------------------------------------
    cdef int try_head(self) except -1:
        cdef char *b = self.buf
        cdef Py_ssize_t i, j
        cdef const char *nl
        if self.state == ST_ERROR:
            raise self.error
        if self.state != ST_HEAD:
            return R_NEED
        if self.proto == PROTO_UWSGI:
            return self.try_uwsgi()
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line
        while self.end - self.start >= 2 and b[self.start] == b'\r' and b[self.start + 1] == b'\n':
            self.start += 2
        if self.scanned < self.start:
            self.scanned = self.start
        self.check_method_prefix()
        i = self.scanned
        while True:
            nl = <const char *>memchr(b + i, b'\n', self.end - i)
            if nl == NULL:
                self.scanned = self.end
                return self.head_need()
            j = nl - b
            if j == self.start or b[j - 1] != b'\r':
                return self.parse_head(j + 1)        # a bare LF: the parse names it
            if j + 1 >= self.end:
                self.scanned = j
                return self.head_need()
            if b[j + 1] == b'\n':
                return self.parse_head(j + 2)
            if b[j + 1] == b'\r':
                if j + 2 >= self.end:
                    self.scanned = j
                    return self.head_need()
                if b[j + 2] != b'\n':
                    return self.fail(E_BARE_CR)
                return self.parse_head(j + 3)
            i = j + 1

    cdef int check_method_prefix(self) except -1:
        # The method is the first thing the full parse checks, so a byte in its first 32 that
        # cannot be in it (a TLS ClientHello on the HTTP port, garbage) fails now, with the
        # very error the full parse gives, instead of waiting for a line end.  Run first on
        # every call, so any split of the input meets the same first error (fuzz/).
        cdef Py_ssize_t n = self.end - self.start
        cdef Py_ssize_t p = self.start, stop = self.start + (n if n < 32 else 32)
        cdef char *b = self.buf
        while p < stop and TCHAR[<unsigned char>b[p]]:
            p += 1
        if p < stop and b[p] != b'\r' and b[p] != b'\n' and (b[p] != b' ' or p == self.start):
            return self.fail(eol_error(b, p, E_REQUEST_LINE if b[p] == b' ' else E_METHOD))
        return 0

    cdef int head_need(self) except -1:
        # The head must fit in buffer-size (uWSGI: "invalid HTTP request size"); RFC 6585 §5
        # gives 431 for the header section, RFC 9110 §15.5.15 414 for a request-target.
        cdef Py_ssize_t n = self.end - self.start
        if n < self.limit:
            return R_NEED
        if memchr(self.buf + self.start, b'\n', n) == NULL:
            if memchr(self.buf + self.start, b' ', n) != NULL:
                return self.fail(E_TARGET_TOO_LONG)
            return self.fail(E_REQUEST_LINE)
        return self.fail(E_HEAD_TOO_LARGE)

    cdef int parse_head(self, Py_ssize_t hend) except -1:
        cdef char *b = self.buf
        cdef Py_ssize_t p, q
        self.new_message()
        self.head_start = self.start
        p = self.parse_request_line(self.start, hend)
        p = self.parse_fields(p)
        self.start = p
        self.head_len = p - self.head_start
        self.check_semantics()
        self.state = ST_BODY
        return R_HEAD

    cdef Py_ssize_t parse_request_line(self, Py_ssize_t p, Py_ssize_t hend) except -1:
        # RFC 9112 §3: request-line = method SP request-target SP HTTP-version CRLF, with
        # exactly one SP between parts (no autocorrection).
        cdef char *b = self.buf
        cdef Py_ssize_t q = p
        while TCHAR[<unsigned char>b[p]]:
            p += 1
        if p == q or b[p] != b' ':
            self.fail(eol_error(b, p, E_REQUEST_LINE if b[p] == b' ' else E_METHOD))
        self.method_off = q
        self.method_len = p - q
        p += 1
        q = p
        while TARGET_OK[<unsigned char>b[p]]:
            p += 1
        if p == q:
            self.fail(eol_error(b, p, E_REQUEST_LINE if b[p] == b' ' or b[p] == b'\r'
                                else E_TARGET))
        if b[p] != b' ':
            if b[p] == b'\r' and b[p + 1] == b'\n':
                self.fail(E_REQUEST_LINE)           # no HTTP-version: HTTP/0.9 is not served
            self.fail(eol_error(b, p, E_TARGET))
        self.target_off = q
        self.target_len = p - q
        p += 1
        # RFC 9112 §2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT (case-sensitive)
        if (hend - p < 9 or memcmp(b + p, b"HTTP/", 5) != 0 or not is_digit(b[p + 5])
                or b[p + 6] != b'.' or not is_digit(b[p + 7])):
            self.fail(eol_error(b, p, E_VERSION))
        if b[p + 8] != b'\r' or b[p + 9] != b'\n':
            self.fail(eol_error(b, p + 8, E_VERSION))
        self.major = b[p + 5] - 48
        self.minor = b[p + 7] - 48
        if self.major != 1:
            self.fail(E_VERSION_MAJOR)
        self.split_target()
        return p + 10

    cdef int split_target(self) except -1:
        # RFC 9112 §3.2: origin-form, absolute-form, asterisk-form (OPTIONS only),
        # authority-form (CONNECT only, which we do not implement).
        cdef char *b = self.buf
        cdef Py_ssize_t t = self.target_off, n = self.target_len, p, e = t + n
        cdef const char *qm
        if b[t] == b'/':
            p = t
        elif n == 1 and b[t] == b'*':
            if self.method_len != 7 or memcmp(b + self.method_off, b"OPTIONS", 7) != 0:
                return self.fail(E_TARGET)
            p = t
        elif self.method_len == 7 and memcmp(b + self.method_off, b"CONNECT", 7) == 0:
            return self.fail(E_CONNECT)
        elif n > 7 and ieq(b + t, b"http://", 7):
            p = self.skip_authority(t + 7, e)
        elif n > 8 and ieq(b + t, b"https://", 8):
            p = self.skip_authority(t + 8, e)
        else:
            return self.fail(E_TARGET)
        self.path_off = p
        qm = <const char *>memchr(b + p, b'?', e - p)
        if qm == NULL:
            self.path_len = e - p
        else:
            self.path_len = (qm - b) - p
            self.query_off = (qm - b) + 1
            self.query_len = e - self.query_off
        return 0

    cdef Py_ssize_t skip_authority(self, Py_ssize_t p, Py_ssize_t e) except -1:
        cdef Py_ssize_t q = p
        while p < e and self.buf[p] != b'/' and self.buf[p] != b'?':
            p += 1
        if p == q or not valid_host(self.buf + q, p - q):
            self.fail(E_TARGET)
        return p

    cdef Py_ssize_t parse_fields(self, Py_ssize_t p) except -1:
        # RFC 9112 §5: field-line = field-name ":" OWS field-value OWS, each ending in CRLF;
        # the section ends with an empty line.  Everything stops at a byte outside its table,
        # and the head ends in LF, so no loop runs past hend.
        cdef char *b = self.buf
        cdef Py_ssize_t q, v, ve, colon
        cdef Header *h
        while True:
            if b[p] == b'\r':
                if b[p + 1] != b'\n':
                    self.fail(E_BARE_CR)
                return p + 2
            if is_ows(b[p]):
                self.fail(E_OBS_FOLD)             # §5.2 obs-fold; §2.2 space after start-line
            q = p
            while TCHAR[<unsigned char>b[p]]:
                p += 1
            if b[p] != b':':
                if is_ows(b[p]) and p > q:
                    self.fail(E_WS_BEFORE_COLON)  # §5.1: MUST reject with 400
                if b[p] == b'\r' and b[p + 1] == b'\n' and p > q:
                    self.fail(E_NO_COLON)
                self.fail(eol_error(b, p, E_FIELD_NAME))
            if p == q:
                self.fail(E_FIELD_NAME)
            colon = p
            p += 1
            while is_ows(b[p]):
                p += 1
            v = p
            while VALUE_OK[<unsigned char>b[p]]:
                p += 1
            if b[p] != b'\r' or b[p + 1] != b'\n':
                self.fail(eol_error(b, p, E_CTL))
            ve = p
            while ve > v and is_ows(b[ve - 1]):
                ve -= 1
            p += 2
            if self.nheaders == self.max_headers:
                self.fail(E_TOO_MANY_HEADERS)
            h = &self.headers[self.nheaders]
            self.nheaders += 1
            h.name_off = q
            h.name_len = colon - q
            h.value_off = v
            h.value_len = ve - v
            h.hid = lookup_header(b + q, h.name_len)

    cdef int check_semantics(self) except -1:
        cdef char *b = self.buf
        cdef int i, hosts = 0, cls = 0, tes = 0, host_i = -1, cl_i = -1
        cdef bint close = False, keep = False
        cdef Header *h
        for i in range(self.nheaders):
            h = &self.headers[i]
            if h.hid == H_HOST:
                hosts += 1
                host_i = i
            elif h.hid == H_CONTENT_LENGTH:
                cls += 1
                cl_i = i
            elif h.hid == H_TRANSFER_ENCODING:
                tes += 1
            elif h.hid == H_CONNECTION:
                self.connection_tokens(h, &close, &keep)
            elif h.hid == H_EXPECT and self.minor >= 1:
                # RFC 9110 §10.1.1: only 100-continue is defined (417 otherwise); an HTTP/1.0
                # request's expectation MUST be ignored.
                if h.value_len == 12 and ieq(b + h.value_off, b"100-continue", 12):
                    self.expect_continue = True
                else:
                    self.fail(E_EXPECT)
        # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, for more than one Host
        # line, and for an invalid Host value.
        if hosts > 1:
            self.fail(E_HOST_REPEATED)
        if hosts == 0 and self.minor >= 1:
            self.fail(E_HOST_MISSING)
        if hosts == 1:
            h = &self.headers[host_i]
            if not valid_host(b + h.value_off, h.value_len):
                self.fail(E_HOST_INVALID)
        if tes:
            if cls:
                self.fail(E_CL_TE)                # §6.1 / §11.2 request smuggling
            if self.minor == 0:
                self.fail(E_TE_HTTP10)            # §6.1: HTTP/1.0 framing is faulty
            self.transfer_codings()
        elif cls:
            if cls > 1:
                self.fail(E_CL_REPEATED)          # RFC 9110 §8.6 MAY reject: we do
            h = &self.headers[cl_i]
            self.remaining = parse_decimal(b + h.value_off, h.value_len)
            if self.remaining < 0:
                self.fail(E_CL_INVALID)           # §6.3 (5)
        if self.minor >= 1:
            self.keep_alive = not close           # §9.3: persistent by default in 1.1
        else:
            self.keep_alive = keep and not close  # §9.3 / RFC 9112 §C.2.2 for 1.0
        if self.remaining == 0 and not self.chunked:
            self.expect_continue = False          # nothing to continue to
        return 0

    cdef void connection_tokens(self, Header *h, bint *close, bint *keep) noexcept:
        # RFC 9110 §7.6.1 Connection = #connection-option (case-insensitive tokens)
        cdef const char *v = self.buf + h.value_off
        if has_token(v, h.value_len, b"close", 5):
            close[0] = True
        if has_token(v, h.value_len, b"keep-alive", 10):
            keep[0] = True

    cdef int transfer_codings(self) except -1:
        # RFC 9112 §6.1: Transfer-Encoding = #transfer-coding, over every TE line in order.
        # chunked must be last (§6.3 (4), else 400) and applied once (§7.1); any other
        # coding is one we do not implement (501, §6.1).
        cdef char *b = self.buf
        cdef int i, n = 0, chunked = 0, unknown = 0
        cdef bint last_chunked = False, params
        cdef Py_ssize_t p, e, q, ne
        cdef Header *h
        for i in range(self.nheaders):
            h = &self.headers[i]
            if h.hid != H_TRANSFER_ENCODING:
                continue
            p = h.value_off
            e = p + h.value_len
            while p < e:
                while p < e and (is_ows(b[p]) or b[p] == b','):
                    p += 1          # RFC 9110 §5.6.1.2: empty list elements are ignored
                if p == e:
                    break
                q = p
                while p < e and TCHAR[<unsigned char>b[p]]:
                    p += 1
                ne = p
                if ne == q:
                    self.fail(E_TE_INVALID)
                while p < e and is_ows(b[p]):
                    p += 1
                params = p < e and b[p] == b';'
                while p < e and b[p] != b',':
                    if not VALUE_OK[<unsigned char>b[p]] or (not params and not is_ows(b[p])):
                        self.fail(E_TE_INVALID)
                    p += 1
                n += 1
                last_chunked = ne - q == 7 and ieq(b + q, b"chunked", 7)
                if last_chunked:
                    if params:
                        self.fail(E_TE_INVALID)   # chunked takes no parameters
                    chunked += 1
                else:
                    unknown += 1
        if n == 0:
            self.fail(E_TE_INVALID)
        if not last_chunked:
            self.fail(E_TE_NOT_CHUNKED)
        if chunked > 1:
            self.fail(E_TE_CHUNKED_TWICE)
        if unknown:
            self.fail(E_TE_UNKNOWN)
        self.chunked = True
        return 0

    # -- uwsgi packet (UWSGI_SEMANTICS §9) ---------------------------------------------------
    cdef int try_uwsgi(self) except -1:
        cdef unsigned char *b = <unsigned char *>self.buf + self.start
        cdef Py_ssize_t avail = self.end - self.start, pktsize
        if avail < 4:
            return R_NEED
        pktsize = b[1] | (b[2] << 8)       # u16 little-endian
        if pktsize > self.limit:
            return self.fail(E_UWSGI_SIZE)  # "invalid request block size"
        if b[0] != 0:
            return self.fail(E_UWSGI_MODIFIER)
        if avail < 4 + pktsize:
            return R_NEED
        self.new_message()
        self.modifier1 = b[0]
        self.head_start = self.start
        self.parse_vars(self.start + 4, self.start + 4 + pktsize)
        self.start += 4 + pktsize
        self.head_len = 4 + pktsize
        self.vars_bytes = pktsize
        self.state = ST_BODY
        return R_HEAD

    cdef int parse_vars(self, Py_ssize_t p, Py_ssize_t e) except -1:
        # keysize u16 LE, key, valsize u16 LE, value; every size bounds-checked against the
        # packet; an empty key is rejected ("uwsgi key cannot be null").
        cdef unsigned char *b = <unsigned char *>self.buf
        cdef Py_ssize_t kl, vl
        cdef Header *h
        while p < e:
            if e - p < 2:
                self.fail(E_UWSGI_VARS)
            kl = b[p] | (b[p + 1] << 8)
            p += 2
            if kl == 0 or e - p < kl + 2:
                self.fail(E_UWSGI_VARS)
            vl = b[p + kl] | (b[p + kl + 1] << 8)
            if e - (p + kl + 2) < vl:
                self.fail(E_UWSGI_VARS)
            if self.nheaders == self.max_headers:
                self.fail(E_UWSGI_VARS)          # "max vec size reached"
            h = &self.headers[self.nheaders]
            self.nheaders += 1
            h.name_off = p
            h.name_len = kl
            h.value_off = p + kl + 2
            h.value_len = vl
            h.hid = -1
            if kl == 14 and memcmp(b + p, b"CONTENT_LENGTH", 14) == 0 and vl:
                self.remaining = parse_decimal(<char *>b + p + kl + 2, vl)
                if self.remaining < 0:
                    self.fail(E_UWSGI_CL)
            p += kl + 2 + vl
        return 0

    # -- body framing ---------------------------------------------------------------------
    cdef int body_next(self, Py_ssize_t maxlen, Py_ssize_t *off, Py_ssize_t *ln) except -1:
        """Next span of body data (R_DATA), R_NEED for more bytes, R_DONE at its end."""
        if self.state == ST_ERROR:
            raise self.error
        if self.state != ST_BODY:
            return R_DONE
        if self.chunked:
            return self.chunked_next(maxlen, off, ln)
        if self.remaining == 0:
            return self.message_done()
        return self.take_body(maxlen, off, ln)

    cdef int take_body(self, Py_ssize_t maxlen, Py_ssize_t *off, Py_ssize_t *ln):
        # The buffered body bytes the framing still allows (Content-Length or chunk), at
        # most maxlen, as one span; R_NEED when none are buffered.
        cdef Py_ssize_t n = self.end - self.start
        if n == 0:
            return R_NEED
        if n > self.remaining:
            n = <Py_ssize_t>self.remaining
        if n > maxlen:
            n = maxlen
        off[0] = self.start
        ln[0] = n
        self.start += n
        self.remaining -= n
        return R_DATA

    cdef void body_unread(self, Py_ssize_t n):
        # Give back the tail of the span body_next just returned (readline stops at LF).
        self.start -= n
        self.remaining += n

    cdef bint body_done(self):
        return self.state != ST_BODY

    cdef int skip_buffered_body(self) except -1:
        # After the response: an unread body still fully in the buffer is skipped so the
        # connection can be kept; 0 if more of it is still on the wire.
        cdef Py_ssize_t off, ln
        cdef int r
        while True:
            r = self.body_next(BIG, &off, &ln)
            if r == R_DONE:
                return 1
            if r == R_NEED:
                return 0

    cdef int message_done(self):
        self.state = ST_HEAD if self.keep_alive else ST_CLOSED
        self.scanned = self.start
        return R_DONE

    cdef int chunked_next(self, Py_ssize_t maxlen, Py_ssize_t *off, Py_ssize_t *ln) except -1:
        # RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF;
        # last-chunk = 1*"0" [ chunk-ext ] CRLF; then trailer-section CRLF.  One byte at a
        # time for the framing, spans for the data; resumable at any byte boundary.
        cdef char *b = self.buf
        cdef unsigned char c
        cdef int cs
        while True:
            cs = self.cstate
            if cs == CS_DATA:
                if self.remaining == 0:
                    self.cstate = CS_DATA_CR
                    continue
                return self.take_body(maxlen, off, ln)
            if self.start >= self.end:
                return R_NEED
            c = <unsigned char>b[self.start]
            self.start += 1
            if cs >= CS_TRAILER_START:
                self.trailer_bytes += 1
                if self.trailer_bytes > self.limit:
                    self.fail(E_HEAD_TOO_LARGE)
            if cs == CS_SIZE:
                if HEXVAL[c]:
                    if self.cdigits == 15:
                        self.fail(E_CHUNK_SIZE)   # would overflow: not a size we can honour
                    self.csize = self.csize * 16 + (HEXVAL[c] - 1)
                    self.cdigits += 1
                elif self.cdigits == 0:
                    self.fail(E_CHUNK_SIZE)
                elif c == b';':
                    self.cstate = CS_EXT
                elif c == b' ' or c == b'\t':
                    self.cstate = CS_SIZE_WS      # BWS before ";" (§7.1.1)
                elif c == b'\r':
                    self.cstate = CS_SIZE_LF
                else:
                    self.fail(E_CHUNK_SIZE)
            elif cs == CS_SIZE_WS:
                if c == b';':
                    self.cstate = CS_EXT
                elif c != b' ' and c != b'\t':
                    self.fail(E_CHUNK_SIZE)
            elif cs == CS_EXT:
                if c == b'\r':
                    self.cstate = CS_SIZE_LF
                elif not VALUE_OK[c]:
                    self.fail(E_CHUNK_EXT)
                else:
                    self.trailer_bytes += 1       # bound the extension like a trailer
                    if self.trailer_bytes > self.limit:
                        self.fail(E_CHUNK_EXT)
            elif cs == CS_SIZE_LF:
                if c != b'\n':
                    self.fail(E_BARE_CR)
                if self.csize == 0:
                    self.cstate = CS_TRAILER_START
                    self.trailer_bytes = 0
                else:
                    self.remaining = self.csize
                    self.cstate = CS_DATA
            elif cs == CS_DATA_CR:
                if c != b'\r':
                    self.fail(E_CHUNK_DATA)
                self.cstate = CS_DATA_LF
            elif cs == CS_DATA_LF:
                if c != b'\n':
                    self.fail(E_CHUNK_DATA)
                self.cstate = CS_SIZE
                self.csize = 0
                self.cdigits = 0
            elif cs == CS_TRAILER_START:
                if c == b'\r':
                    self.cstate = CS_END_LF
                elif TCHAR[c]:
                    self.cstate = CS_TRAILER_NAME
                else:
                    self.fail(E_TRAILER)          # obs-fold or junk (§7.1.2, §5.2)
            elif cs == CS_TRAILER_NAME:
                if c == b':':
                    self.cstate = CS_TRAILER_VALUE
                elif not TCHAR[c]:
                    self.fail(E_TRAILER)
            elif cs == CS_TRAILER_VALUE:
                if c == b'\r':
                    self.cstate = CS_TRAILER_LF
                elif not VALUE_OK[c]:
                    self.fail(E_TRAILER)
            elif cs == CS_TRAILER_LF:
                if c != b'\n':
                    self.fail(E_BARE_CR)
                self.cstate = CS_TRAILER_START
            elif cs == CS_END_LF:
                if c != b'\n':
                    self.fail(E_BARE_CR)
                return self.message_done()

    # -- the Python-visible sans-I/O API --------------------------------------------------
    def feed(self, data):
        """Append bytes; return the events they complete (see the class docstring)."""
        cdef Py_buffer view
        cdef list events = []
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.feed_bytes(<const char *>view.buf, view.len, events)
        except HTTPError:
            if not events:
                raise
            # the events before the error are delivered; the next feed() raises the error
        finally:
            PyBuffer_Release(&view)
        return events

    cdef int feed_bytes(self, const char *p, Py_ssize_t n, list events) except -1:
        cdef Py_ssize_t room
        if self.state == ST_ERROR:
            raise self.error
        while True:
            self.pump(events)
            if n == 0 or self.state == ST_CLOSED:
                return 0        # after a closing message nothing more is a request
            room = self.make_room()
            if room > n:
                room = n
            memcpy(self.buf + self.end, p, room)
            self.end += room
            p += room
            n -= room

    cdef int pump(self, list events) except -1:
        cdef Py_ssize_t off, ln
        cdef int r
        while True:
            if self.state == ST_HEAD:
                if self.try_head() == R_NEED:
                    return 0
                events.append(self.head_event())
            elif self.state == ST_BODY:
                r = self.body_next(BIG, &off, &ln)
                if r == R_NEED:
                    return 0
                if r == R_DATA:
                    events.append(("body", PyBytes_FromStringAndSize(self.buf + off, ln)))
                else:
                    events.append(("end",))
            else:
                return 0

    cdef tuple head_event(self):
        cdef char *b = self.buf
        cdef Header *h
        cdef int i
        if self.base_environ is not None:
            if self.proto == PROTO_UWSGI:
                return ("environ", uwsgi_environ(self, self.base_environ))
            return ("environ", http_environ(self, self.base_environ))
        fields = []
        for i in range(self.nheaders):
            h = &self.headers[i]
            fields.append((b[h.name_off:h.name_off + h.name_len],
                           b[h.value_off:h.value_off + h.value_len]))
        if self.proto == PROTO_UWSGI:
            return ("vars", tuple(fields))
        return ("head", b[self.method_off:self.method_off + self.method_len],
                b[self.target_off:self.target_off + self.target_len],
                b"HTTP/%d.%d" % (self.major, self.minor), tuple(fields),
                bool(self.keep_alive), bool(self.expect_continue))


# ---------------------------------------------------------------------------------------------
# 6. Environ builder (PEP 3333): spans -> one dict.  Keys of known headers are interned
#    strings from the table above; values are decoded latin-1 straight from the buffer.
# ---------------------------------------------------------------------------------------------
cdef inline object latin1(const char *p, Py_ssize_t n):
    return PyUnicode_DecodeLatin1(p, n, NULL)


cdef object method_str(const char *p, Py_ssize_t n):
    # The common methods as constants (interned by Cython): no allocation per request.
    if n == 3 and memcmp(p, b"GET", 3) == 0:
        return "GET"
    if n == 4 and memcmp(p, b"POST", 4) == 0:
        return "POST"
    if n == 4 and memcmp(p, b"HEAD", 4) == 0:
        return "HEAD"
    if n == 3 and memcmp(p, b"PUT", 3) == 0:
        return "PUT"
    if n == 6 and memcmp(p, b"DELETE", 6) == 0:
        return "DELETE"
    if n == 7 and memcmp(p, b"OPTIONS", 7) == 0:
        return "OPTIONS"
    if n == 5 and memcmp(p, b"PATCH", 5) == 0:
        return "PATCH"
    return latin1(p, n)


cdef object decode_path(const char *p, Py_ssize_t n, char *out):
    # PATH_INFO is percent-decoded (uWSGI http-socket, PEP 3333 via CGI); an invalid escape
    # is kept literally.  The result is a latin-1 str ("bytes in a str", PEP 3333).
    cdef Py_ssize_t i = 0, o = 0
    cdef unsigned char a, c
    if memchr(p, b'%', n) == NULL:
        return latin1(p, n)
    while i < n:
        a = HEXVAL[<unsigned char>p[i + 1]] if i + 2 < n else 0
        c = HEXVAL[<unsigned char>p[i + 2]] if i + 2 < n else 0
        if p[i] == b'%' and a and c:
            a -= 1
            c -= 1
            out[o] = <char>(a * 16 + c)
            i += 3
        else:
            out[o] = p[i]
            i += 1
        o += 1
    return latin1(out, o)


cdef object header_key(const char *p, Py_ssize_t n, char *out):
    # HTTP_ + name upper-cased with '-' -> '_' (PEP 3333 / CGI RFC 3875 §4.1.18).
    cdef Py_ssize_t i
    cdef char c
    memcpy(out, b"HTTP_", 5)
    for i in range(n):
        c = p[i]
        if b'a' <= c <= b'z':
            c = c - 32
        elif c == b'-':
            c = b'_'
        out[5 + i] = c
    return latin1(out, n + 5)


cdef dict http_environ(RequestParser r, dict base):
    cdef dict env = PyDict_Copy(base)
    cdef char *b = r.buf
    cdef Header *h
    cdef PyObject *old
    cdef Py_ssize_t vb = 0
    cdef int i
    env["REQUEST_METHOD"] = method_str(b + r.method_off, r.method_len)
    env["REQUEST_URI"] = latin1(b + r.target_off, r.target_len)
    env["PATH_INFO"] = decode_path(b + r.path_off, r.path_len, r.scratch)
    env["QUERY_STRING"] = latin1(b + r.query_off, r.query_len) if r.query_len else ""
    if r.minor == 1:
        env["SERVER_PROTOCOL"] = "HTTP/1.1"
    elif r.minor == 0:
        env["SERVER_PROTOCOL"] = "HTTP/1.0"
    else:
        env["SERVER_PROTOCOL"] = "HTTP/1.%d" % r.minor
    vb = 4 * 5 + 14 + 11 + 9 + 12 + 15 + r.method_len + 2 * r.target_len + 8
    for i in range(r.nheaders):
        h = &r.headers[i]
        if h.hid >= 0:
            key = <object>KN_KEY[h.hid]
            vb += 4 + KN_KEYLEN[h.hid] + h.value_len
        elif memchr(b + h.name_off, b'_', h.name_len) != NULL:
            continue     # PEP 3333 leaves it open; '_' would be confusable with '-': drop
        else:
            key = header_key(b + h.name_off, h.name_len, r.scratch)
            vb += 9 + h.name_len + h.value_len
        val = latin1(b + h.value_off, h.value_len)
        old = PyDict_SetDefault(env, key, val)
        if old != <PyObject *>val:
            # RFC 9110 §5.3: repeated field lines combine into one list, joined by ", "
            env[key] = (<object>old) + ", " + val
    r.vars_bytes = vb
    return env


cdef dict uwsgi_environ(RequestParser r, dict base):
    cdef dict env = PyDict_Copy(base)
    cdef char *b = r.buf
    cdef Header *h
    cdef int i
    for i in range(r.nheaders):
        h = &r.headers[i]
        env[latin1(b + h.name_off, h.name_len)] = latin1(b + h.value_off, h.value_len)
    # PEP 3333 requires these even when the front end (nginx uwsgi_params) left them out.
    env.setdefault("PATH_INFO", "")
    env.setdefault("QUERY_STRING", "")
    env.setdefault("SCRIPT_NAME", "")
    return env


# ---------------------------------------------------------------------------------------------
# 7. wsgi.input and wsgi.file_wrapper
# ---------------------------------------------------------------------------------------------
@cython.final
@cython.freelist(4)
cdef class InputStream:
    """wsgi.input (PEP 3333): bounded by the request body, chunked bodies decoded, so reading
    to EOF is safe (wsgi.input_terminated)."""
    cdef Connection conn

    def read(self, size=-1):
        cdef Py_ssize_t want, got = 0
        cdef list pieces = []
        cdef RequestParser p = self.conn.parser
        if size is None or size < 0:
            want = BIG
        else:
            want = size
        if p.state == ST_BODY and not p.chunked and p.remaining > 0 and want > 0:
            return self.conn.read_direct(want)
        while got < want:
            chunk = self.conn.body_chunk(want - got)
            if not chunk:
                break
            pieces.append(chunk)
            got += PyBytes_GET_SIZE(chunk)
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def readline(self, size=-1):
        cdef Py_ssize_t want, got = 0, n
        cdef const char *p
        cdef const char *nl
        cdef list pieces = []
        want = BIG if size is None or size < 0 else size
        while got < want:
            chunk = self.conn.body_chunk(want - got)
            if not chunk:
                break
            p = PyBytes_AS_STRING(chunk)
            n = PyBytes_GET_SIZE(chunk)
            nl = <const char *>memchr(p, b'\n', n)
            if nl != NULL:
                if nl - p + 1 < n:
                    self.conn.parser.body_unread(n - (nl - p + 1))
                    chunk = chunk[:nl - p + 1]
                pieces.append(chunk)
                break
            pieces.append(chunk)
            got += n
        return b"".join(pieces)

    def readlines(self, hint=-1):
        cdef list lines = []
        cdef Py_ssize_t total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """wsgi.file_wrapper (PEP 3333 "Optional Platform-Specific File Handling"): iterable over
    blocks; the serve loop sends a regular file's remaining bytes with sendfile instead."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


# ---------------------------------------------------------------------------------------------
# 8. Response: start_response (the instance is the callable), write(), the head writer and
#    the body framing (RFC 9112 §6.3 from the server side).
# ---------------------------------------------------------------------------------------------
cdef enum:
    K_HTTP = 0      # http-socket: one request per connection (uWSGI)
    K_HTTP11 = 1    # http11-socket: persistent connections, socket-timeout idle limit
    K_UWSGI = 2     # uwsgi protocol: one request per connection


cdef inline bint no_body_status(int status) noexcept nogil:
    # RFC 9110 §15.2 (1xx), §15.3.5 (204), §15.4.5 (304): never a body.
    return status < 200 or status == 204 or status == 304


cdef int str_bytes(object s, const char **p, Py_ssize_t *n) except -1:
    # A header or status str as its latin-1 bytes, without encoding (PEP 3333: native strings
    # whose code points are all < 256).
    if not PyUnicode_Check(s):
        raise TypeError("WSGI status and headers must be str, got %r" % type(s).__name__)
    if PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND:
        raise ValueError("WSGI header text must be latin-1: %r" % (s,))
    p[0] = <const char *>PyUnicode_DATA(s)
    n[0] = PyUnicode_GET_LENGTH(s)
    return 0


@cython.final
@cython.freelist(4)
cdef class Response:

    def __call__(self, status, headers, exc_info=None):
        """start_response(status, response_headers, exc_info=None) -> write (PEP 3333)."""
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.started:
            raise RuntimeError("start_response() called again without exc_info (PEP 3333)")
        self.encode(status, headers)
        self.started = True
        return self.write

    def write(self, data):
        """The imperative write() callable (PEP 3333): sent before it returns."""
        if not PyBytes_Check(data):
            raise TypeError("write() takes bytes, got %r" % type(data).__name__)
        self.send_body(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    cdef int encode(self, object status, object headers) except -1:
        cdef Connection c = self.conn
        cdef const char *p
        cdef const char *v
        cdef Py_ssize_t n, vn, i
        cdef int code
        str_bytes(status, &p, &n)
        if n < 3 or not (is_digit(p[0]) and is_digit(p[1]) and is_digit(p[2])) or (
                n > 3 and p[3] != b' '):
            raise ValueError("invalid WSGI status %r" % (status,))
        for i in range(n):
            if not VALUE_OK[<unsigned char>p[i]] or p[i] == b'\t':
                raise ValueError("invalid character in WSGI status %r" % (status,))
        code = (p[0] - 48) * 100 + (p[1] - 48) * 10 + (p[2] - 48)
        if code < 100:
            raise ValueError("invalid WSGI status %r" % (status,))
        self.status = code
        self.has_cl = self.has_date = self.app_close = False
        self.nheaders = 0
        c.wlen = 0
        c.wput(b"HTTP/1.1 ", 9)
        c.wput(p, n)
        c.wput(b"\r\n", 2)
        if type(headers) is not list:
            headers = list(headers)
        for item in <list>headers:
            name, value = item
            str_bytes(name, &p, &n)
            str_bytes(value, &v, &vn)
            self.add_header(p, n, v, vn)
        self.head_lines = c.wlen
        self.nobody = c.is_head or no_body_status(code)
        return 0

    cdef int add_header(self, const char *p, Py_ssize_t n, const char *v, Py_ssize_t vn) except -1:
        # A CR, LF or NUL in an app's header would split the response (RFC 9112 §11.1
        # response splitting): refuse it, the request becomes a 500.
        cdef Connection c = self.conn
        cdef Py_ssize_t i
        if n == 0:
            raise ValueError("empty WSGI header name")
        for i in range(n):
            if not TCHAR[<unsigned char>p[i]]:
                raise ValueError("invalid WSGI header name %r" % latin1(p, n))
        for i in range(vn):
            if not VALUE_OK[<unsigned char>v[i]]:
                raise ValueError("invalid character in WSGI header %s: %r"
                                 % (latin1(p, n), latin1(v, vn)))
        if n == 14 and ieq(p, b"content-length", 14):
            if self.has_cl:   # two lengths in one response: RFC 9112 §6.3 (5) from our side
                raise ValueError("the app sent Content-Length twice")
            self.cl = parse_decimal(v, vn)
            if self.cl < 0:
                raise ValueError("invalid Content-Length from the app: %r" % latin1(v, vn))
            self.has_cl = True
        elif n == 4 and ieq(p, b"date", 4):
            self.has_date = True
        elif n == 10 and ieq(p, b"connection", 10):
            # hop-by-hop (PEP 3333 forbids it to apps): honour "close", send our own
            if has_token(v, vn, b"close", 5):
                self.app_close = True
            return 0
        elif ((n == 17 and ieq(p, b"transfer-encoding", 17))
              or (n == 10 and ieq(p, b"keep-alive", 10))):
            return 0    # hop-by-hop: the server frames the body itself
        c.wput(p, n)
        c.wput(b": ", 2)
        c.wput(v, vn)
        c.wput(b"\r\n", 2)
        self.nheaders += 1
        return 0

    cdef int finish_head(self, long long known_len) except -1:
        # Framing, RFC 9112 §6.3 from the sender's side: the app's Content-Length; else one we
        # know (a list body, a file); else chunked on a persistent 1.1 connection; else the
        # end of the body is the close of the connection.
        cdef Connection c = self.conn
        cdef char num[32]
        cdef int dl
        cdef const char *date
        c.wlen = self.head_lines
        if self.app_close or _stop:     # a stop that came while the app ran: say close
            c.keep_alive = False
        if not self.has_cl and not no_body_status(self.status):
            if known_len >= 0:
                self.cl = known_len
                self.has_cl = True
                c.wput(b"Content-Length: ", 16)
                c.wput(num, snprintf_ll(num, known_len))
                c.wput(b"\r\n", 2)
                self.nheaders += 1
            elif c.is_head:
                pass
            elif c.keep_alive and c.parser.minor >= 1:
                self.chunked = True
                c.wput(b"Transfer-Encoding: chunked\r\n", 28)
                self.nheaders += 1
            else:
                c.keep_alive = False
        if not self.has_date:
            date = js_date(&dl)
            c.wput(date, dl)
            self.nheaders += 1
        if c.kind != K_UWSGI:
            if not c.keep_alive:
                c.wput(b"Connection: close\r\n", 19)
                self.nheaders += 1
            elif c.parser.minor == 0:
                c.wput(b"Connection: keep-alive\r\n", 24)
                self.nheaders += 1
        c.wput(b"\r\n", 2)
        self.headers_size = c.wlen
        return 0

    cdef int send_body(self, const char *p, Py_ssize_t n) except -1:
        cdef Connection c = self.conn
        cdef iovec iov[4]
        cdef int k = 0
        if not self.started:
            raise RuntimeError("body data before start_response() (PEP 3333)")
        if n == 0:
            return 0    # PEP 3333: headers wait for the first non-empty body bytes
        if self.has_cl and self.body_sent + n > self.cl:
            n = <Py_ssize_t>(self.cl - self.body_sent)   # never more than announced
            c.keep_alive = False
        if self.nobody:
            n = 0
        if not self.sent:
            self.finish_head(-1)
            iov[0].iov_base = c.wbuf
            iov[0].iov_len = c.wlen
            k = 1
        if n > 0 and self.chunked:
            iov[k].iov_base = c.chunk_line
            iov[k].iov_len = snprintf_hex(c.chunk_line, n)
            iov[k + 1].iov_base = <void *>p
            iov[k + 1].iov_len = n
            iov[k + 2].iov_base = <char *>b"\r\n"
            iov[k + 2].iov_len = 2
            k += 3
        elif n > 0:
            iov[k].iov_base = <void *>p
            iov[k].iov_len = n
            k += 1
        self.sent = True
        if k:
            c.send_iov(iov, k)
        self.body_sent += n
        return 0

    cdef int send_list(self, object seq) except -1:
        # The common `return [body]`: the length is known, so Content-Length and the whole
        # response in one writev (PEP 3333 allows computing it when len() is known).
        cdef Connection c = self.conn
        cdef iovec iov[IOV_INLINE]
        cdef Py_ssize_t n = len(seq), i, total = 0
        cdef int k = 1
        if n > IOV_INLINE - 1:
            return 0
        for i in range(n):
            item = seq[i]
            if not PyBytes_Check(item):
                return 0            # the generic path raises the TypeError
            total += PyBytes_GET_SIZE(item)
        if self.has_cl and total != self.cl:
            return 0                # the generic path truncates / closes
        self.finish_head(total)
        iov[0].iov_base = c.wbuf
        iov[0].iov_len = c.wlen
        if not self.nobody:
            for i in range(n):
                item = seq[i]
                if PyBytes_GET_SIZE(item):
                    iov[k].iov_base = PyBytes_AS_STRING(item)
                    iov[k].iov_len = PyBytes_GET_SIZE(item)
                    k += 1
            self.body_sent = total
        self.sent = True
        c.send_iov(iov, k)
        return 1

    cdef int send_file(self, object wrapper) except -1:
        # wsgi.file_wrapper over a regular file: head by writev, body by sendfile(2) from the
        # file's current offset.
        cdef Connection c = self.conn
        cdef struct_stat st
        cdef iovec iov[1]
        cdef long long pos, length
        cdef Py_ssize_t w
        cdef int fd, e
        try:
            fd = wrapper.filelike.fileno()
        except Exception:
            return 0
        if fstat(fd, &st) != 0 or not S_ISREG(st.st_mode):
            return 0
        pos = lseek(fd, 0, 1)
        if pos < 0:
            return 0
        length = st.st_size - pos
        if length < 0:
            length = 0
        if self.has_cl and self.cl < length:
            length = self.cl
        self.finish_head(length)
        iov[0].iov_base = c.wbuf
        iov[0].iov_len = c.wlen
        self.sent = True
        c.send_iov(iov, 1)
        if self.nobody:
            return 1
        while length > 0:
            with nogil:
                w = js_sendfile(c.fd, fd, pos, <size_t>min(length, 1 << 30))
                e = errno
            if w > 0:
                pos += w
                length -= w
                self.body_sent += w
                self.total_sent += w
            elif w == 0:
                break               # the file shrank under us
            elif e == EINTR:
                PyErr_CheckSignals()
            elif e == EAGAIN or e == EWOULDBLOCK:
                c.wait_send_slice()
            else:
                raise _ClientGone(e, os.strerror(e))
        if length > 0:
            c.keep_alive = False
        return 1

    cdef int finish(self) except -1:
        cdef Connection c = self.conn
        cdef iovec iov[2]
        cdef int k = 0
        if not self.started:
            raise RuntimeError("the application returned without calling start_response()")
        if not self.sent:
            self.finish_head(0)
            iov[0].iov_base = c.wbuf
            iov[0].iov_len = c.wlen
            k = 1
            self.sent = True
        elif self.chunked:
            iov[0].iov_base = <char *>b"0\r\n\r\n"   # last-chunk, no trailers (§7.1)
            iov[0].iov_len = 5
            k = 1
        if k:
            c.send_iov(iov, k)
        if self.has_cl and self.body_sent < self.cl and not self.nobody:
            c.keep_alive = False    # the client is still waiting for bytes: end it
        return 0


cdef extern from *:
    """
    static int snprintf_ll(char *out, long long v) { return snprintf(out, 32, "%lld", v); }
    static int snprintf_hex(char *out, Py_ssize_t v) {
        return snprintf(out, 24, "%llx\\r\\n", (unsigned long long)v);
    }
    """
    int snprintf_ll(char *out, long long v) nogil
    int snprintf_hex(char *out, Py_ssize_t v) nogil


# ---------------------------------------------------------------------------------------------
# 9. Connection: the requests of one accepted socket.  The only I/O is recv (fill), sendmsg
#    (send_iov) and sendfile; a non-blocking variant (the greenlet hub, issue 8) overrides
#    fill / send_iov / wait_send_slice and reuses the rest.
# ---------------------------------------------------------------------------------------------
cdef int _stop = 0


def defer_accept(int fd, int seconds):
    """Defer accept() on listening socket fd until a client has sent data (for jailserve.sockets;
    the system call is chosen by the C preprocessor).  Raises OSError when refused."""
    cdef int e = js_defer_accept(fd, seconds)
    if e:
        raise OSError(e, os.strerror(e))


def request_stop():
    """Finish the request in hand, then make serve() return (from a signal handler)."""
    global _stop
    _stop = 1


cdef bytes ERROR_BODY_FMT = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n%sConnection: close\r\n\r\n%s")


@cython.no_gc_clear
cdef class Connection:

    def __cinit__(self, Server server):
        self.server = server
        self.parser = RequestParser(server.cfg.buffer_size, server.cfg.max_vars, "http")
        self.wcap = 1024
        self.wbuf = <char *>malloc(self.wcap)
        if self.wbuf == NULL:
            raise MemoryError()
        self.fd = -1

    def __dealloc__(self):
        free(self.wbuf)

    cdef int wgrow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap = self.wcap if self.wcap > 0 else 1024
        cdef char *nb
        while cap < need:
            cap *= 2
        nb = <char *>realloc(self.wbuf, cap)
        if nb == NULL:
            raise MemoryError()
        self.wbuf = nb
        self.wcap = cap
        return 0

    cdef int wput(self, const char *p, Py_ssize_t n) except -1:
        if self.wlen + n > self.wcap:
            self.wgrow(self.wlen + n)
        memcpy(self.wbuf + self.wlen, p, n)
        self.wlen += n
        return 0

    # -- I/O primitives -------------------------------------------------------------------
    cdef Py_ssize_t fill(self, bint idle) except -2:
        """recv into the parser's buffer.  > 0: bytes read.  idle (between requests): 0 on
        EOF, -1 on timeout or stop; inside a request EOF/errors raise _ClientGone."""
        cdef RequestParser p = self.parser
        cdef Py_ssize_t room = p.make_room(), n
        if room <= 0:       # cannot happen: a full head is a 431 before we get here
            raise _ClientGone("receive buffer full")
        n = self.recv_some(p.buf + p.end, room, idle)
        if n > 0:
            p.end += n
        return n

    cdef Py_ssize_t recv_some(self, char *dst, Py_ssize_t room, bint idle) except -2:
        # The one blocking read.  Blocks in slices of SO_RCVTIMEO (<= 1 s) so that idle time
        # is counted against socket-timeout and a stop request is seen between requests.
        cdef RequestParser p = self.parser
        cdef Py_ssize_t n
        cdef int e = 0, waited = 0
        while True:
            with nogil:
                n = recv(self.fd, dst, room, 0)
                if n < 0:
                    e = errno
            if n > 0:
                return n
            if n == 0:
                if idle:
                    return 0
                raise _ClientGone("client closed the connection inside a request")
            if e == EINTR:
                PyErr_CheckSignals()          # run Python handlers: request_stop() may be one
            elif e == EAGAIN or e == EWOULDBLOCK:
                waited += 1
                if self.server.slices and waited >= self.server.slices:
                    if idle:
                        return -1
                    raise _ClientGone(ETIMEDOUT, "socket-timeout reading the request")
            elif idle:
                return 0
            else:
                raise _ClientGone(e, os.strerror(e))
            # A stop ends a connection only between its requests: one just accepted has been
            # taken from the backlog, and its client is owed an answer (the reload race).
            if idle and _stop and p.end == p.start and self.requests > 0:
                return -1

    cdef bytes read_direct(self, Py_ssize_t want):
        # wsgi.input.read(n) of a Content-Length body: what is buffered, then recv straight
        # into the result (no copy through the 4 KiB buffer, no join).
        cdef RequestParser p = self.parser
        cdef Py_ssize_t have = p.end - p.start, got
        cdef bytes out
        cdef char *dst
        if want > p.remaining:
            want = <Py_ssize_t>p.remaining
        if have > want:
            have = want
        out = PyBytes_FromStringAndSize(NULL, want)
        dst = PyBytes_AS_STRING(out)
        memcpy(dst, p.buf + p.start, have)
        p.start += have
        p.remaining -= have
        got = have
        if got < want and p.expect_continue and not self.continue_sent and not self.resp.sent:
            self.send_continue()
        while got < want:
            got += self.recv_some(dst + got, want - got, False)
        p.remaining -= got - have
        return out

    cdef int wait_send_slice(self) except -1:
        # A send blocked for one SO_SNDTIMEO slice; give up after socket-timeout.
        self.send_waited += 1
        if self.server.slices and self.send_waited >= self.server.slices:
            raise _ClientGone(ETIMEDOUT, "socket-timeout writing the response")
        return 0

    cdef int send_iov(self, iovec *iov, int n) except -1:
        cdef Py_ssize_t w
        cdef int e = 0
        self.send_waited = 0
        while n > 0:
            with nogil:
                w = js_sendv(self.fd, iov, n)
                if w < 0:
                    e = errno
            if w < 0:
                if e == EINTR:
                    PyErr_CheckSignals()
                    continue
                if e == EAGAIN or e == EWOULDBLOCK:
                    self.wait_send_slice()
                    continue
                raise _ClientGone(e, os.strerror(e))
            self.resp.total_sent += w
            while n > 0 and <size_t>w >= iov[0].iov_len:
                w -= iov[0].iov_len
                iov += 1
                n -= 1
            if n > 0:
                iov[0].iov_base = <char *>iov[0].iov_base + w
                iov[0].iov_len -= w
        return 0

    cdef int send_continue(self) except -1:
        # RFC 9110 §10.1.1: the app asked for the body, the client waits for 100 first.
        cdef iovec iov[1]
        self.continue_sent = True
        iov[0].iov_base = <char *>b"HTTP/1.1 100 Continue\r\n\r\n"
        iov[0].iov_len = 25
        return self.send_iov(iov, 1)

    cdef bytes body_chunk(self, Py_ssize_t maxlen):
        # Next piece of the request body for wsgi.input; b"" at its end.
        cdef RequestParser p = self.parser
        cdef Py_ssize_t off, ln
        cdef int r
        while True:
            r = p.body_next(maxlen, &off, &ln)
            if r == R_DATA:
                return PyBytes_FromStringAndSize(p.buf + off, ln)
            if r == R_DONE:
                return b""
            if p.expect_continue and not self.continue_sent and not self.resp.sent:
                self.send_continue()
            self.fill(False)

    cdef void linger_close(self):
        if self.fd >= 0:
            with nogil:
                js_linger(self.fd)

    # -- one connection, one request ------------------------------------------------------
    cdef int serve_fd(self, int fd, int kind, dict base, str addr, str port) except -1:
        cdef RequestParser p = self.parser
        self.fd = fd
        self.kind = kind
        self.base = base
        self.remote_addr = addr
        self.remote_port = port
        self.requests = 0
        p.reset()
        p.proto = PROTO_UWSGI if kind == K_UWSGI else PROTO_HTTP
        try:
            while self.one_request():
                pass
        except HTTPError as exc:
            # RFC 9112 §9.6 / issue 3: answer the error, then close: nothing after it is read.
            if kind != K_UWSGI:       # uWSGI drops a bad uwsgi packet without a response
                try:
                    self.send_error(exc.status, exc.reason)
                except OSError:
                    pass
            self.linger_close()
        except OSError:
            pass                      # the client went away or timed out
        finally:
            self.fd = -1
            close(fd)
        return 0

    cdef int read_head(self) except -1:
        # A head that has started must be complete within socket-timeout in total: a client
        # dripping a byte per second would otherwise hold a sync worker forever (each recv
        # alone is within the timeout).  Between requests only the idle limit applies.
        cdef RequestParser p = self.parser
        cdef uint64_t first = 0, now
        cdef double budget = self.server.cfg.socket_timeout
        while True:
            if p.try_head() == R_HEAD:
                return 1
            if p.state == ST_CLOSED:
                return 0
            if p.end > p.start and budget > 0:
                now = js_monotonic_ns()
                if first == 0:
                    first = now
                elif now - first > <uint64_t>(budget * 1e9):
                    return 0
            if self.fill(True) <= 0:
                return 0

    cdef int one_request(self) except -1:
        """Serve one request; 1 when the connection may carry another."""
        if not self.read_head():
            return 0
        return self.request_ready()

    cdef int request_ready(self) except -1:
        # The rest of one_request once a head is parsed (the greenlet hub parses heads itself
        # and hands a core a connection whose head is ready).
        cdef Server srv = self.server
        cdef uint64_t t0
        cdef double wall = 0.0
        t0 = js_monotonic_ns()
        srv.slot_begin(t0)
        if srv.cfg.log is not None:
            wall = js_wallclock()
        self.resp = Response.__new__(Response)
        self.resp.conn = self
        self.continue_sent = False
        self.keep_alive = (self.kind == K_HTTP11 and self.parser.keep_alive and not _stop
                           and (srv.cfg.max_requests == 0
                                or srv.served + 1 < srv.cfg.max_requests))
        env = None
        try:
            env = self.make_environ()
            self.run_app(env)
        finally:
            self.requests += 1
            srv.served += 1
            srv.slot_end()
            if srv.cfg.log is not None and env is not None:
                self.log_request(env, t0, wall)
        if self.keep_alive and not self.parser.body_done():
            self.keep_alive = self.discard_body()
        if not self.keep_alive and self.parser.end > self.parser.start:
            self.linger_close()
        return self.keep_alive and not _stop

    cdef bint discard_body(self) except -1:
        # The app left body bytes unread.  Keep the connection only if the rest is cheap to
        # skip: already buffered, or a small Content-Length remainder still in flight (a
        # client may send head and body in two segments).  A client still waiting for
        # 100-continue, or a large/chunked remainder, gets the connection closed instead
        # (RFC 9110 §10.1.1 allows either).
        cdef RequestParser p = self.parser
        if p.expect_continue and not self.continue_sent:
            return False
        try:
            while not p.skip_buffered_body():
                if p.chunked or p.remaining > DISCARD_MAX:
                    return False
                self.fill(False)
        except (OSError, HTTPError):
            return False
        return True

    cdef dict make_environ(self):
        cdef RequestParser p = self.parser
        cdef dict env
        cdef InputStream inp = InputStream.__new__(InputStream)
        inp.conn = self
        if p.proto == PROTO_HTTP:
            env = http_environ(p, self.base)
            env["REMOTE_ADDR"] = self.remote_addr
            env["REMOTE_PORT"] = self.remote_port
            self.is_head = p.method_len == 4 and memcmp(p.buf + p.method_off, b"HEAD", 4) == 0
        else:
            env = uwsgi_environ(p, self.base)
            env.setdefault("REMOTE_ADDR", self.remote_addr)
            env.setdefault("REMOTE_PORT", self.remote_port)
            self.is_head = env.get("REQUEST_METHOD") == "HEAD"
        env["wsgi.input"] = inp
        return env

    cdef int run_app(self, dict env) except -1:
        cdef Response resp = self.resp
        try:
            result = self.server.app(env, resp)
            self.app_step()
        except HTTPError as exc:
            if not resp.sent:
                self.send_error(exc.status, exc.reason)
            self.keep_alive = False
            return 0
        except _ClientGone:
            raise
        except Exception:
            return self.app_failed(env)
        try:
            try:
                self.consume(result)
            finally:
                if type(result) is not list:
                    close = getattr(result, "close", None)   # PEP 3333: always called
                    if close is not None:
                        close()
        except HTTPError as exc:
            if not resp.sent:                 # a bad chunked body seen through wsgi.input
                self.send_error(exc.status, exc.reason)
            self.keep_alive = False           # the parser stays failed: nothing more is read
            return 0
        except _ClientGone:
            raise
        except Exception:
            return self.app_failed(env)
        return 0

    cdef int consume(self, object result) except -1:
        cdef Response resp = self.resp
        t = type(result)
        if resp.started and not resp.sent:
            if t is list or t is tuple:
                if resp.send_list(result):
                    return resp.finish()
            elif t is FileWrapper:
                if resp.send_file(result):
                    return resp.finish()
        for chunk in result:
            if not PyBytes_Check(chunk):
                raise TypeError("the WSGI iterable yielded %r, not bytes" % type(chunk).__name__)
            resp.send_body(PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk))
            self.app_step()
        return resp.finish()

    cdef int app_step(self) except -1:
        # After the app returns and after each chunk it yields: the greenlet hub suspends
        # here for a wait the app registered (uwsgi.async_sleep, wait_fd_*).  Sync: nothing.
        return 0

    cdef int app_failed(self, dict env) except -1:
        errors = env.get("wsgi.errors") or sys.stderr
        try:
            _traceback.print_exc(file=errors)
        except Exception:
            pass
        self.keep_alive = False
        if not self.resp.sent:
            self.send_error(500, "Internal Server Error")
        return 0

    cdef int send_error(self, int status, str reason) except -1:
        # RFC 9110 §6.6.1: an origin server with a clock MUST send Date in 4xx responses
        cdef int dl
        cdef const char *date = js_date(&dl)
        cdef bytes r = reason.encode("latin-1")
        cdef bytes msg = ERROR_BODY_FMT % (status, r, len(r) + 1,
                                           PyBytes_FromStringAndSize(date, dl), r + b"\n")
        cdef iovec iov[1]
        self.keep_alive = False
        if self.resp is None:
            self.resp = Response.__new__(Response)
            self.resp.conn = self
        self.resp.status = status
        self.resp.sent = True
        self.resp.headers_size = len(msg) - len(r) - 1
        self.resp.nheaders = 4
        iov[0].iov_base = PyBytes_AS_STRING(msg)
        iov[0].iov_len = PyBytes_GET_SIZE(msg)
        return self.send_iov(iov, 1)

    cdef int log_request(self, dict env, uint64_t t0, double wall) except -1:
        # One call per request after the response (docs/internals.md lists the fields).
        cdef Response r = self.resp
        cdef long long us = <long long>((js_monotonic_ns() - t0) // 1000)
        nvars = len(env) - self.server.nonvars
        try:
            self.server.cfg.log(
                env.get("REQUEST_METHOD", ""), env.get("REQUEST_URI", env.get("PATH_INFO", "")),
                env.get("SERVER_PROTOCOL", ""), r.status, r.body_sent, us, self.remote_addr
                or env.get("REMOTE_ADDR", ""), r.nheaders, r.headers_size, nvars,
                self.parser.vars_bytes, wall, env)
        except Exception:
            try:
                _traceback.print_exc(file=self.server.cfg.errors)
            except Exception:
                pass
        return 0


# ---------------------------------------------------------------------------------------------
# 10. Server: accept on the listening sockets, hand each connection to the Connection.
# ---------------------------------------------------------------------------------------------
cdef dict KINDS = {"http": K_HTTP, "http11": K_HTTP11, "uwsgi": K_UWSGI}


cdef tuple thunder_lock():
    # (accept_lock, accept_unlock) of jailserve.locks when `thunder-lock` is on, bound once per
    # serve(); (None, None) otherwise (and for _core used on its own, without jailserve.locks).
    try:
        from jailserve import locks
    except ImportError:
        return None, None
    if not locks.thunder_lock_enabled():
        return None, None
    return locks.accept_lock, locks.accept_unlock


@cython.no_gc_clear
cdef class Server:

    def __cinit__(self, listeners, app, ServeConfig cfg):
        self.socks = list(listeners)
        self.nlisten = len(self.socks)
        if self.nlisten == 0 or self.nlisten > MAX_LISTENERS:
            raise ValueError("serve() needs 1 to %d listeners" % MAX_LISTENERS)
        self.fds = <int *>malloc(sizeof(int) * self.nlisten)
        self.kinds = <int *>malloc(sizeof(int) * self.nlisten)
        self.saved_flags = <int *>malloc(sizeof(int) * self.nlisten)
        if self.fds == NULL or self.kinds == NULL or self.saved_flags == NULL:
            raise MemoryError()
        for i in range(self.nlisten):
            self.saved_flags[i] = -1
        self.app = app
        self.cfg = cfg
        self.bases = []
        if cfg.socket_timeout > 0:
            self.slice_s = min(1.0, cfg.socket_timeout)
            self.slices = max(1, <int>(cfg.socket_timeout / self.slice_s + 0.999))
        else:
            self.slice_s = 1.0
            self.slices = 0
        self.conn = Connection(self)

    def __dealloc__(self):
        free(self.fds)
        free(self.kinds)
        free(self.saved_flags)

    cdef dict base_environ(self, sock, int kind):
        # PEP 3333 required keys that do not change per request; SERVER_NAME is the configured
        # name (the machine's hostname, as uWSGI), SERVER_PORT the listening port ("80" for a
        # unix socket, as uWSGI).
        addr = sock.getsockname()
        port = str(addr[1]) if isinstance(addr, tuple) and len(addr) >= 2 else "80"
        cdef dict env = {
            "SERVER_NAME": self.cfg.server_name, "SERVER_PORT": port, "SCRIPT_NAME": "",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.multithread": False,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.errors": self.cfg.errors,
            "wsgi.file_wrapper": FileWrapper, "wsgi.input_terminated": True,
        }
        env.update(self.cfg.environ)
        self.nonvars = sum(1 for k in env if k.startswith("wsgi.")) + 1 + (
            len(self.cfg.environ) if kind == K_UWSGI else 0)
        return env

    cdef int setup(self) except -1:
        cdef int i, fd
        for i in range(self.nlisten):
            item = self.socks[i]
            sock, kind = item
            if kind not in KINDS:
                raise ValueError("listener kind must be http, http11 or uwsgi, not %r" % (kind,))
            fd = sock.fileno()
            self.fds[i] = fd
            self.kinds[i] = KINDS[kind]
            self.bases.append(self.base_environ(sock, self.kinds[i]))
        for i in range(self.nlisten):
            fd = self.fds[i]
            # Non-blocking listeners: a worker that loses the accept race gets EAGAIN and
            # goes back to poll() instead of blocking in accept() (several workers share one
            # listening socket).  Options set here are inherited by accepted sockets on Linux
            # and FreeBSD (checked on the first connection).
            self.saved_flags[i] = js_set_nonblock(fd)
            if self.saved_flags[i] < 0:
                raise OSError(errno, os.strerror(errno))
            js_nodelay(fd)
            js_set_timeouts(fd, self.slice_s)
        if self.cfg.status_slot is not None:
            PyObject_GetBuffer(self.cfg.status_slot, &self.slot_view, PyBUF_WRITABLE)
            if self.slot_view.len < 16:
                PyBuffer_Release(&self.slot_view)
                raise ValueError("status_slot must be a writable buffer of at least 16 bytes")
            self.slot = <char *>self.slot_view.buf
        return 0

    cdef void teardown(self):
        cdef int i
        for i in range(self.nlisten):
            js_restore_flags(self.fds[i], self.saved_flags[i])
            self.saved_flags[i] = -1
        if self.slot != NULL:
            self.slot_end()
            self.slot = NULL
            PyBuffer_Release(&self.slot_view)

    cdef void slot_begin(self, uint64_t t0):
        # harakiri: the master reads u64 start-ns (0 = idle) and u64 requests done; without
        # a master, uWSGI's alarm(harakiri) per request (the worker's SIGALRM handler acts)
        if self.slot != NULL:
            memcpy(self.slot, &t0, 8)
        if self.cfg.harakiri_alarm:
            alarm(self.cfg.harakiri_alarm)

    cdef void slot_end(self):
        cdef uint64_t zero = 0, done = <uint64_t>self.served
        if self.cfg.harakiri_alarm:
            alarm(0)
        if self.slot != NULL:
            memcpy(self.slot, &zero, 8)
            memcpy(self.slot + 8, &done, 8)

    cdef int accept_one(self, int *idx, char *addr, int *port) except -2:
        cdef int k, i, c, e = 0, r
        while True:
            if _stop:
                return -1
            for k in range(self.nlisten):
                i = (self.rr + k) % self.nlisten
                with nogil:
                    c = js_accept(self.fds[i], addr, 64, port, 0)
                    if c < 0:
                        e = errno
                if c >= 0:
                    self.rr = i + 1
                    idx[0] = i
                    return c
                if e == EMFILE or e == ENFILE or e == ENOBUFS or e == ENOMEM:
                    with nogil:
                        js_poll_in(self.fds, 0, 10)   # out of fds: back off, do not spin
                elif not (e == EAGAIN or e == EWOULDBLOCK or e == ECONNABORTED
                          or e == EPROTO or e == EINTR):
                    raise OSError(e, os.strerror(e))
            with nogil:
                r = js_poll_in(self.fds, self.nlisten, 1000)
                if r < 0:
                    e = errno
            if r < 0 and e != EINTR:
                raise OSError(e, os.strerror(e))
            if r <= 0:
                PyErr_CheckSignals()      # EINTR or a 1 s tick: let handlers set the flag

    cdef long long run(self) except -1:
        cdef char addr[64]
        cdef int port = 0, idx = 0, fd
        cdef ServeConfig cfg = self.cfg
        lock = unlock = None
        try:
            self.setup()            # inside: a failure half-way still restores the fd flags
            lock, unlock = thunder_lock()
            while not _stop and (cfg.max_requests == 0 or self.served < cfg.max_requests):
                if lock is None:
                    fd = self.accept_one(&idx, addr, &port)
                else:
                    # thunder-lock (docs/locks.md): one worker at a time polls and accepts;
                    # False = a signal ran its handler: look at the stop flag again
                    if not lock():
                        continue
                    try:
                        fd = self.accept_one(&idx, addr, &port)
                    finally:
                        unlock()
                if fd < 0:
                    break
                self.conn_options(fd)
                if addr[0]:
                    a = latin1(addr, strlen(addr))
                    p = str(port)
                else:
                    a = ""
                    p = ""
                self.conn.serve_fd(fd, self.kinds[idx], self.bases[idx], a, p)
        finally:
            self.teardown()
        return self.served

    cdef int conn_options(self, int fd) except -1:
        if not self.opts_checked:
            self.opts_checked = True
            self.opts_per_conn = not js_has_timeouts(fd)
        if self.opts_per_conn:
            js_set_timeouts(fd, self.slice_s)
            js_nodelay(fd)
        return 0


# ---------------------------------------------------------------------------------------------
# 11. The public entry points
# ---------------------------------------------------------------------------------------------
cdef class ServeConfig:
    """What serve() needs from the config; see docs/internals.md (`_core.pyx`)."""

    def __init__(self, *, Py_ssize_t buffer_size=4096, double socket_timeout=4.0,
                 long long max_requests=0, server_name=None, log=None, status_slot=None,
                 int max_vars=100, errors=None, environ=None, unsigned int harakiri_alarm=0):
        if not 256 <= buffer_size <= (1 << 20):
            raise ValueError("buffer_size must be between 256 and 1048576")
        if socket_timeout < 0:
            raise ValueError("socket_timeout must be >= 0 (0: no timeout)")
        if max_requests < 0:
            raise ValueError("max_requests must be >= 0 (0: unlimited)")
        if not 1 <= max_vars <= 65535:
            raise ValueError("max_vars must be between 1 and 65535")
        if log is not None and not callable(log):
            raise TypeError("log must be callable or None")
        self.buffer_size = buffer_size
        self.socket_timeout = socket_timeout
        self.max_requests = max_requests
        self.server_name = _socket.gethostname() if server_name is None else str(server_name)
        self.log = log
        self.status_slot = status_slot
        self.max_vars = max_vars
        self.errors = sys.stderr if errors is None else errors
        self.environ = dict(environ) if environ else {}
        self.harakiri_alarm = harakiri_alarm

    def __repr__(self):
        return ("ServeConfig(buffer_size=%d, socket_timeout=%r, max_requests=%d, "
                "server_name=%r, max_vars=%d)" % (self.buffer_size, self.socket_timeout,
                                                  self.max_requests, self.server_name,
                                                  self.max_vars))


def serve(listeners, app, ServeConfig cfg=None):
    """Serve WSGI `app` on `listeners` [(socket, "http" | "http11" | "uwsgi"), ...] until
    request_stop(), cfg.max_requests or an exception from a signal handler.  Returns the number
    of requests served.

    With a keep-alive (http11) listener the sync hub runs: the event loop of section 12 with
    the app called on its own stack, one request at a time, so idle keep-alive connections
    wait in epoll/kqueue instead of holding the worker.  Otherwise (every connection closes
    after its response) the plain accept loop of section 10."""
    cdef Hub hub
    if cfg is None:
        cfg = ServeConfig()
    listeners = list(listeners)
    if any(len(item) == 2 and item[1] == "http11" for item in listeners):
        hub = Hub(listeners, app, cfg)
        hub.sync = True
        hub.max_cores = 1
        return hub.run_hub()
    return Server(listeners, app, cfg).run()


# ---------------------------------------------------------------------------------------------
# 12. The greenlet hub (issue 8; uWSGI `async = N` + `greenlet`, UWSGI_SEMANTICS §11).
#
#     One hub greenlet (the caller of serve_async) runs an epoll (Linux) / kqueue (FreeBSD)
#     loop over non-blocking sockets.  It accepts, reads and parses request heads itself, so
#     an idle keep-alive connection or a slowloris costs a Slot (and, while a head is partly
#     in, a pooled AsyncConnection) but no greenlet.  A connection whose head is complete
#     goes to one of at most N core greenlets, or waits in a FIFO when all N are busy.  A
#     core runs the unchanged request flow (request_ready: environ, app, Response); its reads
#     and writes are AsyncConnection.recv_some / wait_send_slice, which switch to the hub on
#     EAGAIN, and the app's own waits (uwsgi.async_sleep, wait_fd_read/write, suspend) switch
#     there too.  Connection sockets are registered once (when they first have to wait),
#     edge-triggered for read and write: every reader or writer tries the system call first
#     and waits only after EAGAIN, which guarantees the next edge.  Timeouts: socket-timeout
#     for an idle connection, for a whole head once its first byte is in, and for each
#     read/write wait inside a request; checked by a sweep once a second.  App timers are a
#     heap.
#
#     The sync hub (serve() with a keep-alive listener) is this loop with `sync` set and no
#     greenlet: dispatch() serves a complete head at once on the loop's own stack, and a wait
#     inside a request polls that one socket (wait_blocking).
# ---------------------------------------------------------------------------------------------
cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/epoll.h>
    #elif defined(__FreeBSD__) || defined(__APPLE__)
    #include <sys/event.h>
    #define JS_KQUEUE 1
    #endif
    #include <stdint.h>

    typedef struct { uint64_t data; int rd; int wr; } js_ev;
    enum { JS_P_LISTENER = 1, JS_P_CONN = 2, JS_P_READ = 3, JS_P_WRITE = 4 };
    #define JS_MAX_EVENTS 256

    static int js_poller_new(void) {
    #if defined(__linux__)
        return epoll_create1(EPOLL_CLOEXEC);
    #elif defined(JS_KQUEUE)
        int k = kqueue();
        if (k >= 0) fcntl(k, F_SETFD, FD_CLOEXEC);
        return k;
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }

    /* how: JS_P_LISTENER level-triggered read (EPOLLEXCLUSIVE: one worker woken per
       connection); JS_P_CONN edge-triggered read+write, registered once per connection;
       JS_P_READ / JS_P_WRITE one-shot (an app's wait_fd_read / wait_fd_write). */
    static int js_poller_add(int pfd, int fd, uint64_t data, int how) {
    #if defined(__linux__)
        struct epoll_event ev;
        memset(&ev, 0, sizeof(ev));
        ev.data.u64 = data;
        switch (how) {
        case JS_P_LISTENER:
            ev.events = EPOLLIN;
    #ifdef EPOLLEXCLUSIVE
            ev.events |= EPOLLEXCLUSIVE;
    #endif
            break;
        case JS_P_CONN: ev.events = EPOLLIN | EPOLLOUT | EPOLLET; break;
        case JS_P_READ: ev.events = EPOLLIN | EPOLLONESHOT; break;
        default: ev.events = EPOLLOUT | EPOLLONESHOT; break;
        }
        return epoll_ctl(pfd, EPOLL_CTL_ADD, fd, &ev);
    #elif defined(JS_KQUEUE)
        struct kevent kev[2];
        int n = 0;
        void *ud = (void *)(uintptr_t)data;
        switch (how) {
        case JS_P_LISTENER: EV_SET(&kev[n++], fd, EVFILT_READ, EV_ADD, 0, 0, ud); break;
        case JS_P_CONN:
            EV_SET(&kev[n++], fd, EVFILT_READ, EV_ADD | EV_CLEAR, 0, 0, ud);
            EV_SET(&kev[n++], fd, EVFILT_WRITE, EV_ADD | EV_CLEAR, 0, 0, ud);
            break;
        case JS_P_READ: EV_SET(&kev[n++], fd, EVFILT_READ, EV_ADD | EV_ONESHOT, 0, 0, ud); break;
        default: EV_SET(&kev[n++], fd, EVFILT_WRITE, EV_ADD | EV_ONESHOT, 0, 0, ud); break;
        }
        return kevent(pfd, kev, n, NULL, 0, NULL);
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }

    /* Remove a registration (errors ignored by the callers: a one-shot that fired is gone
       on kqueue, a closed fd is gone everywhere). */
    static int js_poller_del(int pfd, int fd, int how) {
    #if defined(__linux__)
        struct epoll_event ev;
        memset(&ev, 0, sizeof(ev));
        return epoll_ctl(pfd, EPOLL_CTL_DEL, fd, &ev);
    #elif defined(JS_KQUEUE)
        struct kevent kev[2];
        int n = 0;
        if (how != JS_P_WRITE) EV_SET(&kev[n++], fd, EVFILT_READ, EV_DELETE, 0, 0, NULL);
        if (how == JS_P_CONN || how == JS_P_WRITE)
            EV_SET(&kev[n++], fd, EVFILT_WRITE, EV_DELETE, 0, 0, NULL);
        return kevent(pfd, kev, n, NULL, 0, NULL);
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }

    static int js_poller_wait(int pfd, js_ev *out, int max, int timeout_ms) {
        int n, i;
        if (max > JS_MAX_EVENTS) max = JS_MAX_EVENTS;
    #if defined(__linux__)
        struct epoll_event evs[JS_MAX_EVENTS];
        n = epoll_wait(pfd, evs, max, timeout_ms);
        for (i = 0; i < n; i++) {
            uint32_t e = evs[i].events;
            out[i].data = evs[i].data.u64;
            out[i].rd = (e & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) != 0;
            out[i].wr = (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
        }
        return n;
    #elif defined(JS_KQUEUE)
        struct kevent evs[JS_MAX_EVENTS];
        struct timespec ts;
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        n = kevent(pfd, NULL, 0, evs, max, timeout_ms < 0 ? NULL : &ts);
        for (i = 0; i < n; i++) {
            out[i].data = (uint64_t)(uintptr_t)evs[i].udata;
            out[i].rd = evs[i].filter == EVFILT_READ;
            out[i].wr = evs[i].filter == EVFILT_WRITE;
        }
        return n;
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }
    """
    ctypedef struct js_ev:
        uint64_t data
        int rd
        int wr
    int js_poller_new() nogil
    int js_poller_add(int pfd, int fd, uint64_t data, int how) nogil
    int js_poller_del(int pfd, int fd, int how) nogil
    int js_poller_wait(int pfd, js_ev *out, int max, int timeout_ms) nogil
    int JS_P_LISTENER, JS_P_CONN, JS_P_READ, JS_P_WRITE, JS_MAX_EVENTS

# greenlet is imported by the first serve_async(), not with _core: a sync worker never needs
# it, and it brings libstdc++ into every process (about 1 MiB of the master's memory).  An
# async config imports it while it is planned (greenlet_hub.plan_async), before any jail.
_greenlet_mod = None


cdef object greenlet_module():
    global _greenlet_mod
    if _greenlet_mod is None:
        try:
            import greenlet
        except ImportError:
            raise RuntimeError("async mode needs the greenlet package (pip install greenlet)") from None
        _greenlet_mod = greenlet
    return _greenlet_mod

from collections import deque as _deque
from heapq import heappush as _heappush, heappop as _heappop

# what an event's data says: the kind in the top bits, the fd (or listener index) below;
# 32 bits in all, so it fits kqueue's udata on any ABI
DEF TAG_SHIFT = 28
DEF TAG_LISTENER = 1
DEF TAG_CONN = 2
DEF TAG_APP = 3
DEF FD_MASK = 0x0fffffff

cdef enum:
    S_IDLE = 0      # hub-owned, nothing buffered, no AsyncConnection
    S_HEAD = 1      # hub-owned, part of a head buffered in its AsyncConnection
    S_QUEUED = 2    # a complete head (or a parse error) waiting for a core
    S_CORE = 3      # a core serves it
    S_CLOSED = 4

cdef enum:
    W_NONE = 0
    W_READ = 1
    W_WRITE = 2

cdef enum:
    WAKE_READY = 0
    WAKE_TIMEOUT = 1

cdef Hub _hub = None        # the running hub (the `uwsgi` module's async calls go to it)


@cython.final
@cython.freelist(64)
cdef class Slot:
    """One accepted connection as the hub sees it, for its whole life (idle or busy)."""

    def __repr__(self):
        return "<Slot fd=%d state=%d>" % (self.fd, self.state)


@cython.no_gc_clear
cdef class AsyncConnection(Connection):
    """A Connection whose reads and writes switch to the hub instead of blocking."""

    def __cinit__(self, Server server):
        self.hub = <Hub>server
        self.app_fds = []
        self.app_timeout = -1.0
        self.ready = -1

    cdef Py_ssize_t recv_some(self, char *dst, Py_ssize_t room, bint idle) except -2:
        # idle (the hub reading a head): -1 = nothing more now, 0 = EOF or error.  Inside a
        # request (a core): wait for the next read edge; EOF and errors raise _ClientGone.
        cdef Py_ssize_t n
        cdef int e
        while True:
            n = recv(self.fd, dst, room, 0)
            if n > 0:
                if n < room:
                    # a short read emptied the socket: whatever comes next brings a new edge,
                    # so no extra recv (that would only see EAGAIN) is needed to re-arm
                    self.slot.readable = False
                return n
            if n == 0:
                if idle:
                    return 0
                raise _ClientGone("client closed the connection inside a request")
            e = errno
            if e == EINTR:
                PyErr_CheckSignals()
            elif e == EAGAIN or e == EWOULDBLOCK:
                self.slot.readable = False
                if idle:
                    return -1
                self.wait_conn(W_READ)
            elif idle:
                return 0
            else:
                raise _ClientGone(e, os.strerror(e))

    cdef int wait_send_slice(self) except -1:
        # send_iov and send_file call this after EAGAIN: wait for the write edge.
        return self.wait_conn(W_WRITE)

    cdef int wait_conn(self, int ev) except -1:
        cdef Slot s = self.slot
        cdef Hub hub = self.hub
        if hub.sync:
            return self.wait_blocking(ev)
        hub.watch(s)
        s.wait_ev = ev
        if hub.timeout_ns:
            s.deadline = js_monotonic_ns() + hub.timeout_ns
        r = hub.hub_switch()
        hub.cur = self
        s.wait_ev = W_NONE
        s.deadline = 0
        if r is not None and <int>r == WAKE_TIMEOUT:
            raise _ClientGone(ETIMEDOUT, "socket-timeout reading the request" if ev == W_READ
                              else "socket-timeout writing the response")
        return 0

    cdef int wait_blocking(self, int ev) except -1:
        # The sync hub (no greenlets): the request in hand owns the process, so wait for its
        # socket right here, socket-timeout at most, in slices of <= 1 s so a signal handler
        # runs in time (a stop still lets this request finish, as in the sync loop).
        cdef Hub hub = self.hub
        cdef uint64_t deadline = 0, now
        cdef int r, e = 0, ms
        if hub.timeout_ns:
            deadline = js_monotonic_ns() + hub.timeout_ns
        while True:
            ms = 1000
            if deadline:
                now = js_monotonic_ns()
                if now >= deadline:
                    raise _ClientGone(ETIMEDOUT, "socket-timeout reading the request"
                                      if ev == W_READ else "socket-timeout writing the response")
                if deadline - now < 1000000000:
                    ms = <int>((deadline - now) // 1000000) + 1
            with nogil:
                r = js_poll_one(self.fd, ev == W_WRITE, ms)
                if r < 0:
                    e = errno
            if r > 0:
                return 0
            if r < 0 and e != EINTR:
                raise _ClientGone(e, os.strerror(e))
            PyErr_CheckSignals()

    cdef int app_step(self) except -1:
        if self.app_pending:
            self.app_suspend()
        return 0

    cdef int app_suspend(self) except -1:
        # uwsgi.suspend(): wait for what the app registered (an fd, a timeout), or, with
        # nothing registered, let every other ready core run once (a plain yield).
        cdef Hub hub = self.hub
        cdef uint64_t due
        self.ready = -1
        if not self.app_pending:
            hub.runq.append(self)
            hub.hub_switch()
            hub.cur = self
            return 0
        self.token += 1
        if self.app_timeout >= 0:
            due = js_monotonic_ns() + <uint64_t>(self.app_timeout * 1e9)
            hub.seq += 1
            _heappush(hub.timers, (due, hub.seq, self, self.token))
        self.app_waiting = True
        try:
            hub.hub_switch()
        finally:
            hub.cur = self
            self.app_reset()
        return 0

    cdef void app_reset(self):
        # The wait is over (or the request ended with one still registered: an exception
        # between wait_fd_read and suspend): forget it, so the next request starts clean.
        cdef Hub hub = self.hub
        self.app_waiting = False
        self.app_pending = False
        self.app_timeout = -1.0
        self.token += 1                     # a timer still in the heap is now stale
        if self.app_fds:
            for fd in self.app_fds:
                js_poller_del(hub.pfd, <int>fd, JS_P_READ)
                hub.appfds.pop(fd, None)
            self.app_fds = []

    cdef int app_wait_fd(self, int fd, int how, double timeout) except -1:
        cdef Hub hub = self.hub
        if fd < 0 or fd > FD_MASK:
            raise ValueError("invalid file descriptor %d" % fd)
        if fd in hub.appfds:
            raise ValueError("file descriptor %d is already waited on" % fd)
        if js_poller_add(hub.pfd, fd, (<uint64_t>TAG_APP << TAG_SHIFT) | <uint64_t>fd, how) < 0:
            raise OSError(errno, os.strerror(errno))
        hub.appfds[fd] = self
        self.app_fds.append(fd)
        self.app_pending = True
        if timeout > 0 and (self.app_timeout < 0 or timeout < self.app_timeout):
            self.app_timeout = timeout
        return 0


@cython.no_gc_clear
cdef class Hub(Server):
    """serve_async(): the event loop, the cores, the FIFO, the timers."""

    def __dealloc__(self):
        free(self.evbuf)

    # -- the loop ---------------------------------------------------------------------------
    cdef long long run_hub(self) except -1:
        global _hub
        cdef int i, n, e = 0, tmo
        cdef uint64_t now, data
        cdef int tag, v
        cdef Slot s
        cdef js_ev *evs = <js_ev *>malloc(sizeof(js_ev) * JS_MAX_EVENTS)
        if evs == NULL:
            raise MemoryError()
        free(self.evbuf)
        self.evbuf = evs
        if not self.sync:
            gm = greenlet_module()
            self.greenlet_cls = gm.greenlet
            self.hub_g = gm.getcurrent()
            self.hub_switch = self.hub_g.switch
            self.core_run = self._core_run
        self.slots = []
        self.appfds = {}
        self.free_cores = []
        self.fifo = _deque()
        self.pending = []
        self.runq = []
        self.timers = []
        self.pool = []
        self.pfd = -1
        self.timeout_ns = <uint64_t>(self.cfg.socket_timeout * 1e9)
        if self.max_cores < 1:
            raise ValueError("async mode needs at least 1 core")
        if not self.sync:
            _hub = self         # the uwsgi module's async calls work only in async mode
        try:
            self.setup()
            self.pfd = js_poller_new()
            if self.pfd < 0:
                raise OSError(errno, os.strerror(errno))
            self.listen_on()
            self.last_sweep = js_monotonic_ns()
            while True:
                PyErr_CheckSignals()
                if self.accepting and (_stop or (self.cfg.max_requests
                                                 and self.served >= self.cfg.max_requests)):
                    self.stop_accepting()
                if not self.accepting and self.busy == 0 and not self.fifo and self.nconns == 0:
                    break
                tmo = self.next_timeout()
                with nogil:
                    n = js_poller_wait(self.pfd, evs, JS_MAX_EVENTS, tmo)
                    if n < 0:
                        e = errno
                if n < 0:
                    if e == EINTR:
                        continue
                    raise OSError(e, os.strerror(e))
                for i in range(n):
                    data = evs[i].data
                    tag = <int>(data >> TAG_SHIFT)
                    v = <int>(data & FD_MASK)
                    if tag == TAG_CONN:
                        if v >= len(self.slots):
                            continue
                        obj = self.slots[v]
                        if obj is None:
                            continue
                        s = <Slot>obj
                        if evs[i].rd:
                            s.readable = True
                            if s.wait_ev == W_READ:
                                self.wake(s, WAKE_READY)
                            elif s.state == S_IDLE or s.state == S_HEAD:
                                self.read_head(s)
                        if evs[i].wr and s.wait_ev == W_WRITE and s.state == S_CORE:
                            self.wake(s, WAKE_READY)
                    elif tag == TAG_LISTENER:
                        if self.accepting:
                            self.accept_burst(v)
                    elif tag == TAG_APP:
                        c = self.appfds.get(v)
                        if c is not None:
                            self.wake_app(<AsyncConnection>c, v)
                now = js_monotonic_ns()
                if self.timers:
                    self.fire_timers(now)
                if self.runq:
                    self.run_yielded()
                if self.pending:
                    self.read_pending()
                if now - self.last_sweep >= 1000000000:
                    self.last_sweep = now
                    self.sweep(now)
                if self.paused_until and now >= self.paused_until and self.accepting:
                    self.paused_until = 0
                    self.listen_on()
            # graceful end: idle cores return
            while self.free_cores:
                self.free_cores.pop().switch(None)
        finally:
            _hub = None
            self.shutdown()
            self.teardown()
        return self.served

    cdef int next_timeout(self) except? -1:
        cdef uint64_t now, due
        cdef long long ms = 1000
        if self.runq or self.pending:
            return 0
        if self.timers:
            now = js_monotonic_ns()
            due = self.timers[0][0]
            if due <= now:
                return 0
            ms = <long long>((due - now) // 1000000) + 1
            if ms > 1000:
                ms = 1000
        if self.paused_until and ms > 100:
            ms = 100
        return <int>ms

    cdef int listen_on(self) except -1:
        cdef int i
        for i in range(self.nlisten):
            if js_poller_add(self.pfd, self.fds[i],
                             (<uint64_t>TAG_LISTENER << TAG_SHIFT) | <uint64_t>i,
                             JS_P_LISTENER) < 0:
                raise OSError(errno, os.strerror(errno))
        self.accepting = True
        return 0

    cdef int listen_off(self) except -1:
        cdef int i
        for i in range(self.nlisten):
            js_poller_del(self.pfd, self.fds[i], JS_P_LISTENER)
        return 0

    cdef int stop_accepting(self) except -1:
        # request_stop() / max-requests: no new connections.  Keep-alive connections idle
        # after a request are closed (a client retries those) unless bytes are already
        # waiting on them (then that request is read and answered); the requests in flight are
        # finished: in the cores, queued, partly received heads, and connections accepted
        # whose first request has not arrived yet (closing those is the reload race that
        # drops a request), each within socket-timeout; each closes after its response.
        cdef Slot s
        if not self.paused_until:
            self.listen_off()
        self.paused_until = 0
        self.accepting = False
        for obj in list(self.slots):
            if obj is not None:
                s = <Slot>obj
                if s.state == S_IDLE and s.served > 0:
                    if js_poll_one(s.fd, 0, 0) > 0:
                        # its next request (or its close) is already here: read it rather
                        # than make the client retry; it is answered with Connection: close
                        s.readable = True
                        self.pending.append(s)
                    else:
                        self.close_slot(s)
        return 0

    cdef void shutdown(self):
        cdef Slot s
        for obj in self.slots or ():
            if obj is not None:
                s = <Slot>obj
                if s.fd >= 0:
                    close(s.fd)
                    s.fd = -1
                s.state = S_CLOSED
        self.slots = []
        if self.pfd >= 0:
            close(self.pfd)
            self.pfd = -1

    # -- connections ------------------------------------------------------------------------
    cdef int accept_burst(self, int i) except -1:
        cdef char addr[64]
        cdef int port = 0, fd, k, e
        cdef Slot s
        # The sync hub takes one connection per wake-up, so between two accepts it looks at
        # its other connections, and it never parks a burst of connections whose requests
        # have not arrived while other workers sharing the listener sit idle (a keep-alive
        # connection stays with the worker that accepted it).
        for k in range(1 if self.sync else 64):
            fd = js_accept(self.fds[i], addr, 64, &port, 1)
            if fd < 0:
                e = errno
                if e == EINTR:
                    PyErr_CheckSignals()
                    continue
                if e == EMFILE or e == ENFILE or e == ENOBUFS or e == ENOMEM:
                    # out of fds: stop listening for 100 ms instead of spinning on the level
                    self.listen_off()
                    self.paused_until = js_monotonic_ns() + 100000000
                    return 0
                if e == EAGAIN or e == EWOULDBLOCK or e == ECONNABORTED or e == EPROTO:
                    return 0
                raise OSError(e, os.strerror(e))
            if fd > FD_MASK:
                close(fd)
                continue
            self.conn_options(fd)
            s = Slot.__new__(Slot)
            s.fd = fd
            s.idx = i
            s.kind = self.kinds[i]
            if addr[0]:
                s.addr = latin1(addr, strlen(addr))
                s.port = str(port)
            else:
                s.addr = ""
                s.port = ""
            s.state = S_IDLE
            s.readable = True
            if fd >= len(self.slots):
                self.slots.extend([None] * (fd + 65 - len(self.slots)))
            self.slots[fd] = s
            self.nconns += 1
            if self.timeout_ns:
                s.deadline = js_monotonic_ns() + self.timeout_ns
            self.read_head(s)
        return 0

    cdef int watch(self, Slot s) except -1:
        # Register a connection with the poller the first time it must wait for an edge, not
        # at accept: a connection whose request is in at once and that closes after its
        # response never costs an epoll_ctl.  Registering reports what is already readable
        # or writable, so no edge is lost by registering late.
        if s.watched:
            return 0
        if js_poller_add(self.pfd, s.fd, (<uint64_t>TAG_CONN << TAG_SHIFT) | <uint64_t>s.fd,
                         JS_P_CONN) < 0:
            raise OSError(errno, os.strerror(errno))
        s.watched = True
        return 0

    cdef AsyncConnection activate(self, Slot s):
        # Give a slot the buffers it needs to receive a head: a pooled AsyncConnection.
        cdef AsyncConnection c
        if self.pool:
            c = <AsyncConnection>self.pool.pop()
        else:
            c = AsyncConnection(self)
        c.fd = s.fd
        c.kind = s.kind
        c.base = <dict>self.bases[s.idx]
        c.remote_addr = s.addr
        c.remote_port = s.port
        c.parser.reset()
        c.parser.proto = PROTO_UWSGI if s.kind == K_UWSGI else PROTO_HTTP
        c.slot = s
        s.conn = c
        return c

    cdef void release(self, Slot s):
        cdef AsyncConnection c = s.conn
        if c is None:
            return
        s.conn = None
        c.slot = None
        c.fd = -1
        c.resp = None
        c.g = None
        if len(self.pool) < 2 * self.max_cores + 64:
            self.pool.append(c)

    cdef void close_slot(self, Slot s):
        if s.state == S_CLOSED:
            return
        self.release(s)
        if s.fd >= 0:
            if s.fd < len(self.slots):
                self.slots[s.fd] = None
            close(s.fd)          # also leaves the epoll / kqueue set
            s.fd = -1
        s.state = S_CLOSED
        self.nconns -= 1

    cdef int read_head(self, Slot s) except -1:
        # The hub receives and parses heads itself; a complete one goes to a core.
        cdef AsyncConnection c = s.conn
        cdef RequestParser p
        cdef Py_ssize_t n
        if c is None:
            c = self.activate(s)
        p = c.parser
        while True:
            try:
                r = p.try_head()
            except HTTPError as exc:
                s.exc = exc             # a core answers it (the write may have to wait)
                return self.dispatch(s)
            if r == R_HEAD:
                return self.dispatch(s)
            if p.state == ST_CLOSED:
                self.close_slot(s)
                return 0
            n = c.fill(True)
            if n == -1:
                try:
                    self.watch(s)
                except OSError:
                    self.close_slot(s)
                    return 0
                if p.end == p.start:
                    self.release(s)     # nothing buffered: an idle connection costs no buffers
                    s.state = S_IDLE
                else:
                    if s.state != S_HEAD and self.timeout_ns:
                        # a head that has started must be complete within socket-timeout
                        s.deadline = js_monotonic_ns() + self.timeout_ns
                    s.state = S_HEAD
                return 0
            if n == 0:
                self.close_slot(s)
                return 0

    cdef int read_pending(self) except -1:
        # One batch per loop turn: a connection that keeps its next request ready must not
        # starve those whose events wait in the poller (fairness, issue 8 §4).
        cdef Slot s
        batch = self.pending
        self.pending = []
        for obj in batch:
            s = <Slot>obj
            if s.state == S_IDLE or s.state == S_HEAD:
                self.read_head(s)
        return 0

    # -- cores ------------------------------------------------------------------------------
    cdef int dispatch(self, Slot s) except -1:
        # FIFO when all cores are busy; else the most recently idle core (its stack is warm).
        # The sync hub serves the request here, on the hub's own stack.
        s.state = S_QUEUED
        s.deadline = 0
        if self.sync:
            self.busy += 1
            try:
                self.serve_slot(s, None)
            finally:
                self.busy -= 1
            return 0
        if self.free_cores:
            g = self.free_cores.pop()
        elif self.ncores < self.max_cores:
            g = self.greenlet_cls(self.core_run, self.hub_g)
            self.ncores += 1
        else:
            self.fifo.append(s)
            return 0
        self.busy += 1
        self.switch_in(g, s)
        return 0

    cdef int switch_in(self, g, value) except -1:
        # harakiri slot: "running since" while a core has the CPU, 0 while the hub waits, so
        # a core stuck in the app is caught and cores suspended in waits are not.
        cdef uint64_t t
        if self.slot != NULL:
            t = js_monotonic_ns()
            memcpy(self.slot, &t, 8)
        if self.cfg.harakiri_alarm:
            alarm(self.cfg.harakiri_alarm)
        g.switch(value)
        if self.cfg.harakiri_alarm:
            alarm(0)
        if self.slot != NULL:
            t = 0
            memcpy(self.slot, &t, 8)
        return 0

    def _core_run(self, Slot s):
        # The body of a core greenlet: serve slots until the hub ends it (None).
        g = _greenlet_mod.getcurrent()
        while s is not None:
            self.serve_slot(s, g)
            if self.fifo:
                s = <Slot>self.fifo.popleft()
            else:
                self.busy -= 1
                self.free_cores.append(g)
                s = self.hub_switch()

    cdef int serve_slot(self, Slot s, g) except -1:
        cdef AsyncConnection c = s.conn
        cdef int keep = 0
        s.state = S_CORE
        s.served += 1
        c.g = g
        self.cur = c
        try:
            if s.exc is not None:
                exc = s.exc
                s.exc = None
                raise exc
            keep = c.request_ready()
        except HTTPError as exc:
            if c.kind != K_UWSGI:
                try:
                    c.send_error(exc.status, exc.reason)
                except OSError:
                    pass
            c.linger_close()
            keep = 0
        except OSError:
            keep = 0
        finally:
            if c.app_pending or c.app_fds:
                c.app_reset()
        if not keep or not self.accepting:
            self.close_slot(s)
            return 0
        c.g = None
        s.state = S_HEAD
        if self.timeout_ns:
            s.deadline = js_monotonic_ns() + self.timeout_ns    # keep-alive idle limit
        if c.parser.end > c.parser.start:
            self.pending.append(s)          # pipelined: the hub parses the next head
        else:
            self.release(s)
            s.state = S_IDLE
            if s.readable:
                self.pending.append(s)
            else:
                try:
                    self.watch(s)           # its next request comes with an edge
                except OSError:
                    self.close_slot(s)
        return 0

    cdef int wake(self, Slot s, int why) except -1:
        s.wait_ev = W_NONE
        s.deadline = 0
        return self.switch_in(s.conn.g, why)

    cdef int wake_app(self, AsyncConnection c, int fd) except -1:
        if not c.app_waiting:
            return 0
        c.app_waiting = False
        c.ready = fd
        return self.switch_in(c.g, None)

    cdef int fire_timers(self, uint64_t now) except -1:
        cdef AsyncConnection c
        while self.timers and <uint64_t>self.timers[0][0] <= now:
            due, seq, obj, token = _heappop(self.timers)
            c = <AsyncConnection>obj
            if c.app_waiting and c.token == token:
                self.wake_app(c, -1)
        return 0

    cdef int run_yielded(self) except -1:
        cdef AsyncConnection c
        batch = self.runq
        self.runq = []
        for obj in batch:
            c = <AsyncConnection>obj
            self.switch_in(c.g, None)
        return 0

    cdef int sweep(self, uint64_t now) except -1:
        # socket-timeout: idle connections and stalled heads are closed; a core waiting too
        # long on its client's socket gets a timeout (it raises _ClientGone and closes).
        cdef Slot s
        if not self.timeout_ns:
            return 0
        for obj in list(self.slots):
            if obj is None:
                continue
            s = <Slot>obj
            if s.deadline == 0 or s.deadline > now:
                continue
            if s.state == S_IDLE or s.state == S_HEAD:
                self.close_slot(s)
            elif s.state == S_CORE and s.wait_ev != W_NONE:
                self.wake(s, WAKE_TIMEOUT)
        return 0


cdef AsyncConnection _current_conn(str what):
    cdef Hub hub = _hub
    cdef AsyncConnection c
    if hub is None:
        raise RuntimeError("uwsgi.%s() needs async mode (async = N)" % what)
    g = _greenlet_mod.getcurrent()
    if g is hub.hub_g:
        raise RuntimeError("uwsgi.%s() called outside a request" % what)
    c = hub.cur
    if c is None or c.g is not g:
        raise RuntimeError("uwsgi.%s() called outside a request" % what)
    return c


def async_active():
    """True inside serve_async() (the `uwsgi` module uses the hub's waits then)."""
    return _hub is not None


def async_wait_fd(int fd, bint write=False, double timeout=0.0):
    """uwsgi.wait_fd_read / wait_fd_write: register; the wait happens at suspend() (or when
    the app yields its next chunk / returns)."""
    _current_conn("wait_fd_write" if write else "wait_fd_read").app_wait_fd(
        fd, JS_P_WRITE if write else JS_P_READ, timeout)


def async_sleep(double seconds):
    """uwsgi.async_sleep: register a timeout (served like a wait, see async_wait_fd)."""
    cdef AsyncConnection c = _current_conn("async_sleep")
    if seconds < 0:
        seconds = 0
    if c.app_timeout < 0 or seconds < c.app_timeout:
        c.app_timeout = seconds
    c.app_pending = True


def async_suspend():
    """uwsgi.suspend: switch to the hub until a registered wait ends (or, with none, once)."""
    _current_conn("suspend").app_suspend()


def async_ready_fd():
    """uwsgi.ready_fd: the fd that ended the last wait, -1 after a timeout."""
    return _current_conn("ready_fd").ready


def serve_async(listeners, app, ServeConfig cfg=None, int cores=100):
    """serve() in async mode: at most `cores` requests in the app at once, each in its own
    greenlet, over one epoll/kqueue loop (uWSGI `async = N` with `greenlet`).  request_stop()
    stops accepting and finishes the requests in flight, then it returns the number served."""
    cdef Hub hub
    if cfg is None:
        cfg = ServeConfig()
    if cores < 1:
        raise ValueError("cores must be >= 1")
    raise_nofile(cores)
    hub = Hub(listeners, app, cfg)
    hub.max_cores = cores
    return hub.run_hub()


cdef int raise_nofile(int cores) except -1:
    # uWSGI (core/async.c): "async cores set to N" raises RLIMIT_NOFILE to N when it is lower
    # (each core's request needs its socket), up to the hard limit.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < cores:
        want = cores if hard == resource.RLIM_INFINITY or cores <= hard else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return 0
