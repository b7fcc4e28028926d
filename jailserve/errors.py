"""The one error type for bad configuration, and where a value came from."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an option's value came from: a file and line, the command line, or the environment."""

    source: str          # a file path, "command line", "environment" or "default"
    line: int = 0        # 1-based line in `source` when it is a file, 0 otherwise

    def __str__(self) -> str:
        if self.line:
            return f"{self.source}:{self.line}"
        return self.source

    @property
    def is_file(self) -> bool:
        return self.line > 0


CLI = Origin("command line")
ENV = Origin("environment")
DEFAULT = Origin("default")


class ConfigError(Exception):
    """A configuration problem: FILE:LINE: option 'NAME': what is wrong (what is allowed).

    Raised anywhere between reading argv and the end of validation; cli.main() prints it on
    one line and exits 1 before anything has happened.
    """

    def __init__(self, message: str, origin: Origin | None = None, option: str | None = None):
        super().__init__(message)
        self.message = message
        self.origin = origin
        self.option = option

    def __str__(self) -> str:
        parts = []
        if self.origin is not None:
            parts.append(str(self.origin))
        if self.option is not None:
            parts.append(f"option '{self.option}'")
        parts.append(self.message)
        return ": ".join(parts)

    def located(self, origin: Origin, option: str | None = None) -> "ConfigError":
        """The same error with a location filled in where it had none."""
        return ConfigError(self.message, self.origin or origin, self.option or option)
