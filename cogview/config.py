"""Config dataclass fields that carry their own documentation.

A field made with `option(default, help, ...)` holds its default and its help text in one
place; the command line builds its flag from them (`cogview.cli.flags.add_flags`). Metadata
keys besides `help`: `flag` (a flag name other than the field's), `metavar`, `choices`, `type`
(the value parser when the annotation is not a plain int, float, str or bool).
"""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def option(default: Any = MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field documented for `--help`; without a default the flag is required."""
    if default is MISSING:
        return field(metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})
