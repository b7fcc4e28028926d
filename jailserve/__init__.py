"""jailserve: a WSGI application server that reads uWSGI configs and jails itself from them."""

__version__ = "0.1.0"
