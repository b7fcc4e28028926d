"""Real apps (Flask, Django) and real nginx in front (uwsgi_pass and proxy_pass)."""
from __future__ import annotations

import shutil
import subprocess

import e2e_support
import pytest
from e2e_support import APPS, WAIT, free_port, get, wait_for

serve = e2e_support.serve          # the fixture, shared by the e2e modules


def test_flask_app(serve):
    pytest.importorskip("flask")
    port = free_port()
    serve("--http11-socket", f"127.0.0.1:{port}", "--master", "--module", "flask_hello:app",
          "--pythonpath", str(APPS)).wait_tcp(port)
    status, _, body = get(port)
    assert (status, body) == (200, b"Hello from Flask")
    status, _, body = get(port, "/echo", method="POST", body=b"z" * 20000,
                          headers={"Content-Type": "application/octet-stream"})
    assert (status, body) == (200, b"z" * 20000)
    assert get(port, "/nope")[0] == 404


def test_django_app(serve):
    pytest.importorskip("django")
    port = free_port()
    serve("--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "2",
          "--module", "djangohello.wsgi", "--pythonpath", str(APPS)).wait_tcp(port)
    status, headers, body = get(port, "/?q=jail")
    assert status == 200 and body == b"Hello from Django GET jail"
    assert headers["Content-Type"].startswith("text/html")


class Nginx:
    def __init__(self, tmp, port, location):
        conf = tmp / f"nginx-{port}.conf"
        conf.write_text(f"""
daemon off; master_process off; worker_processes 1; pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-{port}.err warn;
events {{ worker_connections 256; }}
http {{
  access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  include /etc/nginx/uwsgi_params;
  server {{ listen 127.0.0.1:{port}; location / {{ {location} }} }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(conf)], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def nginx(tmp_path):
    if shutil.which("nginx") is None:
        pytest.skip("nginx not installed (apt-get install nginx)")
    started = []

    def start(location):
        n = Nginx(tmp_path, free_port(), location)
        started.append(n)
        wait_for(lambda: _accepts(n.port) or n.proc.poll() is not None, "nginx to accept")
        assert n.proc.poll() is None, (tmp_path / f"nginx-{n.port}.err").read_text()
        return n
    yield start
    for n in started:
        n.stop()


def _accepts(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def behind_nginx(serve, nginx, socket_option: str, location: str) -> int:
    """probe.py served on socket_option, nginx in front with location ({up}: the upstream's
    port); checks five GETs through nginx and returns nginx's port."""
    up = free_port()
    serve(socket_option, f"127.0.0.1:{up}", "--master", "--wsgi-file", str(APPS / "probe.py")).wait_tcp(up)
    front = nginx(location.format(up=up))
    for _ in range(5):
        assert get(front.port)[2] == b"Hello, World!"
    return front.port


def test_nginx_uwsgi_pass_to_socket(serve, nginx):
    port = behind_nginx(serve, nginx, "--socket", "uwsgi_pass 127.0.0.1:{up};")
    status, _, body = get(port, "/echo", method="POST", body=b"y" * 16384)
    assert (status, body) == (200, b"y" * 16384)
    status, _, body = get(port, "/big?65536")
    assert status == 200 and body == b"x" * 65536


def test_nginx_proxy_pass_to_http11_socket(serve, nginx):
    port = behind_nginx(serve, nginx, "--http11-socket",
                        'proxy_pass http://127.0.0.1:{up}; proxy_http_version 1.1; proxy_set_header Connection "";')
    status, _, body = get(port, "/echo", method="POST", body=b"q" * 5000)
    assert (status, body) == (200, b"q" * 5000)
