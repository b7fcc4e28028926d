"""The benchmark app, the same file for every server: hello, POST echo, 64 KiB body."""

HELLO = b"Hello, World!"
BIG = b"x" * 65536


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
    elif path == "/big":
        body = BIG
    else:
        body = HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
