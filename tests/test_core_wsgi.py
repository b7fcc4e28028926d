"""_core.serve() through real sockets on loopback: WSGI (PEP 3333) and HTTP/1.1 framing
(RFC 9112) as a client sees them.  Each test forks a server child (tests/core_fixtures.py)."""
import http.client
import mmap
import os
import socket
import struct
import sys
import tempfile
import wsgiref.validate
import warnings

import pytest

from jailserve import _core
import core_fixtures
from core_fixtures import Pipe, connect, exchange, read_responses, recv_all, serving, wait_exit


@pytest.fixture(autouse=True, params=core_fixtures.MODES)
def core_mode(request):
    """Every test here runs against serve() and against serve_async() (issue 8)."""
    core_fixtures.set_mode(request.param)
    yield request.param
    core_fixtures.set_mode("sync")


def hello(env, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def echo(env, start_response):
    body = env["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("X-Had-CL", "CONTENT_LENGTH" in env and "1" or "0")])
    return [body]


def environ_app(env, start_response):
    keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_URI",
            "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT",
            "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_HOST", "HTTP_X_A", "HTTP_X_B_C",
            "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
            "wsgi.input_terminated"]
    out = repr({k: env.get(k) for k in keys} | {"version": env["wsgi.version"],
                                               "has_errors": hasattr(env["wsgi.errors"], "write"),
                                               "underscore": [k for k in env if "X_UNDER" in k]})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [out.encode()]


# -- basics -----------------------------------------------------------------------------------
def test_get_with_http_client():
    with serving(hello) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("GET", "/")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"hello")
        assert r.getheader("Content-Length") == "5"          # list body: length known
        # RFC 9110 §6.6.1 Date, IMF-fixdate (§5.6.7)
        assert r.getheader("Date").endswith(" GMT") and len(r.getheader("Date")) == 29
        c.close()


def test_environ_pep3333():
    with serving(environ_app) as (ports, _):
        s = connect(ports[0])
        s.sendall(b"POST /a%20b/c?x=%20y HTTP/1.1\r\nHost: example.org:81\r\nX-A: 1\r\n"
                  b"x-a: 2\r\nX-B-C: d\r\nX_Under: evil\r\nContent-Type: text/x\r\n"
                  b"Content-Length: 0\r\n\r\n")
        (status, headers, body, _), = read_responses(s, ["POST"])
        env = eval(body)
        assert env["REQUEST_METHOD"] == "POST" and env["SCRIPT_NAME"] == ""
        assert env["PATH_INFO"] == "/a b/c" and env["QUERY_STRING"] == "x=%20y"
        assert env["REQUEST_URI"] == "/a%20b/c?x=%20y"
        # SERVER_NAME is the configured name, not the Host header (uWSGI http-socket)
        assert env["SERVER_NAME"] == "testhost" and env["HTTP_HOST"] == "example.org:81"
        assert env["SERVER_PORT"] == str(ports[0]) and env["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert env["REMOTE_ADDR"] == "127.0.0.1"
        assert env["REMOTE_PORT"] == str(s.getsockname()[1])
        assert env["CONTENT_TYPE"] == "text/x" and env["CONTENT_LENGTH"] == "0"
        assert env["HTTP_X_A"] == "1, 2" and env["HTTP_X_B_C"] == "d"
        assert env["underscore"] == []
        assert env["wsgi.url_scheme"] == "http" and env["version"] == (1, 0)
        assert (env["wsgi.multithread"], env["wsgi.multiprocess"], env["wsgi.run_once"]) == (
            False, True, False)
        assert env["wsgi.input_terminated"] is True and env["has_errors"]
        s.close()


def test_wsgiref_validate_raises_nothing():
    # wsgiref.validate asserts PEP 3333 on both sides; an AssertionError in the app is a 500
    def app(env, start_response):
        inp = env["wsgi.input"]
        first = inp.readline()
        rest = inp.read(int(env.get("CONTENT_LENGTH") or 0) - len(first))
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(first + rest)))])
        return [first + rest]

    def setup():
        warnings.simplefilter("error")      # validator warnings become app errors (500)

    with serving(wsgiref.validate.validator(app), setup=setup) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        for body in (b"", b"line1\nline2\n", b"x" * 10000):
            c.request("POST", "/v?q=1", body=body, headers={"Content-Type": "text/plain"})
            r = c.getresponse()
            assert (r.status, r.read()) == (200, body)
        c.request("GET", "/")
        r = c.getresponse()
        assert r.status == 200
        r.read()
        c.close()


