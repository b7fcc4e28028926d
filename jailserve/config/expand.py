"""The three textual passes over option values: $(VAR), @(file), %(name) (UWSGI_SEMANTICS §1.5-1.8).

They run once, in that order, over every value not applied yet (immediate options have run
with their text as it was).  Unresolvable $() and %() references stay as literal text, as
in uWSGI; a warning says so.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from ..errors import ConfigError, Origin

ENV_REF = re.compile(r"\$\(([^)]*)\)")
FILE_REF = re.compile(r"@\(([^)]*)\)")
PLACEHOLDER_REF = re.compile(r"%\(([^)]*)\)")


def expand_env(value: str, environ: Mapping[str, str], unresolved: list[str]) -> str:
    """$(VAR), $(VAR:-default) (unset or empty), $(VAR-default) (unset) — uWSGI master's forms."""

    def one(match: re.Match) -> str:
        body = match.group(1)
        name, default, mode = body, None, ""
        if ":-" in body:
            name, default = body.split(":-", 1)
            mode = ":-"
        elif "-" in body:
            name, default = body.split("-", 1)
            mode = "-"
        value = environ.get(name)
        if mode == ":-" and not value:
            return default
        if mode == "-" and value is None:
            return default
        if value is None:
            unresolved.append(match.group(0))
            return match.group(0)
        return value

    return ENV_REF.sub(one, value)


def expand_files(value: str, origin: Origin, option: str) -> str:
    """@(path): the file's content, one trailing newline (\\n or \\r) removed."""

    def one(match: re.Match) -> str:
        path = match.group(1)
        if "://" in path:
            raise ConfigError(f"@({path}): config schemes are not supported (allowed: a file path)", origin, option)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"@({path}): cannot read: {e.strerror}", origin, option) from None
        if text.endswith(("\n", "\r")):
            text = text[:-1]
        return text

    return FILE_REF.sub(one, value)


def _number(text: str) -> int | None:
    word = text.strip()
    if word.lstrip("-").isdigit():
        return int(word)
    return None


def evaluate_placeholder(body: str, lookup: Callable[[str], str | None]) -> str | None:
    """%(name) or uWSGI's %(a + b) math: space-separated tokens, + - * / and postfix ++/--;
    operands are numbers or keys; without an operator the tokens are concatenated."""
    tokens = body.split()
    if len(tokens) <= 1 and not body.endswith(("++", "--")):
        return lookup(body)
    values: list[str] = []
    ops: list[str] = []
    for token in tokens:
        if token in "+-*/" and len(token) == 1:
            ops.append(token)
            continue
        suffix = 0
        if token.endswith("++") or token.endswith("--"):
            suffix = 1 if token.endswith("++") else -1
            token = token[:-2]
        resolved = lookup(token)
        text = resolved if resolved is not None else token
        if suffix:
            n = _number(text)
            if n is None:
                return None
            text = str(n + suffix)
        values.append(text)
    if not ops:
        return "".join(values)
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers) or len(ops) != len(values) - 1:
        return None
    result = numbers[0]
    for op, n in zip(ops, numbers[1:]):
        if op == "+":
            result += n
        elif op == "-":
            result -= n
        elif op == "*":
            result *= n
        elif n == 0:
            return None
        else:
            result //= n
    return str(result)


def expand_placeholders(value: str, lookup: Callable[[str], str | None], unresolved: list[str]) -> str:
    def one(match: re.Match) -> str:
        if match.group(1) == "_":
            return match.group(0)   # %(_) outside a logic block: uWSGI leaves it
        result = evaluate_placeholder(match.group(1), lookup)
        if result is None:
            unresolved.append(match.group(0))
            return match.group(0)
        return result

    return PLACEHOLDER_REF.sub(one, value)


def referenced_names(value: str) -> set[str]:
    """Every key a value refers to with %(...), math operands included."""
    names = set()
    for body in PLACEHOLDER_REF.findall(value):
        for token in body.split():
            token = token.rstrip("+-") if token.endswith(("++", "--")) else token
            if token and token not in "+-*/":
                names.add(token)
    return names
