"""A test app that reports what the server gave it, and can misbehave on request.

/            hello
/whoami      pid, uid, gid, groups, cwd, worker id, numproc, masterpid, an opt value, env TESTVAR
/sleep?N     sleeps N seconds (for harakiri and graceful-stop tests); with PROBE_MARKS=dir
             in the environment it first creates dir/sleeping-PID
/echo        the request body back
/big?N       N bytes of 'x'
"""
import json
import os
import time

import uwsgi  # provided by jailserve at run time: the test fails if it is not

LOADED_IN = os.getpid()


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/whoami":
        body = json.dumps({
            "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
            "cwd": os.getcwd(), "worker_id": uwsgi.worker_id(), "numproc": uwsgi.numproc,
            "masterpid": uwsgi.masterpid(), "opt_processes": uwsgi.opt.get("processes"),
            "testvar": os.environ.get("TESTVAR"), "loaded_in": LOADED_IN,
        }).encode()
    elif path == "/sleep":
        if os.environ.get("PROBE_MARKS"):      # tells the test the request is in the app now
            open(os.path.join(os.environ["PROBE_MARKS"], f"sleeping-{os.getpid()}"), "w").close()
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
        body = b"slept"
    elif path == "/echo":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    elif path == "/big":
        body = b"x" * int(environ.get("QUERY_STRING") or "65536")
    else:
        body = b"Hello, World!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
