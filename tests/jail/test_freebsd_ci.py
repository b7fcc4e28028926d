""".cirrus.yml: valid YAML with a FreeBSD 14 task that builds and runs the whole suite as root."""
from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to parse .cirrus.yml")

CIRRUS = Path(__file__).resolve().parents[2] / ".cirrus.yml"


def task() -> dict:
    return yaml.safe_load(CIRRUS.read_text())["freebsd_task"]


def commands(t: dict) -> list[str]:
    return [c for key, value in t.items() if key.endswith("_script") for c in value]


def test_freebsd_14_instance():
    assert task()["freebsd_instance"]["image_family"].startswith("freebsd-14")


def test_installs_python_builds_and_runs_the_whole_suite_as_root():
    cmds = commands(task())
    assert any(c.startswith("pkg install -y python311") for c in cmds)
    assert "python3.11 setup.py build_ext --inplace" in cmds
    assert 'test "$(id -u)" = 0' in cmds
    assert "python3.11 -m pytest -q -rs -p no:cacheprovider" in cmds      # the whole suite
    assert any("tests/jail/test_freebsd_live.py" in c for c in cmds)
