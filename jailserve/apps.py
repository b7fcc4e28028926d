"""The WSGI application: planning (pure) and loading (in the master, or per worker with lazy-apps).

What uWSGI's python plugin does, in its order (plugins/python/python_plugin.c, pyloader.c):
`pythonpath` entries go first on sys.path, `virtualenv`/`home` makes the venv's site-packages
importable, then `wsgi-file` is executed as a module named `uwsgi_file_<mangled path>` or
`module` is imported, and the `callable` (default `application`) is looked up in it.

Paths are checked when the app is loaded, not when the config is validated: they are read
after `chdir`, inside the jail and as `uid`, so the file the master will see may not exist
(or be readable) from where the config is checked.  A load failure is fatal, as uWSGI's
`need-app` (exit code 22), rather than uWSGI 2.0's default of serving 500s.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass

from .errors import ConfigError, Origin

# uWSGI's UWSGI_FAILED_APP_CODE: a worker exiting with it makes the master give up.
FAILED_APP_CODE = 22


class AppLoadError(Exception):
    """The app could not be loaded; the message says what and where."""


@dataclass(frozen=True, slots=True)
class AppSpec:
    wsgi_file: str | None
    module: str | None
    callable: str
    chdir: str | None
    pythonpath: tuple[str, ...]
    virtualenv: str | None
    env: tuple[tuple[str, str], ...]
    lazy: bool
    origin: Origin | None

    def describe(self) -> str:
        if self.wsgi_file:
            source = f"wsgi-file {self.wsgi_file}"
        elif self.module:
            source = f"module {self.module}"
        else:
            source = "no application (every request gets a 500, as uWSGI's dynamic mode)"
        if self.wsgi_file or self.module:
            source += f", callable {self.callable}"
        parts = [source, "loaded in each worker (lazy-apps)" if self.lazy else "loaded in the master"]
        if self.chdir:
            parts.append(f"chdir {self.chdir}")
        if self.pythonpath:
            parts.append(f"pythonpath {':'.join(self.pythonpath)}")
        if self.virtualenv:
            parts.append(f"virtualenv {self.virtualenv}")
        return "app: " + "; ".join(parts)


def plan_app(config) -> AppSpec:
    """config -> AppSpec; ConfigError for what can be known to be wrong before start-up."""
    wsgi_file, module = config.get("wsgi-file"), config.get("module")
    if wsgi_file and module:
        raise ConfigError("set either wsgi-file or module, not both (jailserve serves one app)",
                          config.origin("module"), "module")
    name, attr = _split_module(config, module) if module else (None, config.get("callable"))
    if not attr.isidentifier():
        raise ConfigError(f"'{attr}' is not a Python name", config.origin("callable"), "callable")
    origin = config.origin("wsgi-file" if wsgi_file else "module") if (wsgi_file or module) else None
    return AppSpec(
        wsgi_file=wsgi_file, module=name, callable=attr, chdir=config.get("chdir"),
        pythonpath=tuple(config.get("pythonpath")), virtualenv=config.get("virtualenv"),
        env=tuple(config.get("env")), lazy=config.get("lazy-apps") or config.get("lazy"),
        origin=origin)


def _split_module(config, text: str) -> tuple[str, str]:
    # `module = pkg.mod:callable` overrides `callable`; `pkg.mod` alone uses it.
    name, sep, attr = text.strip().partition(":")
    attr = attr.strip() if sep else config.get("callable")
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"'{text}' is not a module path (allowed: pkg.mod or pkg.mod:callable)",
                          config.origin("module"), "module")
    return name, attr


# ---------------------------------------------------------------------------------------
# loading (side effects: sys.path, imports)


def apply_env(spec: AppSpec) -> None:
    """`env = K=V`: uWSGI puts these in the environment while reading the config, so hooks
    and the app see them; we do it at the start of run(), before the first hook."""
    for key, value in spec.env:
        os.environ[key] = value


def prepare_paths(spec: AppSpec) -> None:
    """pythonpath first on sys.path (uWSGI inserts each at the front), then the virtualenv."""
    for path in reversed(spec.pythonpath):
        sys.path.insert(0, path)
    if spec.virtualenv:
        _activate_virtualenv(spec.virtualenv)


def _activate_virtualenv(home: str) -> None:
    # uWSGI sets PYTHONHOME before the interpreter starts; ours is running already, so we add
    # the venv's site-packages as site.py would.  The venv must be for this Python version.
    import site

    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site_packages = os.path.join(home, "lib", version, "site-packages")
    if not os.path.isdir(site_packages):
        raise AppLoadError(f"virtualenv {home}: no {site_packages} (a venv for {version} is needed)")
    site.addsitedir(site_packages)
    os.environ["VIRTUAL_ENV"] = home


def load(spec: AppSpec):
    """Import the app and return its callable; AppLoadError says what went wrong."""
    if not spec.wsgi_file and not spec.module:
        return no_app
    try:
        namespace = _load_file(spec.wsgi_file) if spec.wsgi_file else importlib.import_module(spec.module)
    except AppLoadError:
        raise
    except BaseException as exc:  # the app's own import error, SyntaxError, SystemExit...
        source = spec.wsgi_file or spec.module
        raise AppLoadError(f"unable to load {source}: {type(exc).__name__}: {exc}") from exc
    app = getattr(namespace, spec.callable, None)
    if app is None or not callable(app):
        source = spec.wsgi_file or spec.module
        raise AppLoadError(f"unable to find callable '{spec.callable}' in {source}")
    return app


def _load_file(path: str):
    """Run a wsgi-file as a module, as uWSGI's uwsgi_file_loader (name from the path)."""
    if not os.path.isfile(path):
        raise AppLoadError(f"unable to load wsgi-file {path}: no such file (cwd {os.getcwd()})")
    name = "uwsgi_file_" + "".join(c if c.isalnum() else "_" for c in path)
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    # The file's directory is importable, as `python file.py` would make it.
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    module_spec.loader.exec_module(module)
    return module


def no_app(environ, start_response):
    """uWSGI without a loaded app answers 500 and logs this line per request."""
    print("--- no python application found, check your startup logs for errors ---", file=sys.stderr)
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
    return [b"Internal Server Error"]
