"""uWSGI's ini dialect (UWSGI_SEMANTICS §1.2, core/ini.c), with file:line for every line.

- the whole file is read, then magic %x variables are substituted over the raw text;
- lines split on \\n; space, tab and \\r stripped at both ends; empty lines ignored;
- a line whose first character is ';' or '#' is a comment; there are no inline comments;
- '[name]' starts a section; only the asked section counts (default 'uwsgi');
- any other line is split at the first '='; no '=' means the empty value; no quoting and
  no continuation lines; keys are case-sensitive; repeated keys are kept in order.

Refused where uWSGI silently misreads: a '[section' line that does not end in ']' (uWSGI
drops its last character, whatever it is) and NUL bytes.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..errors import ConfigError, Origin
from .magic import MagicContext, split_section

DEFAULT_SECTION = "uwsgi"
BLANKS = " \t\r"


@dataclass(frozen=True, slots=True)
class IniLine:
    key: str
    value: str
    origin: Origin


@dataclass(frozen=True, slots=True)
class IniFile:
    path: str            # the file as opened (for messages)
    section: str
    lines: tuple[IniLine, ...]
    found_section: bool


def read_text(path: str, origin: Origin | None) -> str:
    """A config file's text: '-' is stdin; a FIFO or /proc file is read to EOF."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror}", origin) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"'{path}' is not UTF-8 text (byte {e.start})", origin) from None


def parse_ini(lines: list[tuple[int, str]], path: str, section: str) -> IniFile:
    """The (key, value) lines of `section`, from (line number, text) pairs."""
    current = ""
    taken: list[IniLine] = []
    found = False
    for number, raw in lines:
        line = raw.strip(BLANKS)
        if not line:
            continue
        origin = Origin(path, number)
        if "\0" in line:
            raise ConfigError("line contains a NUL byte", origin)
        if line[0] == "[":
            if not line.endswith("]"):
                raise ConfigError(f"malformed section header {line!r} (allowed: [name])", origin)
            current = line[1:-1]
            continue
        if line[0] in ";#":
            continue
        if current != section:
            continue
        found = True
        key, _, value = line.partition("=")
        key = key.rstrip(BLANKS)
        if not key:
            raise ConfigError(f"line {line!r} has no key before '='", origin)
        taken.append(IniLine(key, value.strip(BLANKS), origin))
    return IniFile(path, section, tuple(taken), found)


class IniReader:
    """Reads ini files of one configuration, remembering the last one for ':section'."""

    def __init__(self, magic: MagicContext, warn=None):
        self.magic = magic
        self.warn = warn
        self.last_file: str | None = None

    def resolve(self, given: str, origin: Origin | None) -> tuple[str, str | None]:
        """(path, section) for `file[:section]`; ':section' means the last ini file read."""
        path, section = split_section(given)
        if "://" in path:
            raise ConfigError(f"config scheme in '{given}' is not supported (allowed: a file path or '-')", origin)
        if path == "":
            if self.last_file is None:
                raise ConfigError(f"'{given}': no ini file was loaded before to take a section from", origin)
            path = self.last_file
        if path != "-" and not os.path.exists(path):
            raise ConfigError(f"config file '{path}' does not exist", origin)
        return path, section or None

    def read(self, given: str, origin: Origin | None) -> IniFile:
        path, section = self.resolve(given, origin)
        self.last_file = path
        table = self.magic.table_for(path + (":" + section if section else ""))
        lines, notes = self.magic.substitute_lines(read_text(path, origin), table)
        if self.warn is not None:
            comments = {n for n, text in lines if text.lstrip(BLANKS).startswith((";", "#"))}
            for number, note in notes:
                if number not in comments:
                    self.warn(note, Origin(path, number), None)
        return parse_ini(lines, path, section or DEFAULT_SECTION)
