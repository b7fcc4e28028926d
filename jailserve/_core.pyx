# cython: language_level=3
"""The hot path: sans-I/O HTTP/1.1 and uwsgi parsers, WSGI environ, response writer, serve loop.

(Being written; see docs/internals.md for the interface the rest of jailserve relies on.)
"""
