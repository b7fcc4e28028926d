"""Shared fixtures for the whole suite."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_jailserve(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess:
    """python -m jailserve ARGS as a real process; returns the completed process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("UWSGI_")}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "jailserve", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def jailserve_cli():
    return run_jailserve
