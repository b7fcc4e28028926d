"""log: uWSGI's default request line, log-format, and logto redirecting fds 1 and 2."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

from jailserve import log


def request(micros=2500):
    return log.Request("GET", "/a?b=1", "HTTP/1.1", 200, 13, micros, "127.0.0.1", 2, 64, 6, 118,
                       time.time(), pid=4242, wid=1, req=3, total=7,
                       environ={"HTTP_USER_AGENT": "curl/8"})


def test_default_line_is_uwsgis():
    line = log.default_line(request())
    pattern = (r"\[pid: 4242\|app: 0\|req: 3/7\] 127\.0\.0\.1 \(\) \{6 vars in 118 bytes\} "
               r"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] GET /a\?b=1 => generated 13 bytes in 2 msecs "
               r"\(HTTP/1\.1 200\) 2 headers in 64 bytes \(1 switches on core 0\)$")
    assert re.match(pattern, line), line
    assert "in 2500 micros" in log.default_line(request(), micros=True)


def test_log_format_fields_and_unknown_names():
    parts = log.compile_format("%(addr) %(method) %(uri) %(status) %(size) %(msecs)ms %(nosuch) [%(pid)/%(wid)] %(uagent)")
    assert log.render(parts, request()) == "127.0.0.1 GET /a?b=1 200 13 2ms %(nosuch) [4242/1] curl/8"
    assert log.render(log.compile_format("plain"), request()) == "plain"
    assert log.render(log.compile_format("%(status"), request()) == "%(status"


def test_request_log_callback_counts_per_worker(capfd):
    from jailserve.config import load_config

    rl = log.RequestLog(load_config(["--http-socket", ":8000", "--log-format", "%(wid) %(uri) %(status)"], {}))
    rl.start(3)
    rl("GET", "/x", "HTTP/1.1", 404, 0, 10, "::1", 1, 20, 5, 90, time.time())
    assert capfd.readouterr().err == "3 /x 404\n"


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
