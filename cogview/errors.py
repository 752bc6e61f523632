"""The exception types that mean "the user gave bad input"."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for: the CLI prints it on one line and exits with 2."""


class ConfigError(UserError, ValueError):
    """A bad value of a config dataclass's field: the message names the field (a library
    caller's name for it); `field` and `detail` let a command line name its flag instead."""

    def __init__(self, message: str, field: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.field, self.detail = field, detail

    @classmethod
    def of(cls, field: str, detail: str) -> ConfigError:
        """The error of parameter `field`: "field detail" (the command line: "--field detail")."""
        return cls(f"{field} {detail}", field=field, detail=detail)
