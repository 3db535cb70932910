"""SafeGate's exception tree: every error a user can see subclasses SafeGateError."""

from __future__ import annotations


class SafeGateError(Exception):
    """Base of all SafeGate errors."""


class ConfigError(SafeGateError):
    """A configuration, policy or list file is invalid; says where, as `file:line: message`."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        super().__init__(self.location() + message)

    def location(self) -> str:
        if self.path is None:
            return ""
        if self.line is None:
            return f"{self.path}: "
        return f"{self.path}:{self.line}: "


class ConfigErrors(SafeGateError):
    """Several ConfigErrors found in one pass, so `safegate check` can list them all."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
