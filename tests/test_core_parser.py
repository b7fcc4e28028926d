"""The request corpus (tests/http/) run through the sans-I/O parser, plus chunk-split invariance.

Each case is `NAME.http` (the bytes, written with visible escapes: real newlines are layout
only, `\\r` `\\n` `\\t` `\\xHH` `\\\\` are the bytes) and `NAME.json` (the expectation and the RFC
clause it comes from).  Valid cases list the requests the parser must report; invalid ones the
status and rule (`HTTPError.code`) and how many requests come before the error.
"""
import codecs
import io
import json
import pathlib
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jailserve import _core

CORPUS = pathlib.Path(__file__).parent / "http"


def load(path):
    raw = path.read_bytes().replace(b"\n", b"")
    data = codecs.escape_decode(raw)[0]
    exp = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    return data, exp


def cases(kind):
    return sorted(CORPUS.joinpath(kind).glob("*.http"))


def parser(exp, environ=None):
    return _core.RequestParser(buffer_size=exp.get("buffer_size", 4096),
                               max_headers=exp.get("max_headers", 100),
                               protocol=exp.get("protocol", "http"), environ=environ)


def lat(s):
    return s.encode("latin-1")


def merge(events):
    """Consecutive body events as one: how the body is split is not part of the meaning."""
    out = []
    for ev in events:
        if ev[0] == "body" and out and out[-1][0] == "body":
            out[-1] = ("body", out[-1][1] + ev[1])
        else:
            out.append(ev)
    return out


def expected_events(exp):
    out = []
    for r in exp["requests"]:
        if "vars" in r:
            out.append(("vars", tuple((lat(k), lat(v)) for k, v in r["vars"])))
        else:
            out.append(("head", lat(r["method"]), lat(r["target"]), lat(r["version"]),
                        tuple((lat(k), lat(v)) for k, v in r["headers"]),
                        r["keep_alive"], r["expect_continue"]))
        if r["body"]:
            out.append(("body", lat(r["body"])))
        out.append(("end",))
    return out


def feed_all(p, data, step):
    events = []
    for i in range(0, len(data), step):
        events += p.feed(data[i:i + step])
    return events


def test_corpus_size():
    # issue 3 acceptance: at least 120 cases, valid and invalid
    assert len(cases("valid")) + len(cases("invalid")) >= 120
    for path in cases("valid") + cases("invalid"):
        assert load(path)[1]["cite"].strip(), path.name


@pytest.mark.parametrize("path", cases("valid"), ids=lambda p: p.stem)
def test_valid(path):
    data, exp = load(path)
    want = expected_events(exp)
    assert merge(parser(exp).feed(data)) == want
    assert merge(feed_all(parser(exp), data, 1)) == want


@pytest.mark.parametrize("path", cases("valid"), ids=lambda p: p.stem)
def test_valid_environ(path):
    data, exp = load(path)
    envs = [ev[1] for ev in parser(exp, environ={}).feed(data) if ev[0] == "environ"]
    assert len(envs) == len(exp["requests"])
    for env, r in zip(envs, exp["requests"]):
        for key, value in r.get("environ", {}).items():
            assert env[key] == value, key
        for key in exp.get("absent", []):
            assert key not in env
        for key, value in env.items():
            assert type(key) is str and type(value) is str   # PEP 3333 native strings


@pytest.mark.parametrize("path", cases("invalid"), ids=lambda p: p.stem)
@pytest.mark.parametrize("step", [0, 1, 7])
def test_invalid(path, step):
    data, exp = load(path)
    p = parser(exp)
    events = []
    with pytest.raises(_core.HTTPError) as info:
        for i in range(0, len(data), step or len(data)):
            events += p.feed(data[i:i + (step or len(data))])
        p.feed(b"")     # events before an error come first, the error on the next feed()
    assert (info.value.status, info.value.code) == (exp["status"], exp["error"])
    assert sum(1 for ev in events if ev[0] in ("head", "vars")) == exp["requests_before"]
    # nothing after an error reaches the app: the parser stays failed
    with pytest.raises(_core.HTTPError):
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_error_is_one_exception_with_status():
    with pytest.raises(_core.HTTPError) as info:
        _core.RequestParser().feed(b"GET / HTTP/2.0\r\n\r\n")
    e = info.value
    assert e.status == 505 and e.reason == "HTTP Version Not Supported"
    assert "505" in str(e)


