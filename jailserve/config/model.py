"""The immutable result of reading a configuration: ordered entries with provenance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import Origin
from ..options import REGISTRY, Option


@dataclass(frozen=True, slots=True)
class Entry:
    """One applied occurrence of a known option."""

    name: str        # canonical option name (aliases resolved)
    raw: str         # the text after every expansion pass
    value: Any       # typed by the option's shape
    origin: Origin
    spelled: str = ""  # the name as written (an alias, a short option...), for messages

    @property
    def option(self) -> Option:
        return REGISTRY[self.name]


@dataclass(frozen=True, slots=True)
class Warning_:
    message: str
    origin: Origin | None = None
    option: str | None = None

    def __str__(self) -> str:
        parts = [str(self.origin)] if self.origin else []
        if self.option:
            parts.append(f"option '{self.option}'")
        parts.append(self.message)
        return ": ".join(parts)


class Config:
    """Every known option's entries in application order, plus uWSGI placeholders.

    Scalars are last-wins (each uWSGI application overwrites the field), repeatable options
    keep every value in order (UWSGI_SEMANTICS §1.2).
    """

    def __init__(self, entries: list[Entry], placeholders: dict[str, str], warnings: list[Warning_],
                 argv: list[str], is_reload: bool, files: list[str], platform: str,
                 listing: list[tuple[str, str]] = ()):
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.placeholders = dict(placeholders)
        self.warnings: tuple[Warning_, ...] = tuple(warnings)
        self.argv = list(argv)
        self.is_reload = is_reload
        self.files = list(files)
        self.platform = platform   # the platform validated for (--check-platform, else this one)
        # every (key as written, value) in uWSGI's list order, logic keywords and placeholders
        # included: what uWSGI's --show-config prints
        self.listing: tuple[tuple[str, str], ...] = tuple(listing)
        self._by_name: dict[str, list[Entry]] = {}
        for entry in self.entries:
            self._by_name.setdefault(entry.name, []).append(entry)

    def _option(self, name: str) -> Option:
        opt = REGISTRY.get(name)
        if opt is None:
            raise KeyError(f"no option named {name!r} in the registry")
        return opt

    def entries_for(self, name: str) -> list[Entry]:
        return list(self._by_name.get(self._option(name).name, ()))

    def has(self, name: str) -> bool:
        return bool(self._by_name.get(self._option(name).name))

    def get(self, name: str) -> Any:
        opt = self._option(name)
        found = self._by_name.get(opt.name)
        if opt.repeat:
            return [e.value for e in found] if found else []
        if found:
            return found[-1].value
        if opt.default is None and not opt.shape.takes_value:
            return False
        return opt.default

    def origin(self, name: str) -> Origin | None:
        found = self._by_name.get(self._option(name).name)
        return found[-1].origin if found else None

    def uwsgi_opt(self) -> dict[str, Any]:
        """uwsgi.opt as uWSGI exposes it: name -> value, a list when repeated, raw strings
        (uWSGI gives bytes on Python 3; jailserve gives str and says so in docs)."""
        out: dict[str, Any] = {}
        for entry in self.entries:
            value = entry.raw if entry.option.shape.takes_value else True
            if entry.name in out:
                prev = out[entry.name]
                out[entry.name] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                out[entry.name] = value
        for key, value in self.placeholders.items():
            out.setdefault(key, value)
        return out
