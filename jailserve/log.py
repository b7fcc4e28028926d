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
    """What the serve loop tells about one finished request (see RequestLog.__call__)."""

    __slots__ = ("environ", "status", "size", "start_ns", "end_ns", "headers", "header_bytes",
                 "pid", "wid", "req", "total")

    def __init__(self, environ, status, size, start_ns, end_ns, headers, header_bytes, pid, wid, req, total):
        self.environ = environ
        self.status = status
        self.size = size
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.headers = headers
        self.header_bytes = header_bytes
        self.pid = pid
        self.wid = wid
        self.req = req
        self.total = total


def _env(key: str, default: str = ""):
    return lambda r: r.environ.get(key, default)


def _vars_bytes(r: Request) -> int:
    # uWSGI counts the size of the uwsgi packet it built: 2+len(key)+2+len(value) per var.
    return sum(4 + len(k) + len(v) for k, v in r.environ.items() if isinstance(v, str))


def _vars_count(r: Request) -> int:
    return sum(1 for v in r.environ.values() if isinstance(v, str))


def _ctime(r: Request) -> str:
    # the request start time, in ctime() form, as uWSGI
    return time.ctime(time.time() - (time.monotonic_ns() - r.start_ns) / 1e9)


FIELDS = {
    "method": _env("REQUEST_METHOD"),
    "uri": _env("REQUEST_URI"),
    "proto": _env("SERVER_PROTOCOL"),
    "addr": _env("REMOTE_ADDR"),
    "user": _env("REMOTE_USER"),
    "host": _env("HTTP_HOST"),
    "uagent": _env("HTTP_USER_AGENT"),
    "referer": _env("HTTP_REFERER"),
    "status": lambda r: r.status,
    "size": lambda r: r.size,
    "rsize": lambda r: r.size,
    "msecs": lambda r: (r.end_ns - r.start_ns) // 1_000_000,
    "micros": lambda r: (r.end_ns - r.start_ns) // 1_000,
    "pid": lambda r: r.pid,
    "wid": lambda r: r.wid,
    "headers": lambda r: r.headers,
    "hsize": lambda r: r.header_bytes,
    "vars": _vars_count,
    "pktsize": _vars_bytes,
    "time": lambda r: int(time.time()),
    "ltime": lambda r: time.strftime("%d/%b/%Y:%H:%M:%S %z"),
    "ctime": _ctime,
    "epoch": lambda r: int(time.time()),
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
    duration = (r.end_ns - r.start_ns) // (1_000 if micros else 1_000_000)
    unit = "micros" if micros else "msecs"
    env = r.environ
    return (f"[pid: {r.pid}|app: 0|req: {r.req}/{r.total}] {env.get('REMOTE_ADDR', '')} "
            f"({env.get('REMOTE_USER', '')}) {{{_vars_count(r)} vars in {_vars_bytes(r)} bytes}} "
            f"[{_ctime(r)}] {env.get('REQUEST_METHOD', '')} {env.get('REQUEST_URI', '')} => "
            f"generated {r.size} bytes in {duration} {unit} ({env.get('SERVER_PROTOCOL', '')} {r.status}) "
            f"{r.headers} headers in {r.header_bytes} bytes (1 switches on core 0)")


def render(parts: list, r: Request) -> str:
    return "".join(p if isinstance(p, str) else str(p(r)) for p in parts)
