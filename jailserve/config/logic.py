"""Config logic: if-*/else/endif and for/endfor blocks (UWSGI_SEMANTICS §1.9).

uWSGI keeps one global block and passes every following line to its predicate, which
re-adds it once (if) or once per item (for), substituting %(_).  Kept from uWSGI:
- the condition is re-evaluated for each line of the block (a warning says so when the
  answer changes inside a block);
- a for block expands per line, not per iteration: L1(a) L1(b) L2(a) L2(b).
Changed, because uWSGI misbehaves there:
- blocks nest (uWSGI dies with "recursive logic" when the outer test is true, and lets the
  inner endif close the outer block when it is false);
- an endif closes the innermost block opened in the same file; a stray endif and a block
  still open at the end of its file are errors naming the line.
A logic block inside a for block is refused: which item would its test see?
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError, Origin

IF_KEYWORDS = {
    "if-exists", "if-not-exists", "if-file", "if-not-file", "if-dir", "if-not-dir",
    "if-env", "if-not-env", "if-opt", "if-not-opt", "if-reload", "if-not-reload",
}
FOR_KEYWORDS = {"for", "for-glob", "for-times", "for-readline"}
END_KEYWORD = "endif"
ELSE_KEYWORD = "else"


@dataclass
class Block:
    keyword: str
    arg: str
    origin: Origin
    file_id: int
    test: Callable[[], tuple[bool, str]] | None = None   # if-blocks: () -> (true?, %(_) value)
    items: list[str] = field(default_factory=list)        # for-blocks
    negated: bool = False                                 # after else
    last: bool | None = None                              # last answer, to warn on a flip
    warned_order: bool = False
    lines: int = 0

    @property
    def is_for(self) -> bool:
        return self.keyword in FOR_KEYWORDS


def _path_test(kind: str, path: str) -> tuple[bool, str]:
    if kind == "exists":
        return os.path.lexists(path), path
    if kind == "file":
        return os.path.isfile(path), path
    return os.path.isdir(path), path


def _env_test(environ, arg: str) -> tuple[bool, str]:
    name, eq, want = arg.partition("=")
    value = environ.get(name)
    if value is None:
        return False, ""
    return (value == want if eq else True), value


def make_if_test(keyword: str, arg: str, environ, seen: Callable[[str], str | None],
                 is_reload: bool) -> Callable[[], tuple[bool, str]]:
    """The predicate of an if-* keyword, evaluated afresh for each line of its block."""
    negate = "-not-" in keyword
    base = keyword.replace("-not-", "-")

    def positive() -> tuple[bool, str]:
        if base in ("if-exists", "if-file", "if-dir"):
            return _path_test(base[3:], arg)
        if base == "if-env":
            return _env_test(environ, arg)
        if base == "if-opt":
            name, eq, want = arg.partition("=")
            value = seen(name)
            if value is None:
                return False, ""
            return (value == want if eq else True), value
        if base == "if-reload":
            return is_reload, ""
        raise AssertionError(keyword)

    def test() -> tuple[bool, str]:
        ok, item = positive()
        return (not ok if negate else ok), item

    return test


def for_items(keyword: str, arg: str, origin: Origin) -> list[str]:
    if keyword == "for":
        return arg.split()
    if keyword == "for-glob":
        return sorted(glob.glob(arg))
    if keyword == "for-times":
        word = arg.strip()
        if not word.isdigit():
            raise ConfigError(f"'{arg}' is not a count (allowed: a positive integer)", origin, keyword)
        return [str(i) for i in range(1, int(word) + 1)]
    try:
        with open(arg, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    except OSError as e:
        raise ConfigError(f"cannot read '{arg}': {e.strerror}", origin, keyword) from None


class BlockStack:
    """The open blocks; decides for each line how many times (and with which %(_)) it counts."""

    def __init__(self, warn: Callable[[str, Origin, str | None], None]):
        self.blocks: list[Block] = []
        self.warn = warn

    def open(self, block: Block) -> None:
        if any(b.is_for for b in self.blocks):
            raise ConfigError("a logic block inside a for block is not supported "
                              "(uWSGI does not nest blocks either)", block.origin, block.keyword)
        self.blocks.append(block)

    def close(self, origin: Origin, file_id: int) -> None:
        if not self.blocks or self.blocks[-1].file_id != file_id:
            raise ConfigError("endif without an open block in this file", origin, END_KEYWORD)
        self.blocks.pop()

    def flip_else(self, origin: Origin, file_id: int) -> None:
        if not self.blocks or self.blocks[-1].file_id != file_id or self.blocks[-1].is_for:
            raise ConfigError("else without an open if block in this file", origin, ELSE_KEYWORD)
        block = self.blocks[-1]
        if block.negated:
            raise ConfigError("a second else in the same block", origin, ELSE_KEYWORD)
        block.negated = True

    def open_in_file(self, file_id: int) -> Block | None:
        for block in self.blocks:
            if block.file_id == file_id:
                return block
        return None

    def active(self) -> bool:
        """Whether lines are taken at all now (every enclosing if is true), without side effects."""
        return all(self._answer(b, record=False)[0] for b in self.blocks if not b.is_for)

    def expand(self, value: str, origin: Origin) -> list[str]:
        """The values this line contributes: [] when a test is false, one per item in a for."""
        item: str | None = None
        for block in self.blocks:
            if block.is_for:
                continue
            ok, item = self._answer(block, record=True, origin=origin)
            if not ok:
                return []
        innermost = self.blocks[-1] if self.blocks else None
        if innermost is not None and innermost.is_for:
            innermost.lines += 1
            if innermost.lines == 2 and len(innermost.items) > 1 and not innermost.warned_order:
                innermost.warned_order = True
                self.warn("uWSGI expands a for block per line, not per item (L1(a) L1(b) L2(a) L2(b)); "
                          "jailserve keeps that order", innermost.origin, innermost.keyword)
            return [value.replace("%(_)", it) for it in innermost.items]
        if item is not None:
            value = value.replace("%(_)", item)
        return [value]

    def _answer(self, block: Block, record: bool, origin: Origin | None = None) -> tuple[bool, str]:
        ok, item = block.test()
        if block.negated:
            ok = not ok
        if record:
            if block.last is not None and block.last != ok:
                self.warn(f"the test of the block opened at {block.origin} changed its answer here; uWSGI "
                          "re-evaluates it for every line, and so does jailserve", origin, block.keyword)
            block.last = ok
        return ok, item
