"""Request heads per second: jailserve._core.RequestParser against httptools and h11.

Not a test (pyproject testpaths = tests): run with
    pip install pytest-benchmark httptools h11
    python -m pytest bench/micro -q --benchmark-columns=mean,ops,rounds

Each parser gets the same bytes and produces what its users need from a head:
- `*-fields`: method, target, version and the (name, value) pairs as bytes
  (httptools: the callbacks collect them; h11: a Request event; jailserve: the "head" event);
- `*-environ`: a PEP 3333 environ dict (CGI keys, HTTP_* keys, latin-1 str values).  For
  httptools the environ is built in Python from its callbacks, which is what a WSGI server on
  httptools has to do; jailserve builds it in C from the spans (what serve() does per request).
A parser object is reused across rounds where the library allows it (keep-alive); h11 needs a
new Connection per request unless a response is sent, so it gets one per round.
"""
import h11
import httptools
import pytest

from jailserve import _core

HEADS = {
    "small": b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    "browser": (
        b"GET /wp-content/uploads/2010/03/hello-kitty-darth-vader-pink.jpg?size=large HTTP/1.1\r\n"
        b"Host: www.kittyhell.com\r\n"
        b"User-Agent: Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10.6; ja-JP-mac; rv:1.9.2.3) "
        b"Gecko/20100401 Firefox/3.6.3 Pathtraq/0.9\r\n"
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        b"Accept-Language: ja,en-us;q=0.7,en;q=0.3\r\n"
        b"Accept-Encoding: gzip,deflate\r\n"
        b"Accept-Charset: Shift_JIS,utf-8;q=0.7,*;q=0.7\r\n"
        b"Keep-Alive: 115\r\n"
        b"Connection: keep-alive\r\n"
        b"Cookie: wp_ozh_wsa_visits=2; wp_ozh_wsa_visit_lasttime=xxxxxxxxxx; "
        b"__utma=xxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.x; "
        b"__utmz=xxxxxxxxx.xxxxxxxxxx.x.x.utmccn=(referral)|utmcsr=reader.livedoor.com|"
        b"utmcct=/reader/|utmcmd=referral\r\n"
        b"\r\n"),
    "many-custom": (b"POST /api/v1/items?id=42&x=%20y HTTP/1.1\r\nHost: api.example.com\r\n"
                    + b"".join(b"X-Custom-%02d: value-%02d\r\n" % (i, i) for i in range(20))
                    + b"Content-Length: 0\r\n\r\n"),
}
IDS = list(HEADS)


# -- httptools --------------------------------------------------------------------------------
class Fields:
    def __init__(self):
        self.headers = []
        self.url = b""
        self.done = 0

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_message_complete(self):
        self.done += 1


class Environ(Fields):
    """What a WSGI server over httptools does: environ from the callbacks, in Python."""

    def __init__(self):
        super().__init__()
        self.parser = None
        self.env = None

    def on_headers_complete(self):
        p = self.parser
        url = httptools.parse_url(self.url)
        env = {"REQUEST_METHOD": p.get_method().decode("latin-1"),
               "SERVER_PROTOCOL": "HTTP/" + p.get_http_version(), "SCRIPT_NAME": "",
               "PATH_INFO": url.path.decode("latin-1"),
               "QUERY_STRING": (url.query or b"").decode("latin-1"),
               "REQUEST_URI": self.url.decode("latin-1")}
        for name, value in self.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            value = value.decode("latin-1")
            if key in env:
                value = env[key] + ", " + value
            env[key] = value
        self.env = env
        self.headers = []
        self.url = b""


@pytest.mark.parametrize("name", IDS)
def test_httptools_fields(benchmark, name):
    data = HEADS[name]
    proto = Fields()
    parser = httptools.HttpRequestParser(proto)

    def run():
        proto.headers = []
        proto.url = b""
        parser.feed_data(data)
        return parser.get_method(), proto.url, parser.get_http_version(), proto.headers

    assert len(benchmark(run)[3]) == data.count(b"\r\n") - 2


@pytest.mark.parametrize("name", IDS)
def test_httptools_environ(benchmark, name):
    data = HEADS[name]
    proto = Environ()
    parser = httptools.HttpRequestParser(proto)
    proto.parser = parser

    def run():
        parser.feed_data(data)
        return proto.env

    assert benchmark(run)["REQUEST_METHOD"] in ("GET", "POST")


# -- h11 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IDS)
def test_h11_fields(benchmark, name):
    data = HEADS[name]

    def run():
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        return conn.next_event()

    assert isinstance(benchmark(run), h11.Request)


# -- jailserve --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IDS)
def test_jailserve_fields(benchmark, name):
    data = HEADS[name]
    parser = _core.RequestParser()

    def run():
        return parser.feed(data)

    assert benchmark(run)[0][0] == "head"


@pytest.mark.parametrize("name", IDS)
def test_jailserve_environ(benchmark, name):
    data = HEADS[name]
    parser = _core.RequestParser(environ={"SERVER_NAME": "bench", "SERVER_PORT": "80"})

    def run():
        return parser.feed(data)

    assert benchmark(run)[0][1]["REQUEST_METHOD"] in ("GET", "POST")