def test_slow_drip_head_is_linear():
    # h11 _receivebuffer lesson: the end-of-head search resumes, it does not rescan.
    p = _core.RequestParser(buffer_size=65536, max_headers=10000)
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 5000
    for i in range(len(head)):
        assert p.feed(head[i:i + 1]) == []
    assert p.feed(b"\r\n")[0][0] == "head"


def test_body_larger_than_buffer():
    body = bytes(range(256)) * 64
    p = _core.RequestParser(buffer_size=256)
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    events = merge(p.feed(data))
    assert events[1] == ("body", body) and events[2] == ("end",)


def test_constructor_limits():
    with pytest.raises(ValueError):
        _core.RequestParser(buffer_size=10)
    with pytest.raises(ValueError):
        _core.RequestParser(protocol="spdy")


# -- chunk-split invariance (hypothesis) -----------------------------------------------------
VALID_STREAMS = [load(p) for p in cases("valid")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_STREAMS), st.lists(st.integers(min_value=0, max_value=1 << 16),
                                               max_size=20))
def test_any_split_gives_same_events(case, cuts):
    data, exp = case
    whole = merge(parser(exp).feed(data))
    points = sorted({c % (len(data) + 1) for c in cuts})
    p = parser(exp)
    events = []
    prev = 0
    for c in points + [len(data)]:
        events += p.feed(data[prev:c])
        prev = c
    assert merge(events) == whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([s for s in VALID_STREAMS if "protocol" not in s[1]
                                 and all(r["keep_alive"] for r in s[1]["requests"])]),
                min_size=2, max_size=5),
       st.integers(min_value=1, max_value=64))
def test_pipelined_streams_split(streams, step):
    data = b"".join(d for d, _ in streams)
    want = [ev for d, e in streams for ev in expected_events(e)]
    assert merge(feed_all(_core.RequestParser(), data, step)) == want


# -- environ details ---------------------------------------------------------------------------
def test_known_header_keys_are_interned():
    # STYLE §2.2: common header names map to pre-built interned HTTP_* keys
    env = _core.RequestParser(environ={}).feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\nAccept-Encoding: gzip\r\n"
        b"X-Rare-Header: y\r\n\r\n")[0][1]
    keys = {k: k for k in env}
    for name in ("HTTP_HOST", "HTTP_USER_AGENT", "HTTP_ACCEPT_ENCODING"):
        assert keys[name] is sys.intern(name)
    assert env["HTTP_X_RARE_HEADER"] == "y"


def uwsgi_packet(pairs):
    body = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
                    for k, v in pairs)
    return b"\x00" + struct.pack("<H", len(body)) + b"\x00" + body


@pytest.mark.parametrize("path", [p for p in cases("valid")
                                  if "protocol" not in load(p)[1]], ids=lambda p: p.stem)
def test_uwsgi_gives_the_same_environ(path):
    # issue 3 item 2: a uwsgi packet carrying the CGI vars of a request yields the environ
    # the HTTP parser builds for it (the body follows raw, framed by CONTENT_LENGTH)
    data, exp = load(path)
    base = {"SERVER_NAME": "n", "SERVER_PORT": "80", "SCRIPT_NAME": ""}
    events = parser(exp, environ=dict(base)).feed(data)
    env = next(ev[1] for ev in events if ev[0] == "environ")
    body = b"".join(ev[1] for ev in events[:events.index(("end",))] if ev[0] == "body")
    cgi = {k: v for k, v in env.items() if k not in base}
    if body:
        cgi["CONTENT_LENGTH"] = str(len(body))
    pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in cgi.items()]
    up = _core.RequestParser(buffer_size=65535, protocol="uwsgi", environ=dict(base))
    uevents = up.feed(uwsgi_packet(pairs) + body)
    assert uevents[0] == ("environ", dict(base, **cgi))
    assert merge(uevents[1:]) == ([("body", body)] if body else []) + [("end",)]


class _StdlibRequest(__import__("http.server").server.BaseHTTPRequestHandler):
    """The stdlib's own request-head parser, fed from bytes (no socket)."""

    def __init__(self, data):
        self.rfile = io.BytesIO(data)
        self.wfile = io.BytesIO()
        self.raw_requestline = self.rfile.readline(65537)
        while self.raw_requestline == b"\r\n":          # RFC 9112 §2.2, as we do
            self.raw_requestline = self.rfile.readline(65537)
        self.ok = self.parse_request()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("path", [p for p in cases("valid") if "protocol" not in load(p)[1]],
                         ids=lambda p: p.stem)
