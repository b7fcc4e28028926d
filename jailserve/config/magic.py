"""Magic %x variables, substituted over a config file's raw text before it is parsed.

As uWSGI's config_magic_table_fill and magic_sub (UWSGI_SEMANTICS §1.6): per-file values
(%o %p %s %d %e %n %c %0-%9 %x %i %j %b), upper-case twins frozen for the first file, static
values (%v %h %t %T %V %k %u %U %g %G %[), `%%` -> `%`, `%(` kept so placeholders survive, and
every other `%<char>` replaced by the empty string (uWSGI pre-fills its table with "").
"""
from __future__ import annotations

import grp
import os
import pwd
import socket
import sys
import time
from dataclasses import dataclass, field

from .. import __version__

PER_FILE = "opsdenc0123456789xijb"
FROZEN = "OPSDENCXIJ"   # upper-case: the same values for the first config file loaded


def djb33x(data: bytes) -> int:
    """uWSGI's djb33x_hash: hash*33 ^ c over C `char`, which is signed on the platforms we run on."""
    h = 5381
    for byte in data:
        c = byte - 256 if byte >= 128 else byte
        h = (((h << 5) + h) ^ (c & 0xFFFFFFFF)) & 0xFFFFFFFF
    return h


def _hash_hex(path: str) -> str:
    # uwsgi_str_to_hex over the uint32 as it sits in memory (little-endian), upper-case.
    return djb33x(path.encode()).to_bytes(4, sys.byteorder).hex().upper()


def split_section(name: str) -> tuple[str, str | None]:
    """`file.ini:section` -> (file, section); the last ':' counts, as in uWSGI."""
    file, colon, section = name.rpartition(":")
    if not colon:
        return name, None
    return file, section


def file_table(given: str, cwd: str) -> dict[str, str]:
    """The per-file magic values for a config file named `given` (possibly with :section)."""
    table = {"o": given}
    path, section = split_section(given)
    if path == "-" or "://" in path:
        return table
    if os.path.islink(path):
        full = path if path.startswith("/") else os.path.join(cwd, path)
    else:
        full = os.path.realpath(os.path.join(cwd, path))
    base = full.rsplit("/", 1)[1]
    directory = full[: len(full) - len(base)]          # keeps its trailing slash
    stem, dot, ext = base.rpartition(".")
    table.update({
        "b": sys.executable,
        "p": full,
        "j": _hash_hex(full),
        "s": base,
        "d": directory,
        "e": ext if dot else "",
        "n": stem if dot else base,
        "c": directory.rstrip("/").rsplit("/", 1)[-1] if directory.rstrip("/") else "",
        "x": section or "",
    })
    try:
        table["i"] = str(os.lstat(full).st_ino)
    except OSError:
        pass
    parts = [p for p in directory.split("/") if p]
    for i in range(10):
        table[str(i)] = parts[i] if i < len(parts) else ""
    return table


def static_table() -> dict[str, str]:
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    now = time.time()
    return {
        "v": os.getcwd(), "h": socket.gethostname(), "t": str(int(now)), "T": str(int(now * 1e6)),
        "V": __version__, "k": str(os.cpu_count() or 1), "u": str(uid), "U": user,
        "g": str(gid), "G": group, "[": "\033",
    }


@dataclass
class MagicContext:
    """Magic values across the files of one configuration (the upper-case ones are frozen)."""

    cwd: str = field(default_factory=os.getcwd)
    static: dict[str, str] = field(default_factory=static_table)
    first: dict[str, str] | None = None

    def table_for(self, given: str) -> dict[str, str]:
        table = dict(self.static)
        per_file = file_table(given, self.cwd)
        table.update(per_file)
        if self.first is None:
            self.first = {k.upper(): v for k, v in per_file.items() if k.upper() in FROZEN}
        table.update(self.first)
        return table

    def substitute_lines(self, text: str, table: dict[str, str]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """magic_sub over a whole file's text, as uWSGI does it, keeping where each line began.

        Returns (lines, notes): lines as (1-based line number in the file, text after
        substitution), notes as (line number, warning).  Because uWSGI substitutes over the
        raw bytes, a '%' at the end of a line swallows the newline and joins the next line to
        it; jailserve does the same and says so.
        """
        lines: list[tuple[int, str]] = []
        notes: list[tuple[int, str]] = []
        out: list[str] = []
        line_no, start_no = 1, 1
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if ch == "\n":
                lines.append((start_no, "".join(out)))
                out = []
                line_no += 1
                start_no = line_no
                i += 1
                continue
            if ch != "%" or i + 1 >= n:
                out.append(ch)
                i += 1
                continue
            nxt = text[i + 1]
            if nxt == "%":
                out.append("%")
            elif nxt == "(":
                out.append("%(")
            elif nxt in table:
                out.append(table[nxt])
            elif nxt == "\n":
                line_no += 1
                notes.append((start_no, "a '%' at the end of the line swallows the newline and joins the next "
                                        "line to this one, as in uWSGI"))
            else:
                # uWSGI's table holds "" for every other byte: `50%x` without a section is
                # `50`, `%Z` vanishes.
                notes.append((start_no, f"magic variable %{nxt} is unknown; replaced by the empty string, as uWSGI does"))
            i += 2
        lines.append((start_no, "".join(out)))
        return lines, notes
