"""uwsgi_compat: the `uwsgi` module seen by apps."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_import_uwsgi_after_install():
    code = textwrap.dedent("""
        import json, sys
        try:
            import uwsgi
            print("importable before install"); sys.exit(1)
        except ImportError:
            pass
        from jailserve import uwsgi_compat
        from jailserve.config import load_config
        config = load_config(["--http-socket", ":8000", "--processes", "3", "--env", "A=1", "--env", "B=2", "--master"], {})
        uwsgi_compat.install(config, 3, 777)
        uwsgi_compat.set_worker_id(2)
        import uwsgi
        print(json.dumps([uwsgi.worker_id(), uwsgi.numproc, uwsgi.masterpid(), uwsgi.opt["processes"],
                          uwsgi.opt["env"], uwsgi.opt["master"], uwsgi is uwsgi_compat]))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": root})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == '[2, 3, 777, "3", ["A=1", "B=2"], true, true]'
