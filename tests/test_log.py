"""log: uWSGI's default request line, log-format, and logto redirecting fds 1 and 2."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

from jailserve import log

ENVIRON = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/a?b=1", "SERVER_PROTOCOL": "HTTP/1.1",
           "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "x", "HTTP_USER_AGENT": "curl/8", "wsgi.input": object()}


def request(duration_ns=2_500_000):
    end = time.monotonic_ns()
    return log.Request(ENVIRON, 200, 13, end - duration_ns, end, 2, 64, 4242, 1, 3, 7)


def test_default_line_is_uwsgis():
    line = log.default_line(request())
    pattern = (r"\[pid: 4242\|app: 0\|req: 3/7\] 127\.0\.0\.1 \(\) \{6 vars in \d+ bytes\} "
               r"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] GET /a\?b=1 => generated 13 bytes in 2 msecs "
               r"\(HTTP/1\.1 200\) 2 headers in 64 bytes \(1 switches on core 0\)$")
    assert re.match(pattern, line), line
    assert "in 2500 micros" in log.default_line(request(), micros=True)


def test_vars_bytes_count_as_uwsgi_packet():
    strs = {k: v for k, v in ENVIRON.items() if isinstance(v, str)}
    assert log._vars_bytes(request()) == sum(4 + len(k) + len(v) for k, v in strs.items())


def test_log_format_fields_and_unknown_names():
    parts = log.compile_format("%(addr) %(method) %(uri) %(status) %(size) %(msecs)ms %(nosuch) [%(pid)/%(wid)] %(uagent)")
    assert log.render(parts, request()) == "127.0.0.1 GET /a?b=1 200 13 2ms %(nosuch) [4242/1] curl/8"
    assert log.render(log.compile_format("plain"), request()) == "plain"
    assert log.render(log.compile_format("%(status"), request()) == "%(status"


def test_logto_sends_stdout_and_stderr_to_the_file(tmp_path):
    target = tmp_path / "server.log"
    target.write_text("old line\n")
    code = textwrap.dedent(f"""
        import os, sys
        from jailserve import log
        log.setup_logto({str(target)!r})
        print("from print")
        log.emit("from emit")
        os.write(1, b"from fd 1\\n")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": root})
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    assert sorted(target.read_text().splitlines()) == sorted(["old line", "from print", "from emit", "from fd 1"])
