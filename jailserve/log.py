"""Logging: where lines go (stderr, `logto`), start-up banner lines, the request log.

The request line is uWSGI's `uwsgi_logit_simple` (core/logging.c):
  [pid: P|app: 0|req: R/T] ADDR (USER) {V vars in B bytes} [DATE] METHOD URI =>
  generated N bytes in M msecs (PROTO STATUS) H headers in HB bytes (1 switches on core 0)
`log-format` replaces it with %(name) variables; the format is compiled once per worker into
a list of literal strings and field getters, so each request costs one join and one write.
"""
from __future__ import annotations

import os
import sys
import time

STDERR = 2


def emit(line: str) -> None:
    """One log line to fd 2 (which `logto` points at the log file).  One write() per line,
    so lines of several processes sharing the fd do not interleave."""
    data = (line + "\n").encode("utf-8", "backslashreplace")
    try:
        os.write(STDERR, data)
    except OSError:
        pass              # a closed or full log never takes a worker down


def setup_logto(path: str | None) -> None:
    """`logto = FILE`: fds 1 and 2 go to FILE (appended), before the jail and the drop, as
    uWSGI opens it (UWSGI_SEMANTICS §12) — the file stays writable after the drop."""
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


# ---------------------------------------------------------------------------------------
# the request log


class Request:
    """One finished request, as the serve loop reports it (see RequestLog.__call__)."""

    __slots__ = (
        "addr",
        "environ",
        "header_bytes",
        "headers",
        "method",
        "micros",
        "pid",
        "proto",
        "req",
        "size",
        "status",
        "total",
        "uri",
        "vars",
        "vars_bytes",
        "wall",
        "wid",
    )

    def __init__(self, method, uri, proto, status, size, micros, addr, headers, header_bytes,
                 nvars, vars_bytes, wall, pid=0, wid=0, req=0, total=0, environ=None):
        self.method, self.uri, self.proto, self.status = method, uri, proto, status
        self.size, self.micros, self.addr = size, micros, addr
        self.headers, self.header_bytes, self.vars, self.vars_bytes = headers, header_bytes, nvars, vars_bytes
        self.wall, self.pid, self.wid, self.req, self.total = wall, pid, wid, req, total
        self.environ = environ if environ is not None else {}


def _env(key: str):
    # the environ is the 13th argument of _core's log callback (docs/internals.md)
    return lambda r: r.environ.get(key, "")


def _ctime(r: Request) -> str:
    return time.ctime(r.wall or time.time())     # the request's start, ctime() style, as uWSGI


FIELDS = {
    "method": lambda r: r.method,
    "uri": lambda r: r.uri,
    "proto": lambda r: r.proto,
    "addr": lambda r: r.addr,
    "user": _env("REMOTE_USER"),
    "host": _env("HTTP_HOST"),
    "uagent": _env("HTTP_USER_AGENT"),
    "referer": _env("HTTP_REFERER"),
    "status": lambda r: r.status,
    "size": lambda r: r.size,
    "rsize": lambda r: r.size,
    "msecs": lambda r: r.micros // 1000,
    "micros": lambda r: r.micros,
    "pid": lambda r: r.pid,
    "wid": lambda r: r.wid,
    "headers": lambda r: r.headers,
    "hsize": lambda r: r.header_bytes,
    "vars": lambda r: r.vars,
    "pktsize": lambda r: r.vars_bytes,
    "time": lambda r: int(r.wall or time.time()),
    "epoch": lambda r: int(time.time()),
    "ltime": lambda r: time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(r.wall or None)),
    "ctime": _ctime,
}


def compile_format(fmt: str) -> list:
    """`log-format` text -> [literal str | getter]; an unknown %(name) stays as written,
    which is what uWSGI prints for a variable it does not know."""
    parts: list = []
    i = 0
    while True:
        j = fmt.find("%(", i)
        k = fmt.find(")", j + 2) if j >= 0 else -1
        if j < 0 or k < 0:
            parts.append(fmt[i:])
            return [p for p in parts if p != ""]
        parts.append(fmt[i:j])
        name = fmt[j + 2:k]
        parts.append(FIELDS.get(name, fmt[j:k + 1]))
        i = k + 1


def default_line(r: Request, micros: bool = False) -> str:
    duration, unit = (r.micros, "micros") if micros else (r.micros // 1000, "msecs")
    return (f"[pid: {r.pid}|app: 0|req: {r.req}/{r.total}] {r.addr} ({r.environ.get('REMOTE_USER', '')}) "
            f"{{{r.vars} vars in {r.vars_bytes} bytes}} [{_ctime(r)}] {r.method} {r.uri} => "
            f"generated {r.size} bytes in {duration} {unit} ({r.proto} {r.status}) "
            f"{r.headers} headers in {r.header_bytes} bytes (1 switches on core 0)")


def render(parts: list, r: Request) -> str:
    return "".join(p if isinstance(p, str) else str(p(r)) for p in parts)


class RequestLog:
    """The ServeConfig log callback: one uWSGI-format line per request (or `log-format`)."""

    def __init__(self, config, total=None):
        fmt = config.get("log-format")
        self.total = total                 # () -> requests of the whole instance, or None
        self.parts = compile_format(fmt) if fmt else None
        self.micros = config.get("log-micros")
        self.pid = self.wid = self.count = 0

    def start(self, wid: int) -> None:
        """In the worker, after fork: whose lines these are."""
        self.pid, self.wid, self.count = os.getpid(), wid, 0

    def __call__(self, method, uri, proto, status, size, micros, addr, nheaders, header_bytes,
                 nvars, vars_bytes, wall, environ=None):
        # the arguments are _core's (docs/internals.md); R is this worker's count, T the
        # instance's (from the master's status slots), as uWSGI's `req: R/T`.
        self.count += 1
        total = self.total() if self.total is not None else self.count
        r = Request(method, uri, proto, status, size, micros, addr, nheaders, header_bytes,
                    nvars, vars_bytes, wall, self.pid, self.wid, self.count, total, environ)
        emit(render(self.parts, r) if self.parts else default_line(r, self.micros))
