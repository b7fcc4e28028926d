"""The example app: says hello, with the worker that answered."""
import os


def application(environ, start_response):
    body = f"hello from jailserve worker pid {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
