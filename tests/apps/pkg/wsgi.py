"""A module-style app: `module = pkg.wsgi:app` (and `callable = app`)."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"module"]


not_callable = 42