# -- keep-alive, close, pipelining ------------------------------------------------------------
def remote_port(c, method, path, body=None):
    """One request through environ_app on connection c: (the REMOTE_PORT it saw, response)."""
    c.request(method, path, body=body)
    r = c.getresponse()
    return eval(r.read())["REMOTE_PORT"], r


def test_keep_alive_reuses_connection():
    with serving(environ_app) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        seen = set()
        for i in range(5):
            port, r = remote_port(c, "GET", "/%d" % i)
            seen.add(port)
            assert r.getheader("Connection") is None
        assert len(seen) == 1                               # one TCP connection
        c.close()


def test_http_kind_closes_after_each_response():
    # uWSGI http-socket: one request per connection (UWSGI_SEMANTICS §10)
    with serving(hello, kinds=("http",)) as (ports, _):
        data = exchange(ports[0], b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert data.count(b"HTTP/1.1 200") == 1 and b"Connection: close\r\n" in data


def test_pipelining_in_order():
    def app(env, start_response):
        start_response("200 OK", [])
        return [env["PATH_INFO"].encode()]

    with serving(app) as (ports, _):
        s = connect(ports[0])
        s.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(10)))
        got = read_responses(s, ["GET"] * 10)
        assert [b for _, _, b, _ in got] == [b"/%d" % i for i in range(10)]
        s.close()


def test_http10_closes_and_is_not_chunked():
    def stream(env, start_response):
        start_response("200 OK", [])
        yield b"a"
        yield b"b"

    with serving(stream) as (ports, _):
        data = exchange(ports[0], b"GET / HTTP/1.0\r\n\r\n")
        head, body = data.split(b"\r\n\r\n", 1)
        assert b"Transfer-Encoding" not in head and b"Connection: close" in head
        assert body == b"ab"                       # RFC 9112 §6.3 (8): close-delimited


def test_http10_keep_alive():
    with serving(hello) as (ports, _):
        s = connect(ports[0])
        s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        got = read_responses(s, ["GET", "GET"])
        assert [g[0] for g in got] == [200, 200]
        assert got[0][1]["connection"] == "keep-alive"
        s.close()


def test_idle_keep_alive_connection_is_closed_after_socket_timeout():
    with serving(hello, socket_timeout=1.0) as (ports, _):
        s = connect(ports[0], timeout=30)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        read_responses(s, ["GET"])
        assert s.recv(10) == b""                   # the server hung up on the idle client
        s.close()


def test_dripped_head_is_cut_off():
    # Each byte arrives well within socket-timeout (1 s), the whole head would take ~6 s: the
    # server must hang up while bytes are still coming (not only once they stop).
    import select
    with serving(hello, socket_timeout=1.0) as (ports, _):
        s = connect(ports[0], timeout=30)
        head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Slow: " + b"x" * 100
        closed_while_sending = False
        for i in range(len(head)):
            try:
                s.sendall(head[i:i + 1])
                if select.select([s], [], [], 0.05)[0] and s.recv(10) == b"":
                    closed_while_sending = True
            except OSError:
                closed_while_sending = True
            if closed_while_sending:
                break
        assert closed_while_sending
        s.close()


def test_connection_close_request():
    with serving(hello) as (ports, _):
        data = exchange(ports[0], b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in data


# -- request bodies ---------------------------------------------------------------------------
def test_chunked_upload_decoded():
    with serving(echo) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        parts = [b"a" * 1000, b"b" * 5000, b"c"]
        c.request("POST", "/", body=iter(parts), encode_chunked=True)
        r = c.getresponse()
        assert r.read() == b"".join(parts) and r.getheader("X-Had-CL") == "0"
        c.request("POST", "/", body=b"again")              # same connection still framed
        assert c.getresponse().read() == b"again"
        c.close()


def test_large_body_through_small_buffer():
    body = os.urandom(200000)
    with serving(echo, buffer_size=1024) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=20)
        c.request("POST", "/", body=body)
        assert c.getresponse().read() == body
        c.close()


def test_input_readline_readlines_iter():
    def app(env, start_response):
        inp = env["wsgi.input"]
        a = inp.readline()
        b = inp.readline(3)
        rest = list(inp)
        start_response("200 OK", [])
        return [repr((a, b, rest, inp.read(), inp.readlines())).encode()]

    with serving(app) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("POST", "/", body=b"one\ntwothree\nfour\nfive")
        assert eval(c.getresponse().read()) == (
            b"one\n", b"two", [b"three\n", b"four\n", b"five"], b"", [])
        c.close()