def test_valid_against_stdlib_parser(path):
    # STYLE §4: an independent oracle (h11 does the same against the stdlib)
    data, exp = load(path)
    ours = parser(exp).feed(data)[0]
    std = _StdlibRequest(data)
    assert std.ok
    assert (std.command, std.path, std.request_version) == (
        ours[1].decode("latin-1"), ours[2].decode("latin-1"), ours[3].decode("latin-1"))
    assert [(k, v.strip(" \t")) for k, v in std.headers.items()] == [
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in ours[4]]


# -- the same corpus through a real server, sync and async (issue 8) ------------------------
# Each case is sent over loopback to _core.serve() or _core.serve_async() (the greenlet hub
# reads and parses heads itself, so this is the hub's parse path); the app answers with the
# environ and the body it read.  Valid: one response per expected request, with that environ
# and body.  Invalid: the requests before the error are answered, then the error status
# (HTTP), or the connection is dropped without a byte (uwsgi, as uWSGI).

import contextlib
import socket

import core_fixtures
from core_fixtures import connect, read_responses, recv_all, serving


def corpus_app(env, start_response):
    body = env["wsgi.input"].read()
    out = {k: v for k, v in env.items() if type(v) is str}
    out["__body__"] = body.decode("latin-1")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(out).encode()]


@pytest.fixture(scope="module")
def corpus_servers():
    # one server per (mode, protocol, buffer_size, max_headers), started on first use
    stack = contextlib.ExitStack()
    started = {}

    def get(mode, exp):
        key = (mode, exp.get("protocol", "http"), exp.get("buffer_size", 4096),
               exp.get("max_headers", 100))
        if key not in started:
            core_fixtures.set_mode(mode)
            try:
                kind = "uwsgi" if key[1] == "uwsgi" else "http11"
                started[key] = stack.enter_context(serving(
                    corpus_app, kinds=(kind,), buffer_size=key[2], max_vars=key[3]))[0][0]
            finally:
                core_fixtures.set_mode("sync")
        return started[key]

    with stack:
        yield get


def exchange(port, data):
    s = connect(port)
    try:
        s.sendall(data)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        return recv_all(s)
    except ConnectionResetError:
        return b""
    finally:
        s.close()


class _Buffered:
    def __init__(self, data):
        self.data = data

    def recv_into(self, b):
        n = min(len(b), len(self.data))
        b[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def _decref_socketios(self):
        pass

    def readable(self):
        return True


def parse_all(raw, methods):
    fake = _Buffered(raw)
    return read_responses(fake, methods)


@pytest.mark.parametrize("mode", core_fixtures.MODES)
@pytest.mark.parametrize("path", cases("valid"), ids=lambda p: p.stem)
def test_valid_over_socket(path, mode, corpus_servers):
    data, exp = load(path)
    raw = exchange(corpus_servers(mode, exp), data)
    responses = parse_all(raw, [r.get("method", "GET") for r in exp["requests"]])
    assert len(responses) == len(exp["requests"])
    for (status, _, body, _), r in zip(responses, exp["requests"]):
        assert status == 200
        if r.get("method") == "HEAD":
            continue
        env = json.loads(body)
        for key, value in r.get("environ", {}).items():
            assert env[key] == value, key
        for key in exp.get("absent", []):
            assert key not in env
        assert env["__body__"] == r["body"]


@pytest.mark.parametrize("mode", core_fixtures.MODES)
@pytest.mark.parametrize("path", cases("invalid"), ids=lambda p: p.stem)
def test_invalid_over_socket(path, mode, corpus_servers):
    data, exp = load(path)
    raw = exchange(corpus_servers(mode, exp), data)
    n = exp["requests_before"]
    if exp.get("protocol") == "uwsgi":
        assert raw.count(b"HTTP/1.1 200 OK") == n and b"HTTP/1.1 4" not in raw
        return
    # an error inside a body (chunked framing) is the answer to that request itself
    events = []
    with contextlib.suppress(_core.HTTPError):
        p = parser(exp)
        events += p.feed(data)
        events += p.feed(b"")
    in_body = n > 0 and events and events[-1][0] != "end"
    ok = n - 1 if in_body else n
    responses = parse_all(raw, ["GET"] * (ok + 1))
    assert [r[0] for r in responses] == [200] * ok + [exp["status"]]
