"""Run by test_freebsd_live.py as a child process, never imported by the suite.

argv: jailserve options.  The child builds the JailSpec, jails itself with the FreeBSD
backend (create or attach), prints one JSON line about the world it now sees, and waits
for a line on stdin so the test can look at the live jail with jls(8) and jexec(8).
Everything it needs is imported before jailing: after it, / is the jail's root.
"""
from __future__ import annotations

import json
import os
import socket
import sys

from jailserve import _jail
from jailserve.config import load_config
from jailserve.jail import backend_for
from jailserve.jail.spec import build_spec


def report(jid: int | None, bind: str | None) -> dict:
    jailed = _jail.sysctl_read("security.jail.jailed", 4)
    out = {"jid": jid, "cwd": os.getcwd(), "root": sorted(os.listdir("/")),
           "hostname": socket.gethostname(), "jailed": int.from_bytes(jailed, sys.byteorder)}
    if bind:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((bind, 0))
            out["bound"] = sock.getsockname()[0]
    return out


def main() -> int:
    spec = build_spec(load_config(sys.argv[1:], {}))
    backend = backend_for()
    jid = backend.create(spec) if spec.creates else backend.attach(spec)
    print(json.dumps(report(jid, os.environ.get("JS_BIND"))), flush=True)
    sys.stdin.readline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
