"""Bad configurations: exit 1, one line naming file, line and option, and nothing has happened.

Every case runs `python -m jailserve` as a real process on a config whose hooks would leave
marker files (asap, pre-jail, as-root), with a pidfile and a unix socket path: after the run
none of them may exist.  The positive control runs the same config without the bad line and
shows that the markers do appear when the config is good, so the check can fail.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import run_jailserve

BASE = """[uwsgi]
exec-asap = touch {tmp}/MARKER_ASAP
exec-pre-jail = touch {tmp}/MARKER_PRE_JAIL
exec-as-root = touch {tmp}/MARKER_AS_ROOT
pidfile = {tmp}/server.pid
http-socket = {tmp}/server.sock
wsgi-file = {tmp}/app.py
"""
BASE_LINES = BASE.count("\n")     # the bad line is appended as line BASE_LINES + 1
APP = "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n"

# (id, bad ini text appended to BASE (may span lines), extra argv, option named, where: "ini" = the
#  appended line (or ini+N for the Nth appended line), "cli", or a file name and line)
CASES = [
    ("int-word", "harakiri = soon", [], "harakiri", "ini"),
    ("int-garbage", "processes = 4x", [], "processes", "ini"),
    ("int-negative", "processes = -1", [], "processes", "ini"),
    ("bool-word", "master = maybe", [], "master", "ini"),
    ("nul-byte", "callable = app\0x", [], None, "ini"),
    ("malformed-section", "[uwsgi", [], None, "ini"),
    ("key-without-name", "= value", [], None, "ini"),
    ("port-out-of-range", "http-socket = 127.0.0.1:99999", [], "http-socket", "ini"),
    ("port-word", "http-socket = 127.0.0.1:http", [], "http-socket", "ini"),
    ("address-bad-ipv4", "http-socket = 300.1.2.3:8080", [], "http-socket", "ini"),
    ("jail-ip4-bad", "jail = /tmp h\njail-ip4 = 198.18.0.300", [], "jail-ip4", "ini+2"),
    ("jail-ip6-bad", "jail = /tmp h\njail-ip6 = fd00::zz", [], "jail-ip6", "ini+2"),
    ("jail-ip4-without-jail", "jail-ip4 = 198.18.0.2", [], "jail-ip4", "ini"),
    ("jail-with-attach", "jail = /tmp h\njail-attach = other", [], "jail-attach", "ini+2"),
    ("jail2-unknown-key", "jail2 = no.such.param=1", [], "jail2", "ini"),
    ("jail2-int-word", "jail2 = path=/tmp\njail2 = enforce_statfs=one", [], "jail2", "ini+2"),
    ("jail2-bool-word", "jail2 = path=/tmp\njail2 = allow.mount=maybe", [], "jail2", "ini+2"),
    ("jail2-bare-string", "jail2 = path", [], "jail2", "ini"),
    ("jail-empty", "jail =", [], "jail", "ini"),
    ("misspelled-option", "proceses = 4", [], "proceses", "ini"),
    ("stray-endif", "endif =", [], "endif", "ini"),
    ("unclosed-if", "if-exists = /\nprocesses = 2", [], "if-exists", "ini"),
    ("unknown-hook-action", "hook-pre-jail = frobnicate:x", [], "hook-pre-jail", "ini"),
    ("hook-without-action", "hook-as-root = touch-me", [], "hook-as-root", "ini"),
    ("buffer-size-zero", "buffer-size = 0", [], "buffer-size", "ini"),
    ("router-not-supported", "http = :8080", [], "http", "ini"),
    ("set-ph-option-name", "set-placeholder = processes=3", [], "set-placeholder", "ini"),
    ("strict-unknown", "strict = true\nsomething-else = 1", [], "something-else", "ini+2"),
    ("chmod-socket-bad", "chmod-socket = 999", [], "chmod-socket", "ini"),
    ("shared-ref-out-of-range", "socket = =3", [], "socket", "ini"),
    ("lock-engine-unknown", "lock-engine = spinlock", [], "lock-engine", "ini"),
    ("greenlet-without-async", "greenlet = true", [], "greenlet", "ini"),
    ("plugin-not-available", "plugin = python3,gevent", [], "plugin", "ini"),
    ("cli-unknown-option", "", ["--no-such-option", "1"], "no-such-option", "cli"),
    ("cli-bad-int", "", ["--harakiri", "soon"], "harakiri", "cli"),
    ("include-loop", "include = {tmp}/loop.ini", [], None, ("loop.ini", 2)),
]


def write_config(tmp: Path, bad: str) -> Path:
    (tmp / "app.py").write_text(APP)
    (tmp / "loop.ini").write_text(f"[uwsgi]\ninclude = {tmp}/bad.ini\n")
    text = BASE.format(tmp=tmp) + (bad.format(tmp=tmp) + "\n" if bad else "")
    path = tmp / "bad.ini"
    path.write_bytes(text.encode())
    return path


def leftovers(tmp: Path) -> list[str]:
    names = ["MARKER_ASAP", "MARKER_PRE_JAIL", "MARKER_AS_ROOT", "server.pid", "server.sock"]
    return [n for n in names if (tmp / n).exists()]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_config_stops_before_anything(case, tmp_path):
    _, bad, argv, option, where = case
    path = write_config(tmp_path, bad)
    proc = run_jailserve(str(path), *argv, cwd=tmp_path, timeout=30)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("jailserve: warning:")]
    assert len(errors) == 1, proc.stderr
    message = errors[0]
    if where == "cli":
        assert message.startswith("command line: "), message
    elif isinstance(where, tuple):
        assert message.startswith(f"{tmp_path / where[0]}:{where[1]}: "), message
    else:
        line = BASE_LINES + (int(where.partition("+")[2]) if "+" in where else 1)
        assert message.startswith(f"{path}:{line}: "), message
    if option is not None:
        assert f"option '{option}': " in message, message
    assert leftovers(tmp_path) == [], f"side effects before validation: {leftovers(tmp_path)}"


def test_bad_cases_count():
    assert len(CASES) >= 25


def test_positive_control_hooks_do_run(tmp_path):
    """The same config without a bad line runs its hooks (then an as-user hook fails on
    purpose, so the server stops): the markers above would have shown a side effect."""
    path = write_config(tmp_path, "exec-as-user = false")
    proc = run_jailserve(str(path), cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    made = set(leftovers(tmp_path))
    assert {"MARKER_ASAP", "MARKER_PRE_JAIL", "MARKER_AS_ROOT"} <= made, (made, proc.stderr)
    for name in ("server.sock",):
        if (tmp_path / name).exists():
            os.unlink(tmp_path / name)