def test_input_bounded_by_content_length_with_pipelined_request():
    with serving(echo) as (ports, _):
        s = connect(ports[0])
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                  b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nde")
        got = read_responses(s, ["POST", "POST"])
        assert [g[2] for g in got] == [b"abc", b"de"]
        s.close()


def test_unread_body_is_skipped_and_connection_kept():
    with serving(environ_app) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        ports_seen = {remote_port(c, "POST", "/", body=b"ignored body")[0] for _ in range(3)}
        assert len(ports_seen) == 1
        c.close()


def test_expect_100_continue():
    with serving(echo) as (ports, _):
        s = connect(ports[0])
        s.sendall(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        # RFC 9110 §10.1.1: the client waits for 100 before sending the content
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += s.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        (status, _, body, _), = read_responses(s, ["PUT"])
        assert (status, body) == (200, b"hello")
        s.close()


def test_expect_100_not_sent_when_app_ignores_body():
    with serving(hello) as (ports, _):
        data = exchange(ports[0], b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                  b"Expect: 100-continue\r\n\r\n")      # final answer, then close
        assert data.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in data


# -- response framing -------------------------------------------------------------------------
def test_streaming_is_chunked_on_http11():
    def stream(env, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"one "
        yield b""                      # an empty chunk must not end the chunked body
        yield b"two"

    with serving(stream) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        for _ in range(2):
            c.request("GET", "/")
            r = c.getresponse()
            assert r.getheader("Transfer-Encoding") == "chunked" and r.read() == b"one two"
        c.close()


def test_app_content_length_respected():
    def app(env, start_response):
        start_response("200 OK", [("Content-Length", "6")])
        yield b"abc"
        yield b"def"

    with serving(app) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("GET", "/")
        r = c.getresponse()
        assert r.getheader("Transfer-Encoding") is None and r.read() == b"abcdef"
        c.close()


def test_head_has_no_body_and_keeps_framing():
    with serving(hello) as (ports, _):
        s = connect(ports[0])
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        (st1, h1, b1, _), (st2, h2, b2, _) = read_responses(s, ["HEAD", "GET"])
        assert (st1, b1, h1["content-length"]) == (200, b"", "5")   # RFC 9110 §9.3.2
        assert (st2, b2) == (200, b"hello")
        s.close()


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified", "101 Switching"])
def test_no_body_statuses(status):
    def app(env, start_response):
        start_response(status, [])
        return [b"must not be sent"]

    with serving(app) as (ports, _):
        data = exchange(ports[0], b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n"
                                  b"Connection: close\r\n\r\n")
        # RFC 9110 §15.3.5 / §15.4.5 / §15.2: no content, no framing headers added
        assert b"must not be sent" not in data and b"Transfer-Encoding" not in data
        assert b"Content-Length" not in data and data.count(status.encode()) == 2


def test_app_connection_close_honoured_and_duplicate_length_refused():
    def app(env, start_response):
        if env["PATH_INFO"] == "/dup":
            start_response("200 OK", [("Content-Length", "1"), ("Content-Length", "2")])
            return [b"xx"]
        start_response("200 OK", [("Connection", "Close"), ("X-Custom-Token", "c")])
        return [b"bye"]

    with serving(app, errors=open(os.devnull, "w")) as (ports, _):
        # one response, then the app's close
        data = exchange(ports[0], b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert data.count(b"HTTP/1.1 200") == 1 and data.count(b"Connection: close") == 1
        assert exchange(ports[0], b"GET /dup HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 500 ")


def test_write_callable():
    def app(env, start_response):
        write = start_response("200 OK", [("Content-Length", "11")])
        write(b"hello ")
        write(b"world")
        return []

    with serving(app) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("GET", "/")
        assert c.getresponse().read() == b"hello world"
        c.close()


def test_file_wrapper_uses_file_from_its_offset():
    data = os.urandom(300000)
    fd, path = tempfile.mkstemp()
    os.write(fd, data)
    os.close(fd)

    def app(env, start_response):
        f = open(path, "rb")
        f.seek(1000)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return env["wsgi.file_wrapper"](f)

    try:
        with serving(app) as (ports, _):
            c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=20)
            for _ in range(2):
                c.request("GET", "/")
                r = c.getresponse()
                assert r.getheader("Content-Length") == str(len(data) - 1000)
                assert r.read() == data[1000:]
            c.close()
    finally:
        os.unlink(path)


def test_file_wrapper_non_file_iterates():
    import io

    def app(env, start_response):
        start_response("200 OK", [])
        return env["wsgi.file_wrapper"](io.BytesIO(b"x" * 20000), 4096)

    with serving(app) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("GET", "/")
        assert c.getresponse().read() == b"x" * 20000
        c.close()


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("header", [("X-Evil", "a\r\nSet-Cookie: pwned=1"),
                                    ("X-Evil", "a\nb"), ("X-Evil", "a\x00b"),
                                    ("X-Evil\r\nSet-Cookie", "pwned=1"), ("", "x"),
                                    ("Content-Length", "4\r\n\r\npwned")])
def test_app_header_injection_is_500(header):
    def app(env, start_response):
        start_response("200 OK", [header])
        return [b"body"]

    with serving(app, errors=open(os.devnull, "w")) as (ports, _):
        data = exchange(ports[0], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 500 ") and b"pwned" not in data


@pytest.mark.parametrize("status", ["200 OK\r\nX: y", "OK", "20 OK", 200, "200 caf\u20ac"])
def test_bad_status_is_500(status):
    def app(env, start_response):
        start_response(status, [])
        return [b""]

    with serving(app, errors=open(os.devnull, "w")) as (ports, _):
        data = exchange(ports[0], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 500 ") and b"X: y" not in data


def test_app_exception_is_500_and_logged():
    r, w = os.pipe()

    def app(env, start_response):
        raise ZeroDivisionError("boom")

    with serving(app, errors=os.fdopen(w, "w", buffering=1)) as (ports, _):
        data = exchange(ports[0], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 500 Internal Server Error")
        os.close(w)
        assert b"ZeroDivisionError: boom" in os.read(r, 65536)
    os.close(r)


def test_exc_info_replaces_unsent_headers():
    def app(env, start_response):
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("late")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Second", "2")], sys.exc_info())
        return [b"sorry"]

    with serving(app) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("GET", "/")
        r = c.getresponse()
        assert (r.status, r.read(), r.getheader("X-First"), r.getheader("X-Second")) == (
            503, b"sorry", None, "2")
        c.close()


def test_exc_info_after_headers_sent_reraises():
    def app(env, start_response):
        write = start_response("200 OK", [("Content-Length", "10")])
        write(b"12345")
        try:
            start_response("500 Oops", [], (ValueError, ValueError("x"), None))
        except ValueError:
            write(b"67890")          # PEP 3333: the re-raise tells the app headers are out
        return []

    with serving(app) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("GET", "/")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"1234567890")
        c.close()


def test_bad_request_answered_then_closed_nothing_smuggled():
    seen = Pipe()

    def app(env, start_response):
        seen.send(env["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]

    with serving(app) as (ports, _):
        data = exchange(ports[0], b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
                                  b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                                  b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        assert data.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 400 Bad Request" in data
        assert data.count(b"\r\nDate: ") == 2          # RFC 9110 §6.6.1, 4xx too
        s2 = connect(ports[0])                    # a fresh request as a fence
        s2.sendall(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        recv_all(s2)
        s2.close()
    assert seen.lines(2) == ["/first", "/after"]
    seen.close()


def test_tls_hello_on_http_port_is_400_at_once():
    # no line end ever comes; the method's first byte already cannot be HTTP
    with serving(hello, socket_timeout=30) as (ports, _):
        s = connect(ports[0], timeout=20)
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert s.recv(100).startswith(b"HTTP/1.1 400 Bad Request")
        s.close()


def test_head_too_large_is_431():
    with serving(hello, buffer_size=512) as (ports, _):
        data = exchange(ports[0], b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"v" * 1000 + b"\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 431 ")


def test_bad_chunked_body_read_by_app_is_400():
    def app(env, start_response):
        env["wsgi.input"].read()
        start_response("200 OK", [])
        return [b"not reached"]

    with serving(app) as (ports, _):
        data = exchange(ports[0], b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"zz\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 400 ") and b"not reached" not in data


# -- close() always called --------------------------------------------------------------------
class Closing:
    def __init__(self, pipe, chunks, fail=False):
        self.pipe, self.chunks, self.fail = pipe, chunks, fail

    def __iter__(self):
        for c in self.chunks:
            yield c
        if self.fail:
            raise RuntimeError("iteration failed")

    def close(self):
        self.pipe.send("closed")


@pytest.mark.parametrize("fail", [False, True])
def test_close_always_called(fail):
    pipe = Pipe()

    def app(env, start_response):
        start_response("200 OK", [])
        return Closing(pipe, [b"a", b"b"], fail)

    with serving(app, errors=open(os.devnull, "w")) as (ports, _):
        for method in ("GET", "HEAD"):
            s = connect(ports[0])
            s.sendall(method.encode() + b" / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            recv_all(s)
            s.close()
    assert pipe.lines(2) == ["closed", "closed"]
    pipe.close()


def test_close_called_when_client_disconnects():
    pipe = Pipe()

    def app(env, start_response):
        start_response("200 OK", [])
        return Closing(pipe, [b"x" * 65536] * 200)

    with serving(app) as (ports, _):
        s = connect(ports[0])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        s.recv(1000)
        s.close()                                    # RST: the server's send fails
        assert pipe.lines(1) == ["closed"]
    pipe.close()


# -- uwsgi protocol ---------------------------------------------------------------------------
def uwsgi_packet(pairs, modifier1=0):
    body = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
                    for k, v in pairs)
    return bytes([modifier1]) + struct.pack("<H", len(body)) + b"\x00" + body


def test_uwsgi_protocol_request():
    with serving(echo, kinds=("uwsgi",)) as (ports, _):
        packet = uwsgi_packet([(b"REQUEST_METHOD", b"POST"), (b"PATH_INFO", b"/u"),
                               (b"CONTENT_LENGTH", b"4"), (b"SERVER_PROTOCOL", b"HTTP/1.1"),
                               (b"REMOTE_ADDR", b"10.1.2.3")])
        data = exchange(ports[0], packet + b"data")       # one request per connection
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\ndata")


def test_uwsgi_environ_matches_http():
    with serving(environ_app, kinds=("uwsgi",)) as (ports, _):
        s = connect(ports[0])
        s.sendall(uwsgi_packet([(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/a b"),
                                (b"QUERY_STRING", b"q=1"), (b"SERVER_NAME", b"front"),
                                (b"SERVER_PORT", b"8080"), (b"HTTP_HOST", b"h"),
                                (b"REMOTE_ADDR", b"10.1.2.3"), (b"REMOTE_PORT", b"4444")]))
        env = eval(recv_all(s).split(b"\r\n\r\n", 1)[1])
        assert (env["PATH_INFO"], env["QUERY_STRING"], env["HTTP_HOST"]) == ("/a b", "q=1", "h")
        assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("front", "8080")
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("10.1.2.3", "4444")
        assert env["SCRIPT_NAME"] == "" and env["wsgi.input_terminated"] is True
        s.close()


def test_uwsgi_over_unix_socket(tmp_path):
    # nginx `uwsgi_pass unix:/path` (UWSGI_SEMANTICS §9); no peer address, SERVER_PORT "80"
    path = str(tmp_path / "s.sock")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(8)
    pid = os.fork()
    if pid == 0:
        try:
            _core.serve([(lsock, "uwsgi")], environ_app, _core.ServeConfig(max_requests=1))
        finally:
            os._exit(0)
    lsock.close()
    try:
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(10)
        c.connect(path)
        c.sendall(uwsgi_packet([(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/x")]))
        env = eval(recv_all(c).split(b"\r\n\r\n", 1)[1])
        c.close()
        assert (env["PATH_INFO"], env["REMOTE_ADDR"], env["SERVER_PORT"]) == ("/x", "", "80")
        assert wait_exit(pid) == 0
    finally:
        from core_fixtures import stop
        if os.path.exists("/proc/%d" % pid):
            stop(pid)


def test_uwsgi_oversized_packet_dropped_without_response():
    with serving(hello, kinds=("uwsgi",), buffer_size=512) as (ports, _):
        data = exchange(ports[0], b"\x00" + struct.pack("<H", 4000) + b"\x00" + b"x" * 100)
        assert data == b""                           # UWSGI_SEMANTICS §9: dropped


# -- the loop: listeners, stop, max-requests, harakiri slot, log ------------------------------
def test_two_listeners_of_different_kinds():
    with serving(hello, kinds=("http11", "http")) as (ports, _):
        for port in ports * 2:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/")
            assert c.getresponse().read() == b"hello"
            c.close()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    with serving(environ_app, host="::1", family=socket.AF_INET6) as (ports, _):
        s = connect(ports[0], host="::1")
        s.sendall(b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n")
        env = eval(read_responses(s, ["GET"])[0][2])
        assert env["REMOTE_ADDR"] == "::1"
        s.close()


def test_max_requests_returns_from_serve():
    with serving(hello, max_requests=3) as (ports, state):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        last = None
        for _ in range(3):
            c.request("GET", "/")
            last = c.getresponse()
            last.read()
        assert last.getheader("Connection") == "close"   # the last one says so
        state["status"] = 0
        assert wait_exit(state["pid"]) == 3              # serve() returned 3
        c.close()


def test_request_stop_finishes_request_in_hand():
    started = Pipe()
    release_r, release_w = os.pipe()

    def app(env, start_response):
        started.send("in app")
        os.read(release_r, 1)
        start_response("200 OK", [])
        return [b"finished"]

    with serving(app) as (ports, state):
        s = connect(ports[0])
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert started.lines(1) == ["in app"]
        os.kill(state["pid"], 1)                         # SIGHUP -> request_stop()
        os.write(release_w, b"x")
        data = recv_all(s)                               # answered, then closed
        assert data.endswith(b"finished")
        state["status"] = 0
        assert wait_exit(state["pid"]) == 1
        s.close()
    started.close()
    os.close(release_r)
    os.close(release_w)


def served_then_signalled(ports, state, signum):
    """One request answered, then signum to the idle serving child; its exit code."""
    c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
    c.request("GET", "/")
    c.getresponse().read()
    c.close()
    os.kill(state["pid"], signum)
    state["status"] = 0
    return wait_exit(state["pid"])


def test_idle_worker_stops_on_signal():
    with serving(hello) as (ports, state):
        assert served_then_signalled(ports, state, 15) == 1


def test_status_slot_for_harakiri():
    slot = mmap.mmap(-1, 16)                              # shared with the forked child

    def app(env, start_response):
        start_ns, done = struct.unpack("QQ", slot[:16])
        start_response("200 OK", [])
        return [b"%d %d" % (start_ns, done)]

    with serving(app, status_slot=slot) as (ports, _):
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        for i in range(3):
            c.request("GET", "/")
            start_ns, done = map(int, c.getresponse().read().split())
            assert start_ns > 0 and done == i                # busy: start time set
        c.close()
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
    assert struct.unpack("QQ", slot[:16]) == (0, 4)         # idle, 4 requests done


def test_log_callback_fields():
    pipe = Pipe()

    def log(*fields):
        assert fields[-1]["PATH_INFO"] == "/p"            # the environ comes last
        pipe.send(repr(fields[:-1]))

    with serving(hello, log=log) as (ports, _):
        data = exchange(ports[0], b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    (line,) = pipe.lines(1)
    method, uri, proto, status, size, usecs, addr, nh, hsize, nvars, vsize, started = eval(line)
    assert (method, uri, proto, status, size, addr) == ("GET", "/p?q=1", "HTTP/1.1", 200, 5,
                                                        "127.0.0.1")
    head = data.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert hsize == len(head) and nh == head.count(b"\r\n") - 2
    assert usecs >= 0 and nvars >= 10 and vsize > 0 and started > 1e9
    pipe.close()


def test_serve_config_validation():
    with pytest.raises(ValueError):
        _core.ServeConfig(buffer_size=10)
    with pytest.raises(TypeError):
        _core.ServeConfig(log=5)
    cfg = _core.ServeConfig(server_name="x", max_requests=2)
    assert (cfg.server_name, cfg.max_requests, cfg.buffer_size) == ("x", 2, 4096)
    good = socket.socket()
    good.bind(("127.0.0.1", 0))
    good.listen(1)
    with pytest.raises(ValueError):
        _core.serve([(good, "http"), (socket.socket(), "spdy")], hello, cfg)
    # a read-only slot fails after the listeners were set up: their flags are restored
    with pytest.raises((BufferError, TypeError)):
        _core.serve([(good, "http")], hello, _core.ServeConfig(status_slot=b"x" * 16))
    import fcntl
    assert not fcntl.fcntl(good.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    good.close()


def test_exception_from_signal_handler_propagates_out_of_serve():
    # a handler that raises (the default SIGINT one: KeyboardInterrupt) ends serve() with
    # that exception instead of being swallowed by the loop
    def setup():
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)

    with serving(hello, setup=setup) as (ports, state):
        assert served_then_signalled(ports, state, 2) == 99     # core_fixtures: serve() raised
