"""apps: plan_app validation, and loading wsgi-file / module / pythonpath / virtualenv for real."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from jailserve import apps
from jailserve.config import load_config
from jailserve.errors import ConfigError

APPS = os.path.join(os.path.dirname(__file__), "apps")


def plan(*argv):
    return apps.plan_app(load_config(["--http-socket", ":8000", *argv], {}))


def test_plan_module_with_and_without_callable():
    spec = plan("--module", "pkg.wsgi:app")
    assert (spec.module, spec.callable) == ("pkg.wsgi", "app")
    spec = plan("--module", "pkg.wsgi", "--callable", "app", "--lazy-apps", "--env", "A=1", "--pythonpath", "/x")
    assert (spec.module, spec.callable, spec.lazy, spec.env, spec.pythonpath) == ("pkg.wsgi", "app", True, (("A", "1"),), ("/x",))
    assert "lazy-apps" in spec.describe()


@pytest.mark.parametrize("argv, says", [
    (["--module", "pkg.wsgi", "--wsgi-file", "x.py"], "not both"),
    (["--module", "pkg..wsgi"], "not a module path"),
    (["--module", "pkg.wsgi:1app"], "not a Python name"),
    (["--wsgi-file", "x.py", "--callable", "a-b"], "not a Python name"),
])
def test_plan_errors(argv, says):
    with pytest.raises(ConfigError, match=says):
        plan(*argv)


def test_no_app_is_uwsgi_dynamic_mode():
    spec = plan()
    assert apps.load(spec) is apps.no_app
    assert "no application" in spec.describe()


def run_loader(argv, cwd=APPS):
    """Load in a fresh interpreter, so sys.path and sys.modules of the test run stay clean."""
    code = textwrap.dedent(f"""
        import sys
        from jailserve import apps
        from jailserve.config import load_config
        spec = apps.plan_app(load_config({argv!r}, {{}}))
        try:
            apps.prepare_paths(spec)
            app = apps.load(spec)
        except apps.AppLoadError as e:
            print("ERROR", e); sys.exit(3)
        out = []
        app({{}}, lambda s, h: out.append(s))
        print("OK", out[0], app.__module__)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root}, timeout=60)


def test_load_wsgi_file_relative_to_cwd():
    r = run_loader(["--wsgi-file", "hello.py"])
    assert r.stdout.startswith("OK 200 OK uwsgi_file_hello_py"), r.stderr


def test_load_module_through_pythonpath(tmp_path):
    r = run_loader(["--module", "pkg.wsgi:app", "--pythonpath", APPS], cwd=tmp_path)
    assert r.stdout.startswith("OK 200 OK pkg.wsgi"), r.stdout + r.stderr


def test_load_errors_are_reported(tmp_path):
    r = run_loader(["--wsgi-file", "missing.py"], cwd=tmp_path)
    assert r.returncode == 3 and "no such file" in r.stdout
    r = run_loader(["--module", "pkg.wsgi:not_callable", "--pythonpath", APPS], cwd=tmp_path)
    assert r.returncode == 3 and "unable to find callable 'not_callable'" in r.stdout
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    r = run_loader(["--wsgi-file", "broken.py"], cwd=tmp_path)
    assert r.returncode == 3 and "RuntimeError: boom at import" in r.stdout


def test_virtualenv_site_packages_become_importable(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (site / "venvapp.py").write_text(
        "def application(e, sr):\n    sr('200 OK', [])\n    return [b'venv']\n")
    r = run_loader(["--module", "venvapp", "--virtualenv", str(venv)], cwd=tmp_path)
    assert r.stdout.startswith("OK 200 OK venvapp"), r.stdout + r.stderr
    r = run_loader(["--module", "venvapp", "--virtualenv", str(tmp_path / "nope")], cwd=tmp_path)
    assert r.returncode == 3 and "a venv for python" in r.stdout
