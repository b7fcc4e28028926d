"""Type stubs for jailserve._core (the Cython hot path); the contract is docs/internals.md."""
import socket
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Protocol, Sequence

ERRORS: dict[str, int]
REASONS: dict[int, str]

class HTTPError(Exception):
    status: int
    code: str
    detail: str
    reason: str
    def __init__(self, status: int, code: str, detail: str) -> None: ...

Event = tuple[Any, ...]

class RequestParser:
    def __init__(self, buffer_size: int = 4096, max_headers: int = 100,
                 protocol: Literal["http", "uwsgi"] = "http",
                 environ: Optional[dict[str, Any]] = None) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]: ...

class InputStream:
    def read(self, size: Optional[int] = -1) -> bytes: ...
    def readline(self, size: Optional[int] = -1) -> bytes: ...
    def readlines(self, hint: Optional[int] = -1) -> list[bytes]: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __next__(self) -> bytes: ...

class FileWrapper:
    filelike: Any
    blksize: int
    def __init__(self, filelike: Any, blksize: int = 8192) -> None: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __next__(self) -> bytes: ...

class RequestLogCallback(Protocol):
    def __call__(self, method: str, uri: str, proto: str, status: int, size: int,
                 duration_us: int, remote_addr: str, headers: int, headers_size: int,
                 vars: int, vars_size: int, started: float,
                 environ: dict[str, Any]) -> None: ...

class ServeConfig:
    buffer_size: int
    socket_timeout: float
    max_requests: int
    server_name: str
    log: Optional[RequestLogCallback]
    status_slot: Any
    max_vars: int
    errors: Any
    environ: dict[str, Any]
    harakiri_alarm: int
    def __init__(self, *, buffer_size: int = 4096, socket_timeout: float = 4.0,
                 max_requests: int = 0, server_name: Optional[str] = None,
                 log: Optional[RequestLogCallback] = None, status_slot: Any = None,
                 max_vars: int = 100, errors: Any = None,
                 environ: Optional[dict[str, Any]] = None,
                 harakiri_alarm: int = 0) -> None: ...

Listener = tuple[socket.socket, Literal["http", "http11", "uwsgi"]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Callable[[bytes], None]]], Iterable[bytes]]

def serve(listeners: Sequence[Listener], app: WSGIApp,
          cfg: Optional[ServeConfig] = None) -> int: ...
def defer_accept(fd: int, seconds: int) -> None: ...
def request_stop() -> None: ...
def serve_async(listeners: Sequence[Listener], app: WSGIApp,
                cfg: Optional[ServeConfig] = None, cores: int = 100) -> int: ...
def async_active() -> bool: ...
def async_wait_fd(fd: int, write: bool = False, timeout: float = 0.0) -> None: ...
def async_sleep(seconds: float) -> None: ...
def async_suspend() -> None: ...
def async_ready_fd() -> int: ...
