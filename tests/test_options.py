"""The option registry: one record per option drives ini, CLI, env, --help and docs/options.md."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, run_jailserve
from jailserve.config import load_config
from jailserve.errors import ConfigError
from jailserve.options import REGISTRY

# UWSGI_SEMANTICS §1.4: uWSGI's short options that jailserve registers, letter -> option.
UWSGI_SHORTS = {"s": "socket", "p": "processes", "t": "harakiri", "S": "set", "l": "listen",
                "b": "buffer-size", "C": "chmod-socket", "T": "enable-threads", "i": "single-interpreter",
                "M": "master", "h": "help", "R": "max-requests", "z": "socket-timeout",
                "L": "disable-logging", "w": "module", "H": "virtualenv"}


def test_every_option_is_documented_and_grouped():
    for opt in REGISTRY.options:
        assert opt.help.strip(), opt.name
        assert opt.group.strip(), opt.name
        assert opt.platforms, opt.name


def test_short_options_are_uwsgis():
    for letter, name in UWSGI_SHORTS.items():
        assert REGISTRY.by_short[letter].name == name
    for letter, opt in REGISTRY.by_short.items():
        assert UWSGI_SHORTS.get(letter) == opt.name, f"-{letter} is not uWSGI's -{letter}"


def test_docs_options_md_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_options_doc.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_every_option_by_group():
    proc = run_jailserve("--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for group, options in REGISTRY.groups():
        assert f"\n{group}:\n" in "\n" + text, group
        section = text.split(f"{group}:\n", 1)[1].split("\n\n", 1)[0]
        for opt in options:
            assert f"--{opt.name}" in section, (group, opt.name)


@pytest.mark.parametrize("name,text,expected", [
    ("processes", "4", 4), ("harakiri", "30", 30), ("master", "", True), ("http-socket", ":9090", [":9090"]),
    ("chmod-socket", "660", 0o660), ("env", "A=b", [("A", "b")]), ("jail-ip4", "198.18.0.2", None),
])
def test_ini_cli_and_env_agree(tmp_path, monkeypatch, name, text, expected):
    """The same value through each source gives the same typed result (UWSGI_SEMANTICS §1.1)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.ini").write_text(f"[uwsgi]\n{name} = {text}\n")
    opt = REGISTRY[name]
    cli = [f"--{name}"] + ([text] if opt.shape.takes_value and not opt.shape.optional_value else [])
    if opt.shape.optional_value:
        cli = [f"--{name}={text}"]
    sources = [
        load_config(["a.ini"], {}),
        load_config(cli, {}),
        load_config([], {"UWSGI_" + name.upper().replace("-", "_"): text}),
    ]
    values = [c.get(name) for c in sources]
    assert values[0] == values[1] == values[2]
    if expected is not None:
        assert values[0] == expected


def test_unsupported_platform_option_is_known_but_refused(monkeypatch):
    """An option the registry marks for another OS fails with 'not supported on ...'."""
    from dataclasses import replace

    from jailserve import options
    from jailserve.config import loader

    fake = replace(REGISTRY["jailed"], platforms=frozenset({"freebsd"}))
    monkeypatch.setitem(REGISTRY.by_name, "jailed", fake)
    monkeypatch.setattr(loader, "current_platform", lambda: options.LINUX)
    with pytest.raises(ConfigError) as info:
        load_config(["--jailed"], {})
    assert "not supported on linux" in str(info.value)
