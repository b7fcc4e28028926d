"""whoami using only modules jailserve has already imported (os, uwsgi): after a drop to
nobody, the interpreter's install may not be readable, as in a jail without a stdlib."""
import os

import uwsgi


def application(environ, start_response):
    body = repr({"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
                 "worker_id": uwsgi.worker_id()}).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
